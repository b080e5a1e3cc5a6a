"""The runner base class: one network of an engine dir, with an explicit lifecycle (as Polygraphy's runners).

    runner = OrtRunner(engine_dir, "unet", manifest)     # or TensorrtRunner: the same interface
    with runner:                                         # activate(): load and allocate once
        eps = runner(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]
                                                         # deactivate() on leaving: freed

The base class owns the lifecycle and the contract: every call is checked against the manifest
(input names, dtypes, ranks and fixed sizes, and the dynamic axes that must agree across inputs, such
as ``batch``) before a subclass sees it, and using a runner that is not active, or activating it twice,
raises RunnerError. A subclass implements ``_activate``, ``_infer`` and ``_deactivate``.

Activation runs with stdout sent to stderr (``stdout_to_stderr``): the commands print one JSON line on stdout,
and the libraries print on it while loading (onnxruntime's "EP Error ... Falling back" banner when the TensorRT
provider's libraries do not load, under the provider auto).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from svdedit.runtime.engines.contract import DYNAMIC_AXES, NETWORK_NAMES
from svdedit.runtime.engines.manifest import Manifest
from svdedit.runtime.errors import EngineDirError, RunnerError, SvdeditError


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout to stderr while the block runs: Python's prints and, where stdout and
    stderr are real files, the native libraries' writes to file descriptor 1."""
    try:
        fd_out, fd_err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced streams (pytest's capture, a service's logger)
        fd_out = fd_err = None
    sys.stdout.flush()
    saved = os.dup(fd_out) if fd_out is not None else None
    try:
        if saved is not None:
            os.dup2(fd_err, fd_out)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, fd_out)
            os.close(saved)


class Runner:
    #: what runs the network, for reports ("CPUExecutionProvider", "TensorRT", ...); set on activation
    provider: str | None = None

    def __init__(self, engine_dir: str | Path, network: str, manifest: Manifest):
        if network not in NETWORK_NAMES:
            raise SvdeditError(f"unknown network {network!r}; an engine dir has {', '.join(NETWORK_NAMES)}.")
        self.engine_dir = Path(engine_dir)
        self.network = network
        self.manifest = manifest
        self.entry = manifest.networks[network]
        self.output_names = [o.name for o in self.entry.outputs]
        self._declared = [(t.name, np.dtype(t.dtype), t.shape) for t in self.entry.inputs]
        self.is_active = False

    # ---- lifecycle ----
    def activate(self) -> "Runner":
        if self.is_active:
            raise RunnerError(f"{self.network}: the runner is already active; activate it once (one `with` block).")
        with stdout_to_stderr():
            self._activate()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Free what activate() took. Safe to call on a runner that is not active."""
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ---- inference ----
    def infer(self, feeds: dict) -> dict:
        """{input name: array} -> {output name: array}, after checking the feeds against the manifest."""
        if not self.is_active:
            raise RunnerError(f"{self.network}: the runner is not active; call it inside `with runner:` "
                              f"(or after runner.activate()).")
        self.check_feeds(feeds)
        return self._infer(feeds)

    def __call__(self, **feeds) -> dict:
        return self.infer(feeds)

    def check_feeds(self, feeds: dict) -> None:
        """Names, dtypes, ranks, fixed sizes, and dynamic axes that agree across inputs; EngineDirError if not."""
        if len(feeds) != len(self._declared) or any(name not in feeds for name, _, _ in self._declared):
            raise EngineDirError(f"{self.network}: inputs {sorted(feeds)} given, the manifest declares "
                                 f"{sorted(name for name, _, _ in self._declared)}.")
        seen: dict[str, int] = {}
        for name, dtype, shape in self._declared:
            a = feeds[name]
            if a.dtype != dtype:
                raise EngineDirError(f"{self.network}: input {name!r} has dtype {a.dtype}, the manifest declares {dtype}.")
            if a.ndim != len(shape):
                raise EngineDirError(f"{self.network}: input {name!r} has shape {a.shape}, the manifest declares {list(shape)}.")
            for size, want in zip(a.shape, shape):
                if want in DYNAMIC_AXES:
                    if seen.setdefault(want, size) != size:
                        raise EngineDirError(
                            f"{self.network}: input {name!r} has {want} = {size} but another input has {seen[want]}."
                        )
                elif size != want:
                    raise EngineDirError(f"{self.network}: input {name!r} has shape {a.shape}, the manifest declares {list(shape)}.")

    def check_graph(self, path: Path, inputs: list[tuple], outputs: list[tuple]) -> None:
        """The loaded graph's real inputs and outputs, as (name, NumPy dtype name, rank), against the manifest's, so
        that another network's graph under this name is refused on activation, naming the file, not at its first
        call. EngineDirError if they differ."""
        for role, got, declared in (("inputs", inputs, self.entry.inputs), ("outputs", outputs, self.entry.outputs)):
            want = [(t.name, t.dtype, len(t.shape)) for t in declared]
            if got != want:
                raise EngineDirError(f"{path} is not the {self.network} the manifest describes: its {role} are {got}, "
                                     f"the manifest says {want} (name, dtype, rank). Re-create the engine dir with "
                                     f"`svdedit export ... --force`.")

    # ---- what a subclass implements ----
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, feeds: dict) -> dict:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError
