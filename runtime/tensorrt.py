"""TensorRT plans: built from an engine dir's ONNX graphs (`svdedit build`), run by a native runner.

    build_plans(engine_dir, BuildOptions(precision="fp16", shapes=(512,), max_batch=4))
    with TensorrtEngine(engine_dir, "unet") as unet:          # same interface as engine.Engine
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Layout inside the engine dir (manifest.json records each build under "tensorrt", keyed by the GPU, its
compute capability and the TensorRT version; a model's identity, and so its attribute files, do not
depend on that key, see contract.engine_identity):

    tensorrt/timing.cache                         shared by every build on this machine
    tensorrt/<key>/{text_encoder,unet,vae_encoder,vae_decoder}.plan

Precision: the ONNX graphs carry it (`svdedit export --precision fp16`), and the plans are built strongly
typed from them, the only way TensorRT 11 builds; TensorRT 10 can also lower fp32 graphs with a builder
flag (see `typing`). Optimisation profiles come from the build options, checked against the manifest's
size range: the UNet
gets two (inversion: batch 1..N, optimised for N; guided sampling: batch 2..4N, optimised for 2N; the
Editor runs two trajectories per image, each guided, so 4N latents per call at most), the other
networks one (text encoder: prompts for N images, their targets and the empty prompt). `static` fixes
the image size (min = opt = max; dynamic sizes cost ~13% on TensorRT, anchors.md); the batch stays a
range, since the last batch of a run and the empty prompt's encoding are smaller. fp16 and bf16 apply to the text encoder and the UNet; the VAE stays fp32 under fp16
(SD's VAE overflows fp16) and follows bf16 (whose range is fp32's).

Everything that needs neither TensorRT nor a GPU (profiles, keys, the manifest record, refusals) is
plain Python and tested on CPU; `import tensorrt` and `import cupy` happen only when a plan is built or
run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svdedit.runtime.contract import DYNAMIC_AXES, NETWORKS, read_manifest
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.files import atomic_write_bytes, sha256_file

log = logging.getLogger("svdedit.runtime")

PLAN_DIR = "tensorrt"
TIMING_CACHE = "timing.cache"
PRECISIONS = ("fp16", "bf16", "fp32")
INSTALL_HINT = (
    "TensorRT is not installed. It comes from NVIDIA's package index, for a machine with an NVIDIA GPU: "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13` (or `pip install svdedit[tensorrt]`), "
    "with a driver for CUDA 13; see the README's TensorRT section."
)


class TensorrtError(SvdeditError):
    pass


def import_tensorrt():
    """The tensorrt module, or a TensorrtError that says how to install it."""
    try:
        import tensorrt as trt  # noqa: PLC0415  (import guard: TensorRT is optional)
    except ImportError:
        raise TensorrtError(INSTALL_HINT) from None
    return trt


# --------------------------------------------------------------------------------------------------
# 1. What to build: options, profiles, keys (plain Python)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = None      # None: the engine dir's own (what `svdedit export --precision` made)
    shapes: tuple[int, ...] = ()      # image sides (square); () = the manifest's default size
    max_batch: int = 4                # images edited at once (the Editor's --batch)
    static: bool = False
    workspace_gib: float = 8.0

    def check(self, manifest: dict) -> "BuildOptions":
        precision = self.precision or manifest["precision"]
        if precision not in PRECISIONS:
            raise SvdeditError(f"--precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}.")
        if not 1 <= self.max_batch <= 64:
            raise SvdeditError(f"--max-batch {self.max_batch} is out of range; give 1 to 64.")
        size = manifest["image_size"]
        shapes = self.shapes or (size["default"],)
        for s in shapes:
            if not size["min"] <= s <= size["max"] or s % size["multiple_of"]:
                raise SvdeditError(f"--shapes {s}x{s} is outside this model's sizes: {size['min']} to {size['max']} "
                                   f"pixels, a multiple of {size['multiple_of']}.")
        if self.static and len(shapes) != 1:
            raise SvdeditError(f"--static builds one shape; give exactly one in --shapes (got {len(shapes)}).")
        if any(n.get("fused") for n in manifest["networks"].values()):
            raise SvdeditError("this engine dir's attention is fused into onnxruntime's MultiHeadAttention, which "
                               "TensorRT cannot parse; export the model again with `svdedit export ... --no-fuse` "
                               "to build TensorRT plans.")
        return BuildOptions(precision, tuple(shapes[:1]) + tuple(sorted(set(shapes[1:]) - {shapes[0]})),
                            self.max_batch, self.static, self.workspace_gib)


def parse_shapes(text: str) -> tuple[int, ...]:
    """'512x512,768x768' -> (512, 768). Square sizes only (the runtime's images are square)."""
    out = []
    for part in text.split(","):
        h, sep, w = part.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit()):
            raise SvdeditError(f"--shapes {text!r}: write sizes as HxW, comma-separated, e.g. 512x512,768x768.")
        if h != w:
            raise SvdeditError(f"--shapes {part.strip()}: only square sizes are supported (the runtime fits images to a square).")
        out.append(int(h))
    return tuple(out)


