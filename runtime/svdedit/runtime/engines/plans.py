"""Where the TensorRT plans of an engine dir live: the user's cache, beside nothing the engine dir holds.

`svdedit build` (export/svdedit/export/build.py) writes, for one engine dir and one kind of GPU:

    <engine cache>/tensorrt/builds.json              which builds exist: {device key: TensorrtBuild}
    <engine cache>/tensorrt/timing-<device key>.cache  TensorRT's timing cache of one kind of GPU
    <engine cache>/tensorrt/<device key>/<network>.plan

<engine cache> is ``names.engine_cache_dir`` ($XDG_CACHE_HOME/svdedit/engines/<identity>-<graphs>/): keyed by the
model and by the ONNX graphs the plans were built from, so a re-export, an fp16 or an int8 copy never picks
up plans of other graphs. The engine dir is only read, so installed ones (svdedit:shapes, a read-only
volume) get plans too. builds.json is checked like a manifest (typed fields, plan files plain names inside
its folder, the engine it belongs to) and each plan's sha256 when it is loaded; a damaged record is a
TensorrtError that says to build again, never a traceback.

svdedit 0.1 recorded builds in the manifest and wrote the plans into ENGINE_DIR/tensorrt/; those are still
found and run (``Plans.where`` says which), and the cache's record wins for the same device.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from svdedit.runtime.engines.contract import TENSORRT_DIR
from svdedit.runtime.engines.manifest import (Manifest, ManifestFieldError, TensorrtBuild, outside_problem, read_json,
                                              typed_fields)
from svdedit.runtime.engines.names import engine_cache_dir
from svdedit.runtime.errors import EngineDirError, SvdeditError, TensorrtError
from svdedit.runtime.files import sha256_file, write_json

log = logging.getLogger("svdedit.runtime")

BUILDS_FILE = "builds.json"
BUILDS_FORMAT = 1
IN_CACHE = "the user cache"
IN_ENGINE_DIR = "the engine dir (svdedit 0.1)"


def device_key(device: dict) -> str:
    """The manifest key of plans built on one kind of GPU with one TensorRT version (`current_device()`'s dict)."""
    safe = "".join(c if c.isalnum() else "-" for c in device["gpu"]).strip("-").lower()
    return f"{safe}_sm{device['compute_capability'].replace('.', '')}_trt{device['tensorrt']}"


@dataclass(frozen=True)
class Plans:
    """One build's plans and where its files are: ``root / build.networks[name].file``."""

    key: str                 # the device key (tensorrt.device_key)
    build: TensorrtBuild
    root: Path
    where: str               # IN_CACHE or IN_ENGINE_DIR

    def path(self, network: str) -> Path:
        return self.root / self.build.networks[network].file

    def intact(self, network: str) -> bool:
        """Whether the network's plan is there with the sha256 recorded when it was built."""
        path = self.path(network)
        return path.is_file() and sha256_file(path) == self.build.networks[network].sha256


def plans_dir(manifest: Manifest) -> Path:
    """The folder of this engine's TensorRT plans in the user cache (not created here): the engine dir's, whatever
    LoRA a run swaps in (a swap refits the plans in memory: tensorrt.refit_swapped)."""
    base = manifest.without_swapped()
    return engine_cache_dir(base.identity(), base.graphs_key()) / TENSORRT_DIR


def cached_builds(manifest: Manifest) -> dict[str, TensorrtBuild]:
    """The builds recorded in the user cache for this engine ({} when there is none); TensorrtError if the record
    is damaged or belongs to other graphs."""
    return _read_record(manifest)[1]


def _read_record(manifest: Manifest) -> tuple[dict, dict[str, TensorrtBuild]]:
    """builds.json's builds as JSON and as checked TensorrtBuilds (({}, {}) when there is no record)."""
    manifest = manifest.without_swapped()  # the plans are the engine dir's graphs'
    root = plans_dir(manifest)
    path = root / BUILDS_FILE
    if not path.exists():
        return {}, {}
    again = f"Delete {root} and run `svdedit build` again."
    try:
        data = read_json(path, "a TensorRT build record")
    except EngineDirError as exc:
        raise TensorrtError(f"{exc} {again}") from None
    if not isinstance(data, dict) or data.get("format_version") != BUILDS_FORMAT:
        raise TensorrtError(f"{path} is not a build record of this svdedit (format version {BUILDS_FORMAT}). {again}")
    if (data.get("identity"), data.get("graphs")) != (manifest.identity(), manifest.graphs_key()):
        raise TensorrtError(f"{path} records plans of other ONNX graphs than this engine dir's. {again}")
    builds, problems = {}, []
    raw = data.get("builds")
    if not isinstance(raw, dict):
        raise TensorrtError(f"{path} is corrupt: builds should be an object. {again}")
    for key, value in raw.items():
        try:
            build = typed_fields(TensorrtBuild, value, f"builds.{key}")
        except ManifestFieldError as exc:
            problems.append(str(exc))
            continue
        if device_key({"gpu": build.gpu, "compute_capability": build.compute_capability,
                       "tensorrt": build.tensorrt}) != key:
            problems.append(f"builds.{key} was made on {build.gpu} with TensorRT {build.tensorrt}, not under its key")
        for name, plan in build.networks.items():
            problem = outside_problem(root, plan.file)
            if problem:
                problems.append(f"builds.{key}.networks.{name}.file {plan.file!r} {problem}")
        builds[key] = build
    if problems:
        raise TensorrtError(f"{path} is corrupt: {'; '.join(problems)}. {again}")
    return raw, builds


def all_plans(manifest: Manifest, engine_dir: Path) -> dict[str, Plans]:
    """Every build this engine has, by device key: the user cache's, and the engine dir's own (svdedit 0.1)."""
    out = {k: Plans(k, b, Path(engine_dir), IN_ENGINE_DIR) for k, b in manifest.builds.items()}
    root = plans_dir(manifest)
    out.update({k: Plans(k, b, root, IN_CACHE) for k, b in cached_builds(manifest).items()})
    return out


def record_build(manifest: Manifest, key: str, build: dict) -> Plans:
    """Add (or replace) one build in the cache's record, atomically and under a lock against a concurrent build
    on another GPU sharing the cache; the record as written is read back through the checks."""
    root = writable_plans_dir(manifest)
    with _locked(root):
        try:  # a sound record: the other GPUs' builds are kept
            builds = {k: v for k, v in _read_record(manifest)[0].items() if k != key}
        except TensorrtError as exc:
            log.warning("replacing a damaged TensorRT build record: %s", exc)
            builds = {}
        write_json(root / BUILDS_FILE, {"format_version": BUILDS_FORMAT, "identity": manifest.identity(),
                                        "graphs": manifest.graphs_key(), "builds": {**builds, key: build}})
    return Plans(key, cached_builds(manifest)[key], root, IN_CACHE)


def writable_plans_dir(manifest: Manifest) -> Path:
    """plans_dir, created; SvdeditError naming the folder and the fix when it cannot be."""
    root = plans_dir(manifest)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise SvdeditError(f"cannot write TensorRT plans into {root} ({exc.strerror or exc}). Point XDG_CACHE_HOME "
                           f"at a writable folder (the plans go to $XDG_CACHE_HOME/svdedit/).") from None
    return root


@contextlib.contextmanager
def _locked(root: Path):
    """An exclusive lock on root/.lock (POSIX flock; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds of one engine on two GPUs at once could lose one record
        yield
        return
    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
