"""Runners for the networks of an engine dir, with an explicit lifecycle (as Polygraphy's runners).

    with Engine(engine_dir, "unet") as unet:      # creates the onnxruntime session once
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Every call is checked against the manifest: input names, dtypes, ranks and fixed sizes, and the
dynamic axes that must agree across inputs (``batch``). A mismatch raises EngineDirError naming
the input, what it got and what the manifest declares.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from svdedit.runtime.contract import DYNAMIC_AXES, NETWORKS, read_manifest
from svdedit.runtime.errors import EngineDirError, SvdeditError

log = logging.getLogger("svdedit.runtime")

#: preference order when the provider is "auto"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: str = "auto") -> list[str]:
    """onnxruntime providers to ask for: the best available, or the one requested, CPU as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in PROVIDER_ORDER if p in available]
    name = requested if requested.endswith("ExecutionProvider") else {
        "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider",
    }.get(requested.lower(), requested)
    if name not in available:
        raise SvdeditError(
            f"--provider {requested!r} is not available in this onnxruntime (available: {', '.join(available)}). "
            f"Use --provider auto, or install onnxruntime-gpu for CUDA/TensorRT."
        )
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


def provider_entry(name: str, engine_dir: Path, precision: str):
    """What onnxruntime is given for one provider: TensorRT's EP keeps its engine and timing caches in the
    engine dir (tensorrt/ort-cache/, created here), so that only the first session on a machine pays for the build."""
    if name != "TensorrtExecutionProvider":
        return name
    cache = engine_dir / "tensorrt" / "ort-cache"
    cache.mkdir(parents=True, exist_ok=True)
    return (name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                   "trt_fp16_enable": str(precision == "fp16")})


def open_engines(engine_dir: str | Path, manifest: dict, provider: str = "auto") -> dict:
    """One runner per network: TensorRT plans (runtime/tensorrt.py) when asked for, or when `auto` and
    `svdedit build` made plans for this GPU; otherwise onnxruntime sessions."""
    from svdedit.runtime import tensorrt

    if provider == "tensorrt" or (provider == "auto" and tensorrt.plans_for_this_device(manifest)):
        shared = tensorrt.SharedActivations()  # the networks run one after another: one activation buffer
        return {name: tensorrt.TensorrtEngine(Path(engine_dir), name, manifest, shared) for name in manifest["networks"]}
    return {name: Engine(engine_dir, name, provider, manifest) for name in manifest["networks"]}


