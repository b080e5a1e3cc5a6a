"""The OpenVINO runner: one network's ONNX graph compiled by OpenVINO for this CPU (extra svdedit[openvino]).

    with OpenvinoRunner(engine_dir, "unet", manifest, precision="bf16") as unet:   # same interface as OrtRunner
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Why a runner of its own: onnxruntime's CPU provider computes in fp32 or int8 and has no bf16 compute, so the
bf16 units of today's server CPUs (AVX-512-BF16, AMX-BF16) stay idle under it; OpenVINO's CPU plugin computes
in bf16 where they exist. It reads the engine dir's ONNX files as they are (the fused com.microsoft attention,
the step-cache split, the int8 QDQ graphs of `svdedit quantize`), so no export changes. The `openvino`
runtime is used directly rather than onnxruntime's OpenVINO plugin provider (onnxruntime-ep-openvino): the
whole graph is OpenVINO's (a plugin provider gets the part OpenVINO claims, onnxruntime runs the rest), the
precision is one compile option, and its compiled-model cache can be kept in our per-user cache, stored
atomically. Both run at the same speed within this machine's noise: benchmarks/results/openvino_unet_sd15_cpu.md.

Precision is explicit (`precision`: "fp32" or "bf16", OpenVINO's INFERENCE_PRECISION_HINT f32 / bf16); bf16
on a CPU without bf16 units is refused (OpenVINO would quietly compute in fp32). The provider name a runner
reports carries it ("OpenVINO-CPU-bf16"), so the edit cache's key (Pipeline.numerics_key) does too.

Compiled models are cached per user beside the TensorRT plans (plans.py), in OpenVINO's own cache format
(its CACHE_DIR, one folder per network, precision and graph):
    <engine cache>/openvino/<OpenVINO version>_<CPU key>/<network>-<precision>-<graph sha256[:16]>/<OpenVINO's>.blob
One folder per precision is needed: OpenVINO's blob name leaves the precision hint out (a bf16 compile mapped the f32
blob of the same graph in one CACHE_DIR, OpenVINO 2026.4). It does hold the graph's path, so the runner gives OpenVINO
the graph in its resolved folder (_compile).
The first compile writes into a temporary sibling folder that is then renamed into place; later opens map the
blob (SD 1.5-shape UNet, bf16: 1.7 s and 4.0 GB of RSS, against 6.6 s and 7.35 GB for importing an exported copy,
the first version of this runner). A blob OpenVINO cannot read is compiled again and replaced by OpenVINO itself,
said on stderr; an unwritable cache is a warning, and every open compiles.
`import openvino` happens on activation only: its absence is a SvdeditError that says how to install it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import secrets
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from svdedit.runtime.engines.base import Runner
from svdedit.runtime.engines.manifest import Manifest
from svdedit.runtime.engines.names import engine_cache_dir
from svdedit.runtime.errors import EngineDirError, SvdeditError

log = logging.getLogger("svdedit.runtime")

PROVIDER = "openvino"
INSTALL_HINT = "OpenVINO is not installed: pip install 'svdedit[openvino]' (the openvino wheel; CPU)."
#: our precision names -> OpenVINO's inference precision hint
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: the CPU flags that mean bf16 compute units (Linux /proc/cpuinfo names)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: the flags `svdedit env` and `svdedit check` report: what decides OpenVINO's and onnxruntime's CPU kernels
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
CACHE_DIR = "openvino"


def import_openvino():
    """The openvino module, or a SvdeditError that says how to install it."""
    try:
        import openvino  # noqa: PLC0415  (import guard: OpenVINO is optional)
    except ImportError:
        raise SvdeditError(INSTALL_HINT) from None
    return openvino


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where that file does not exist), read once."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux names them (/proc/cpuinfo); empty where that file does not exist."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown CPU"


def cpu_report() -> dict:
    """The CPU's model, the reported flags it has, and whether it has bf16 units (for env and check)."""
    flags = cpu_flags()
    return {"model": cpu_model(), "flags": [f for f in REPORTED_FLAGS if f in flags], "bf16_units": has_bf16()}


def has_bf16() -> bool:
    return any(f in cpu_flags() for f in BF16_FLAGS)


def default_precision() -> str:
    """bf16 where the CPU has bf16 units, else fp32."""
    return "bf16" if has_bf16() else "fp32"


def check_precision(precision: str | None) -> str:
    """The precision an OpenVINO run uses: `precision`, or the default; SvdeditError if this CPU cannot compute it."""
    if precision is None:
        return default_precision()
    if precision not in PRECISIONS:
        raise SvdeditError(f"OpenVINO on the CPU computes in {' or '.join(PRECISIONS)}, not {precision!r}: use "
                           f"the precision fp32 (exact) or bf16 (faster on CPUs with bf16 units).")
    if precision == "bf16" and not has_bf16():
        raise SvdeditError(f"this CPU ({cpu_model()}) has no bf16 units ({' or '.join(BF16_FLAGS)}), so OpenVINO "
                           f"would compute in fp32 anyway: use the precision fp32.")
    return precision


def cpu_key() -> str:
    """What a compiled blob depends on besides OpenVINO's version: the CPU model and its flags."""
    flags = " ".join(sorted(cpu_flags()))
    name = "".join(c if c.isalnum() else "-" for c in cpu_model()).strip("-").lower()[:40]
    return f"{name}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}"