def network_precision(network: str, precision: str) -> str:
    """The precision a network is built in: the VAE stays fp32 under fp16 (it overflows there)."""
    return "fp32" if precision == "fp16" and network.startswith("vae") else precision


def typing(network: str, graph_precision: str, requested: str, trt_version: str) -> tuple[bool, str | None]:
    """How to build one network: (strongly typed?, the builder flag to set or None).

    The ONNX graph already carries a precision (`svdedit export --precision fp16` converts the text encoder
    and UNet and keeps fp32 where SD overflows). When it is the one wanted, the network is built strongly
    typed: TensorRT runs it as typed. TensorRT 11 only builds that way (it removed BuilderFlag.FP16/BF16);
    TensorRT 10 can still lower an fp32 graph with a precision flag (weak typing)."""
    want = network_precision(network, requested)
    if want == graph_precision:
        return True, None
    if int(trt_version.split(".")[0]) >= 11:
        raise TensorrtError(
            f"TensorRT {trt_version} builds a network in the precision of its ONNX graph (strong typing); {network} "
            f"is {graph_precision} in this engine dir and {want} was asked. Export the model with `svdedit export "
            f"... --precision {want} --no-fuse`, or build with --precision {graph_precision}.")
    if want == "fp32":
        raise TensorrtError(f"{network} is {graph_precision} in this engine dir; an fp32 plan needs an fp32 export.")
    return False, want.upper()


def batch_ranges(network: str, options: BuildOptions) -> list[tuple[int, int, int]]:
    """(min, opt, max) batch per optimisation profile of a network."""
    n = options.max_batch
    if network == "unet":
        return [(1, n, n), (2, 2 * n, 4 * n)]          # inversion; guided sampling (two trajectories)
    if network == "text_encoder":
        return [(1, 2 * n, 2 * n + 1)]                 # sources, targets (and the empty prompt)
    if network == "vae_decoder":
        return [(1, n, 2 * n)]                         # edit_seeds decodes sources and edits together
    return [(1, n, n)]


