"""Engine dirs by name, and where the runtime keeps what it derives from one.

``svdedit:shapes`` is the embedded model's engine dir (models/shapes exported in fp32), shipped inside the
package by `make dist` (runtime/svdedit/runtime/packaged/shapes/), so that an installed svdedit runs without torch and
without a clone. A built-in name has a colon, which a folder given on the command line never needs, so it
cannot be mistaken for one. Installed engine dirs are read-only: what the runtime derives from an engine dir
(onnxruntime's TensorRT engine cache, `svdedit build`'s plans: plans.py) goes to a per-user cache folder keyed
by the engine's identity and graphs, ``engine_cache_dir`` ($XDG_CACHE_HOME/svdedit/engines/<identity>-<graphs>/,
~/.cache by default), for every engine dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from svdedit.runtime.engines.contract import MANIFEST_FILE
from svdedit.runtime.errors import EngineDirError

BUILTIN_PREFIX = "svdedit:"
#: the engine dirs a wheel carries: name -> what it is
PACKAGED = {"shapes": "the embedded model (models/shapes: 64x64 coloured shapes, trained by this project), fp32"}


def packaged_root() -> Path:
    """The folder of the engine dirs shipped with the package (runtime/svdedit/runtime/packaged/)."""
    return Path(__file__).resolve().parent.parent / "packaged"


def resolve_engine(engine: str | os.PathLike) -> Path:
    """The folder of an engine dir given by path or by built-in name (svdedit:shapes)."""
    text = os.fspath(engine)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(engine)
    name = text[len(BUILTIN_PREFIX):]
    if name not in PACKAGED:
        raise EngineDirError(f"{text!r} is not a built-in engine; the built-in ones are "
                             f"{', '.join(BUILTIN_PREFIX + n for n in PACKAGED)}.")
    path = packaged_root() / name
    if not (path / MANIFEST_FILE).is_file():
        raise EngineDirError(f"this installation of svdedit carries no engine dir for {text} (in a checkout, `make "
                             f"dist` exports it; or export the model yourself: svdedit export models/shapes -o DIR).")
    return path


def user_cache_root() -> Path:
    """$XDG_CACHE_HOME/svdedit, or ~/.cache/svdedit."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "svdedit"


def engine_cache_dir(identity: str, graphs_key: str) -> Path:
    """The per-user folder for what the runtime derives from one engine dir (created on first use by its user).
    Keyed by the model's identity and its graphs (Manifest.graphs_key): two exports of one model (fp16, int8, a
    re-export) do not share it, copies of one engine dir do."""
    return user_cache_root() / "engines" / f"{identity[:16]}-{graphs_key[:8]}"