def cache_folder(manifest: Manifest, network: str, precision: str, version: str) -> Path:
    """The folder of one network's compiled model in the user cache (OpenVINO's CACHE_DIR for it; not created here)."""
    entry = manifest.networks[network]
    safe_version = "".join(c if c.isalnum() or c in ".-" else "-" for c in version.split("-")[0])
    return (engine_cache_dir(manifest.identity(), manifest.graphs_key()) / CACHE_DIR / f"{safe_version}_{cpu_key()}"
            / f"{network}-{precision}-{entry.sha256[:16]}")


def _blobs(folder: Path) -> dict[str, tuple]:
    """{blob name: (inode, mtime)} of a cache folder: what tells a blob OpenVINO used from one it wrote again."""
    return {b.name: (b.stat().st_ino, b.stat().st_mtime_ns) for b in folder.glob("*.blob")} if folder.is_dir() else {}


class OpenvinoRunner(Runner):
    """One network of an engine dir, compiled by OpenVINO for the CPU. `compiled` and `request` while active;
    `opened_from` says whether the last activation compiled the graph or imported the cached blob, and
    `open_seconds` how long it took."""

    def __init__(self, engine_dir: str | Path, network: str, manifest: Manifest, precision: str | None = None,
                 graph: Path | None = None):
        """`graph`: a graph to compile in place of the engine dir's (a LoRA swapped in at run time:
        engines/lora.swapped_graphs, whose merged weights it reads as external data; `manifest` is then the one with
        the adapters, Manifest.with_adapters, so that the compiled model is cached under that identity)."""
        super().__init__(engine_dir, network, manifest)
        self.graph = graph
        self.precision = check_precision(precision)
        self.compiled = self.request = None
        self.opened_from: str | None = None
        self.open_seconds: float | None = None

    def _activate(self) -> None:
        ov = import_openvino()
        t0 = time.perf_counter()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.precision]}
        folder = cache_folder(self.manifest, self.network, self.precision, ov.__version__)
        before = _blobs(folder)
        if before:  # OpenVINO maps the cached blob (or, if it cannot read it, compiles and writes it again)
            self.compiled = self._compile(ov.Core(), {**config, "CACHE_DIR": str(folder)})
            after = _blobs(folder)
            self.opened_from = "cache" if after == before else "graph"
            if any(after.get(name) != seen for name, seen in before.items()):
                log.warning("%s: the cached OpenVINO model in %s could not be used; OpenVINO compiled the graph again "
                            "and replaced it.", self.network, folder)
            elif self.opened_from == "graph":  # a blob of its own beside the others: see _compile
                log.warning("%s: the OpenVINO model cached in %s was compiled from this graph at another path (a moved "
                            "or copied engine dir); OpenVINO compiled it again for this path and keeps both.",
                            self.network, folder)
        else:
            self.compiled = self._compile_into(ov.Core(), config, folder)
            self.opened_from = "graph"
        try:
            self.check_graph(self.engine_dir / self.entry.file, *(
                [(p.get_any_name(), np.dtype(p.get_element_type().to_dtype()).name, p.get_partial_shape().rank.get_length())
                 for p in ports] for ports in (self.compiled.inputs, self.compiled.outputs)))
        except EngineDirError:
            self.compiled = None
            raise
        self.request = self.compiled.create_infer_request()
        self.open_seconds = time.perf_counter() - t0
        self.provider = f"OpenVINO-CPU-{self.precision}"
        log.info("%s: OpenVINO %s on the CPU, %s, from the %s in %.2f s", self.network, ov.__version__.split("-")[0],
                 self.precision, self.opened_from, self.open_seconds)

    def _compile_into(self, core, config: dict, folder: Path):
        """Compile with OpenVINO's cache in a temporary sibling of `folder`, then rename it to `folder`: a reader never
        sees half a blob. A cache that cannot be written is a warning (every open compiles)."""
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            log.warning("%s: cannot write OpenVINO's compiled model to %s (%s); every open will compile again. "
                        "Point XDG_CACHE_HOME at a writable folder.", self.network, folder.parent, exc)
            return self._compile(core, config)
        try:
            compiled = self._compile(core, {**config, "CACHE_DIR": str(tmp)})
            try:
                os.replace(tmp, folder)
            except OSError:  # another process stored it first (or the cache went away): theirs stands
                pass
            return compiled
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _compile(self, core, config: dict):
        """OpenVINO's compile of the graph file. OpenVINO names its cached blob after the path it is given (and
        checks the file's time and size on reading it), so the folder's path is resolved first: an engine dir reached
        through a symlink or a relative path maps the blob its real path wrote, instead of compiling again beside it.
        The file itself is not resolved: a swapped graph is a link to the engine dir's graph whose merged weights lie
        beside the link (lora.swapped_graphs), where OpenVINO looks for them."""
        given = Path(self.graph or self.engine_dir / self.entry.file)
        path = os.path.join(os.path.realpath(given.parent), given.name)
        try:
            return core.compile_model(path, "CPU", config)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable and uncompilable graphs alike
            lines = [ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
            raise EngineDirError(
                f"OpenVINO cannot compile {path} ({(lines[-1] if lines else str(exc))[:300]}). Run it on "
                f"the provider cpu (onnxruntime), or re-create the engine dir with `svdedit export ... --force`."
            ) from None

    def _infer(self, feeds: dict) -> dict:
        try:
            result = self.request.infer(feeds)
        except RuntimeError as exc:
            raise EngineDirError(f"{self.network} ({self.engine_dir / self.entry.file}) failed under OpenVINO on inputs "
                                 f"of shapes { {n: tuple(a.shape) for n, a in feeds.items()} }: "
                                 f"{str(exc).strip().splitlines()[-1][:300]}") from None
        return {name: result[name] for name in self.output_names}

    def _deactivate(self) -> None:
        self.compiled = self.request = None