def profiles(manifest: dict, network: str, options: BuildOptions) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """For each optimisation profile, {input name: (min shape, opt shape, max shape)} from the manifest."""
    factor = int(manifest["latent"]["vae_scale_factor"])
    sides = options.shapes or (manifest["image_size"]["default"],)
    lo, opt, hi = min(sides), sides[0], max(sides)
    if options.static:
        lo = hi = opt
    out = []
    for b_lo, b_opt, b_hi in batch_ranges(network, options):
        axes = [
            {"batch": b_lo, "height": lo, "width": lo, "latent_height": lo // factor, "latent_width": lo // factor},
            {"batch": b_opt, "height": opt, "width": opt, "latent_height": opt // factor, "latent_width": opt // factor},
            {"batch": b_hi, "height": hi, "width": hi, "latent_height": hi // factor, "latent_width": hi // factor},
        ]
        prof = {}
        for d in manifest["networks"][network]["inputs"]:
            prof[d["name"]] = tuple(tuple(a[s] if s in DYNAMIC_AXES else s for s in d["shape"]) for a in axes)
        out.append(prof)
    return out


def device_key(device: dict) -> str:
    """The manifest key of plans built on one kind of GPU with one TensorRT version (`current_device()`'s dict)."""
    safe = "".join(c if c.isalnum() else "-" for c in device["gpu"]).strip("-").lower()
    return f"{safe}_sm{device['compute_capability'].replace('.', '')}_trt{device['tensorrt']}"


def current_device() -> dict:
    """{"gpu", "compute_capability", "tensorrt"} of this machine (needs CuPy, a GPU and TensorRT)."""
    trt = import_tensorrt()
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    except Exception as exc:  # ImportError, or CUDA errors without a device
        raise TensorrtError(f"TensorRT needs an NVIDIA GPU and CuPy (svdedit[gpu]); none is usable here ({exc}).") from None
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu": name, "compute_capability": f"{props['major']}.{props['minor']}", "tensorrt": trt.__version__}


def find_plans(manifest: dict, device: dict, engine_dir: Path) -> dict:
    """The build record for this device, or a TensorrtError saying what exists and how to rebuild."""
    builds = manifest.get("tensorrt") or {}
    key = device_key(device)
    if key in builds:
        return builds[key]
    if not builds:
        raise TensorrtError(f"{engine_dir} has no TensorRT plans; build them with `svdedit build {engine_dir}`.")
    other = "; ".join(f"{b['gpu']} (compute capability {b['compute_capability']}, TensorRT {b['tensorrt']})"
                      for b in builds.values())
    raise TensorrtError(
        f"the TensorRT plans in {engine_dir} were built for {other}; this machine has {device['gpu']} (compute "
        f"capability {device['compute_capability']}, TensorRT {device['tensorrt']}). A plan runs only on the GPU "
        f"and TensorRT version it was built with: run `svdedit build {engine_dir}` here.")


def plans_for_this_device(manifest: dict) -> bool:
    """Whether the manifest has plans this machine can run (False, quietly, without TensorRT or a GPU)."""
    if not manifest.get("tensorrt"):
        return False
    try:
        device = current_device()
    except TensorrtError:
        return False
    return device_key(device) in manifest["tensorrt"]


def record_build(engine_dir: Path, manifest: dict, device: dict, options: BuildOptions, plans: dict) -> dict:
    """Add one build to the manifest (atomically) and return the new manifest."""
    key = device_key(device)
    manifest = json.loads(json.dumps(manifest))
    manifest.setdefault("tensorrt", {})[key] = {
        **device, "directory": f"{PLAN_DIR}/{key}", "precision": options.precision, "shapes": list(options.shapes),
        "max_batch": options.max_batch, "static": options.static,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "networks": plans,
    }
    atomic_write_bytes(engine_dir / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


# --------------------------------------------------------------------------------------------------
# 2. Building (TensorRT Python API)
# --------------------------------------------------------------------------------------------------
def build_plans(engine_dir: str | Path, options: BuildOptions, log_fn=print) -> dict:
    """Build one plan per network; write them under tensorrt/<key>/ and record them in the manifest."""
    import shutil
    import tempfile

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir, verify_hashes=True)
    options = options.check(manifest)
    trt = import_tensorrt()
    device = current_device()
    key = device_key(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = engine_dir / PLAN_DIR / TIMING_CACHE
    (engine_dir / PLAN_DIR).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=engine_dir / PLAN_DIR))
    try:
        plans = {}
        for name in NETWORKS:
            t0 = time.perf_counter()
            entry = manifest["networks"][name]
            strong, flag = typing(name, entry["precision"], options.precision, device["tensorrt"])
            network = builder.create_network(  # explicit batch is the only mode since TensorRT 10
                1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(engine_dir / entry["file"])):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise TensorrtError(f"TensorRT cannot parse {entry['file']}: {errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
            precision = network_precision(name, options.precision)
            if flag is not None:
                config.set_flag(getattr(trt.BuilderFlag, flag))
            cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
            network_profiles = profiles(manifest, name, options)
            for prof in network_profiles:
                p = builder.create_optimization_profile()
                for tensor, (lo, opt, hi) in prof.items():
                    p.set_shape(tensor, lo, opt, hi)
                config.add_optimization_profile(p)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise TensorrtError(f"TensorRT failed to build {name} (see its log above).")
            plan = staging / f"{name}.plan"
            plan.write_bytes(bytes(serialized))
            atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
            plans[name] = {"file": f"{PLAN_DIR}/{key}/{name}.plan", "sha256": sha256_file(plan),
                           "precision": precision, "profiles": [{k: [list(s) for s in v] for k, v in prof.items()}
                                                                for prof in network_profiles],
                           "build_seconds": round(time.perf_counter() - t0, 1)}
            log_fn(f"  {name}: {precision}, {len(plans[name]['profiles'])} profile(s), "
                   f"{plans[name]['build_seconds']} s")
        final = engine_dir / PLAN_DIR / key
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record_build(engine_dir, manifest, device, options, plans)


# --------------------------------------------------------------------------------------------------
# 3. Running: the same interface as engine.Engine
# --------------------------------------------------------------------------------------------------
def choose_profile(profiles_: list[dict], shapes: dict[str, tuple[int, ...]], network: str) -> int:
    """The first profile whose ranges hold every input's shape, or an error naming the shapes and ranges."""
    def fits(shape, rng):
        lo, _, hi = rng
        return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))

    for i, prof in enumerate(profiles_):
        if all(fits(shapes[n], rng) for n, rng in prof.items()):
            return i
    ranges = "; ".join(", ".join(f"{n} {tuple(r[0])}..{tuple(r[2])}" for n, r in p.items()) for p in profiles_)
    given = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
    raise TensorrtError(f"{network}: shapes {given} are outside the TensorRT plan's profiles ({ranges}). Rebuild with "
                        f"`svdedit build` and a larger --max-batch or other --shapes, or use --provider cpu/cuda.")


class SharedActivations:
    """One device buffer for the activation memory of engines that run one after another."""

    def __init__(self):
        self.buffer = None

    def get(self, nbytes: int):
        import cupy

        if self.buffer is None or self.buffer.nbytes < nbytes:
            self.buffer = cupy.empty(max(nbytes, 1), dtype=cupy.uint8)
        return self.buffer


@dataclass
class TensorrtEngine:
    """One network's TensorRT plan, run with CuPy buffers on one CuPy stream."""

    engine_dir: Path
    network: str
    manifest: dict | None = None
    shared: SharedActivations | None = None
    cuda_graphs: bool | None = None   # None: capture CUDA graphs when the plans were built --static
    provider: str = "TensorRT"
    _graphs: dict = field(default_factory=dict)

    def __post_init__(self):
        from svdedit.runtime.engine import Engine

        self.engine_dir = Path(self.engine_dir)
        self.manifest = self.manifest or read_manifest(self.engine_dir)
        self._checker = Engine(self.engine_dir, self.network, "cpu", self.manifest)  # manifest checks only

    def __enter__(self) -> "TensorrtEngine":
        trt = import_tensorrt()
        build = find_plans(self.manifest, current_device(), self.engine_dir)  # also: is there a GPU and CuPy?
        import cupy

        entry = build["networks"][self.network]
        path = self.engine_dir / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise TensorrtError(f"{path} is missing or does not match the manifest; run `svdedit build {self.engine_dir}` again.")
        self.profiles = [{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in entry["profiles"]]
        if self.cuda_graphs is None:
            self.cuda_graphs = bool(build["static"])
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts = [self.engine.create_execution_context(strategy) for _ in self.profiles]
        self.stream = cupy.cuda.Stream(non_blocking=True)
        for i, ctx in enumerate(self.contexts):
            ctx.set_optimization_profile_async(i, self.stream.ptr)
        self.shared = self.shared or SharedActivations()
        self.outputs = [o["name"] for o in self.manifest["networks"][self.network]["outputs"]]
        log.info("%s: TensorRT plan %s", self.network, entry["file"])
        return self

    def __exit__(self, *exc) -> None:
        self.contexts, self.engine, self._graphs = [], None, {}

    def __call__(self, **feeds):
        self._checker.check_feeds(feeds)
        shapes = {n: tuple(a.shape) for n, a in feeds.items()}
        i = choose_profile(self.profiles, shapes, self.network)
        if self.cuda_graphs:
            outputs = self._run_graph(i, shapes, feeds)
        else:
            outputs = self._run(i, feeds)
        self.stream.synchronize()
        if all(isinstance(a, np.ndarray) for a in feeds.values()):
            return {n: a.get() for n, a in outputs.items()}
        # a graph's output buffers are overwritten by its next launch: hand out copies
        return {n: a.copy() for n, a in outputs.items()} if self.cuda_graphs else outputs

    def _bind(self, ctx, inputs: dict, memory) -> dict:
        """Set the input shapes, allocate the outputs, bind every tensor by name; return the outputs."""
        import cupy

        for n, a in inputs.items():
            ctx.set_input_shape(n, a.shape)
        outputs = {n: cupy.empty(tuple(ctx.get_tensor_shape(n)), dtype=np.float32) for n in self.outputs}
        ctx.set_device_memory(memory.data.ptr, memory.nbytes)
        for n, a in {**inputs, **outputs}.items():
            ctx.set_tensor_address(n, a.data.ptr)
        return outputs

    def _execute(self, ctx, shapes) -> None:
        if not ctx.execute_async_v3(self.stream.ptr):
            raise TensorrtError(f"{self.network}: TensorRT execution failed for shapes {shapes}.")

    def _run(self, i: int, feeds: dict) -> dict:
        import cupy

        with self.stream:
            inputs = {n: cupy.ascontiguousarray(cupy.asarray(a)) for n, a in feeds.items()}
            memory = self.shared.get(self.engine.get_device_memory_size_for_profile_v2(i))
            outputs = self._bind(self.contexts[i], inputs, memory)
            self._execute(self.contexts[i], {n: a.shape for n, a in inputs.items()})
        return outputs

    def _run_graph(self, i: int, shapes: dict, feeds: dict) -> dict:
        """One CUDA graph per input shape: persistent buffers, captured once, then copy in + launch."""
        import cupy

        key = tuple(sorted(shapes.items()))
        with self.stream:
            if key not in self._graphs:
                inputs = {n: cupy.empty(s, dtype=feeds[n].dtype) for n, s in shapes.items()}
                memory = cupy.empty(max(1, self.engine.get_device_memory_size_for_profile_v2(i)), cupy.uint8)
                outputs = self._bind(self.contexts[i], inputs, memory)
                self._execute(self.contexts[i], shapes)  # TensorRT's shape-dependent setup happens outside capture
                self.stream.begin_capture()
                self._execute(self.contexts[i], shapes)
                graph = self.stream.end_capture()
                self._graphs[key] = (inputs, outputs, memory, graph)
            inputs, outputs, _, graph = self._graphs[key]
            for n, a in inputs.items():
                a[...] = cupy.asarray(feeds[n])
            graph.launch(self.stream)
        return outputs