def session_options():
    """onnxruntime's session options for every network.

    No CPU memory arena: each session's arena keeps its largest activations for good, and four sessions
    add up (SD 1.5 shape, fused attention, the edit's calls: peak RSS 9.87 GiB with an arena per session,
    7.43 with one shared arena, 5.47 without, and no slower: UNet 2.40 s / 4.76 s at batch 1 / 2 against
    2.71 / 5.82 with arenas). Measured by benchmarks/session_memory.py, results in
    benchmarks/results/session_memory_sd15_cpu.md. Graph optimisation stays at onnxruntime's default
    (all), threads at its default (one per physical core).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    return opts


class Engine:
    """One network of an engine dir, run by onnxruntime."""

    def __init__(self, engine_dir: str | Path, network: str, provider: str = "auto", manifest: dict | None = None):
        if network not in NETWORKS:
            raise SvdeditError(f"unknown network {network!r}; an engine dir has {', '.join(NETWORKS)}.")
        self.engine_dir = Path(engine_dir)
        self.network = network
        self.manifest = manifest if manifest is not None else read_manifest(engine_dir)
        self.entry = self.manifest["networks"][network]
        self._declared = [(d["name"], np.dtype(d["dtype"]), d["shape"]) for d in self.entry["inputs"]]
        self._output_names = [o["name"] for o in self.entry["outputs"]]
        self.requested_provider = provider
        self.session = None

    def __enter__(self) -> "Engine":
        import onnxruntime as ort

        wanted = choose_providers(self.requested_provider)
        opts = session_options()
        path = self.engine_dir / self.entry["file"]
        try:
            self.session = ort.InferenceSession(
                str(path), opts, providers=[provider_entry(p, self.engine_dir, self.entry["precision"]) for p in wanted])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EngineDirError(
                f"onnxruntime cannot load {path} ({str(exc).splitlines()[0][:300]}). The graph is damaged or was "
                f"written by an incompatible exporter; re-create the engine dir with `svdedit export ... --force`."
            ) from None
        self.provider = self.session.get_providers()[0]
        log.info("%s: onnxruntime session on %s", self.network, self.provider)
        if self.provider != wanted[0]:
            # onnxruntime-gpu lists providers whose CUDA libraries it cannot load, then silently uses the CPU.
            print(f"svdedit: {self.network}: asked for {wanted[0]} but onnxruntime gave {self.provider} "
                  f"(its libraries could not be loaded); running on {self.provider}.", file=sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        self.session = None

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        if len(feeds) != len(self._declared) or any(name not in feeds for name, _, _ in self._declared):
            raise EngineDirError(f"{self.network}: inputs {sorted(feeds)} given, the manifest declares "
                                 f"{sorted(name for name, _, _ in self._declared)}.")
        seen: dict[str, int] = {}
        for name, dtype, shape in self._declared:
            a = feeds[name]
            if a.dtype != dtype:
                raise EngineDirError(f"{self.network}: input {name!r} has dtype {a.dtype}, the manifest declares {dtype}.")
            if a.ndim != len(shape):
                raise EngineDirError(f"{self.network}: input {name!r} has shape {a.shape}, the manifest declares {shape}.")
            for size, want in zip(a.shape, shape):
                if want in DYNAMIC_AXES:
                    if seen.setdefault(want, size) != size:
                        raise EngineDirError(
                            f"{self.network}: input {name!r} has {want} = {size} but another input has {seen[want]}."
                        )
                elif size != want:
                    raise EngineDirError(f"{self.network}: input {name!r} has shape {a.shape}, the manifest declares {shape}.")

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("Engine used outside its `with` block")
        self.check_feeds(feeds)
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds)))


def smoke_test(engine_dir: str | Path, provider: str = "auto") -> list[dict]:
    """Verify an engine dir and run every network once at batch 1 and the default size."""
    import time

    manifest = read_manifest(engine_dir, verify_hashes=True)
    side = manifest["image_size"]["default"]
    latent_side = side // manifest["latent"]["vae_scale_factor"]
    sizes = {"batch": 1, "height": side, "width": side, "latent_height": latent_side, "latent_width": latent_side}
    rng = np.random.default_rng(0)
    report = []
    for name in NETWORKS:
        with Engine(engine_dir, name, provider, manifest) as engine:
            feeds = {}
            for d in engine.entry["inputs"]:
                shape = [sizes[s] if isinstance(s, str) else s for s in d["shape"]]
                feeds[d["name"]] = (np.zeros(shape, np.int64) + manifest["text"]["bos_id"] if d["dtype"] == "int64"
                                    else rng.standard_normal(shape).astype(d["dtype"]))
            t0 = time.perf_counter()
            out = engine(**feeds)
            ms = (time.perf_counter() - t0) * 1e3
            for d in engine.entry["outputs"]:
                a = out[d["name"]]
                want = [sizes[s] if isinstance(s, str) else s for s in d["shape"]]
                if list(a.shape) != want or not np.all(np.isfinite(a)):
                    raise EngineDirError(f"{name}: output {d['name']} has shape {list(a.shape)} (want {want}) or non-finite values.")
            report.append({"network": name, "provider": engine.provider, "ms": round(ms, 2),
                           "precision": engine.entry["precision"],
                           "parity_max_abs": engine.entry.get("parity_fp16", engine.entry["parity"]).get("max_abs"),
                           "ok": True})
    return report
