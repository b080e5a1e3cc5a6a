"""`svdedit build`: TensorRT plans from an engine dir's ONNX graphs, for the GPU it runs on. No torch.

    build_plans(engine_dir, BuildOptions(precision="fp16", shapes=(512,), max_batch=4))

Like the export, an offline compile step that runs once per machine; the plans are run by
runtime/svdedit/runtime/engines/tensorrt.py (TensorrtRunner). The engine dir is only read: the plans go to the user's
cache (runtime/svdedit/runtime/engines/plans.py), recorded in its builds.json under their device key (GPU, compute
capability, TensorRT version), so read-only and installed engine dirs (svdedit:shapes) get plans too:

    <engine cache>/tensorrt/timing-<key>.cache    one per device key: a timing cache holds one GPU's kernel timings
    <engine cache>/tensorrt/<key>/{text_encoder,unet,vae_encoder,vae_decoder}.plan
    <engine cache> = $XDG_CACHE_HOME/svdedit/engines/<identity>-<graphs>/  (~/.cache by default)

Precision: the ONNX graphs carry it (`svdedit export --precision fp16`), and the plans are built strongly
typed from them, the only way TensorRT 11 builds; TensorRT 10 can also lower fp32 graphs with a builder
flag (see `typing`). Which network gets which precision is the contract's policy
(contract.network_precision: the VAE stays fp32 under fp16).

Optimisation profiles come from the build options, checked against the manifest's size range: the UNet
gets two (inversion: batch 1..N, optimised for N; guided sampling: batch 2..4N, optimised for 2N; the
Editor runs two trajectories per image, each guided, so 4N latents per call at most), the other
networks one (text encoder: prompts for N images, their targets and the empty prompt). `static` fixes
the image size (min = opt = max; dynamic sizes cost ~13% on TensorRT, anchors.md); the batch stays a
range, since the last batch of a run and the empty prompt's encoding are smaller.

Everything that needs neither TensorRT nor a GPU (options, profiles, the build record, refusals) is
plain Python and tested on CPU; `import tensorrt` happens only when a plan is built. The plans are
written to a temporary folder and renamed, and the record is rewritten atomically; a timing cache TensorRT
rejects (another GPU's, or a damaged file) is set aside with a warning, never the build's plans. Nothing here
has run against a real TensorRT yet: tests/export/test_build_strict.py drives it with a strict stand-in for
TensorRT 11's API (None returns, rejected caches, no STRONGLY_TYPED or precision flags).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from svdedit.runtime.engines import plans as plans_mod
from svdedit.runtime.engines.contract import BUILD_PRECISIONS, network_precision, resolve_shape
from svdedit.runtime.engines.manifest import Manifest, read_manifest
from svdedit.runtime.engines.names import resolve_engine
from svdedit.runtime.engines.plans import Plans
from svdedit.runtime.engines.plans import device_key
from svdedit.runtime.engines.tensorrt import current_device, find_plans, import_tensorrt, load_plan, refit_engine
from svdedit.runtime.errors import SvdeditError, TensorrtError
from svdedit.runtime.files import atomic_dir, atomic_write_bytes, sha256_file


# --------------------------------------------------------------------------------------------------
# 1. What to build: options, profiles (plain Python)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = None      # None: the engine dir's own (what `svdedit export --precision` made)
    shapes: tuple[int, ...] = ()      # image sides (square); () = the manifest's default size
    max_batch: int = 4                # images edited at once (the Editor's --batch)
    static: bool = False
    workspace_gib: float = 8.0
    refittable: bool = False          # BuilderFlag.REFIT: weights replaceable later (refit_plan)

    def check(self, manifest: Manifest) -> "BuildOptions":
        precision = self.precision or manifest.precision
        if precision not in BUILD_PRECISIONS:
            raise SvdeditError(f"--precision {precision!r} is not supported; choose one of {', '.join(BUILD_PRECISIONS)}.")
        if not 1 <= self.max_batch <= 64:
            raise SvdeditError(f"--max-batch {self.max_batch} is out of range; give 1 to 64.")
        size = manifest.image_size
        shapes = self.shapes or (size.default,)
        for s in shapes:
            if not size.min <= s <= size.max or s % size.multiple_of:
                raise SvdeditError(f"--shapes {s}x{s} is outside this model's sizes: {size.min} to {size.max} "
                                   f"pixels, a multiple of {size.multiple_of}.")
        if self.static and len(shapes) != 1:
            raise SvdeditError(f"--static builds one shape; give exactly one in --shapes (got {len(shapes)}).")
        mode = (manifest.quantization or {}).get("mode")
        if manifest.openvino_models:
            raise SvdeditError(f"this engine dir's UNet is an OpenVINO model (`svdedit quantize --mode {mode}`), which "
                               f"TensorRT cannot parse. Build from the fp32 engine dir it came from, or quantize that "
                               f"one with `svdedit quantize --mode tensorrt` (from a --no-fuse export).")
        if mode not in (None, "tensorrt"):
            raise SvdeditError(f"this engine dir's UNet was quantized by `svdedit quantize --mode {mode}` (int8 for "
                               f"onnxruntime and OpenVINO: uint8 activations, which TensorRT does not read). For int8 "
                               f"plans quantize the --no-fuse fp32 engine dir with `svdedit quantize --mode tensorrt`, or "
                               f"build from the fp32/fp16 engine dir it came from.")
        if mode == "tensorrt" and precision != "fp32":
            raise SvdeditError(f"--precision {precision}: an int8 engine dir (svdedit quantize --mode tensorrt) builds "
                               f"in fp32 around its int8 layers; leave --precision out.")
        if any(n.fused for n in manifest.networks.values()):
            raise SvdeditError("this engine dir's attention is fused into onnxruntime's MultiHeadAttention, which "
                               "TensorRT cannot parse; export the model again with `svdedit export ... --no-fuse` "
                               "to build TensorRT plans (svdedit:shapes is such an engine dir: from a clone of "
                               "svdedit, `svdedit export models/shapes -o DIR --no-fuse`).")
        return BuildOptions(precision, tuple(shapes[:1]) + tuple(sorted(set(shapes[1:]) - {shapes[0]})),
                            self.max_batch, self.static, self.workspace_gib, self.refittable)


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


def typing(network: str, graph_precision: str, requested: str, trt_version: str) -> tuple[bool, str | None]:
    """How to build one network: (strongly typed?, the builder flag to set or None).

    The ONNX graph already carries a precision (`svdedit export --precision fp16` converts the text encoder
    and UNet and keeps fp32 where SD overflows). When it is the one wanted, the network is built strongly
    typed: TensorRT runs it as typed. TensorRT 11 only builds that way (it removed BuilderFlag.FP16/BF16);
    TensorRT 10 can still lower an fp32 graph with a precision flag (weak typing)."""
    want = network_precision(network, requested)
    if want == graph_precision or graph_precision == "int8":  # QDQ: int8 where its Q/DQ nodes say, fp32 elsewhere
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
    if network.startswith("unet"):  # the whole UNet, or each part of a split one (--step-cache)
        return [(1, n, n), (2, 2 * n, 4 * n)]          # inversion; guided sampling (two trajectories)
    if network == "text_encoder":
        return [(1, 2 * n, 2 * n + 1)]                 # sources, targets (and the empty prompt)
    if network == "vae_decoder":
        return [(1, n, 2 * n)]                         # edit_seeds decodes sources and edits together
    return [(1, n, n)]


def profiles(manifest: Manifest, network: str, options: BuildOptions) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """For each optimisation profile, {input name: (min shape, opt shape, max shape)} from the manifest."""
    sides = options.shapes or (manifest.image_size.default,)
    lo, opt, hi = min(sides), sides[0], max(sides)
    if options.static:
        lo = hi = opt
    out = []
    for b_lo, b_opt, b_hi in batch_ranges(network, options):
        axes = [manifest.axis_sizes(b_lo, lo), manifest.axis_sizes(b_opt, opt), manifest.axis_sizes(b_hi, hi)]
        out.append({t.name: tuple(resolve_shape(t.shape, a) for a in axes) for t in manifest.networks[network].inputs})
    return out


def record_build(manifest: Manifest, device: dict, options: BuildOptions, plans: dict) -> Plans:
    """Record one build (plans already in place under <plans dir>/<key>/) in the cache's builds.json."""
    key = device_key(device)
    return plans_mod.record_build(manifest, key, {
        **device, "directory": key, "precision": options.precision, "shapes": list(options.shapes),
        "max_batch": options.max_batch, "static": options.static, "refittable": options.refittable,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "networks": plans,
    })


# --------------------------------------------------------------------------------------------------
# 2. Building (TensorRT Python API)
# --------------------------------------------------------------------------------------------------
def build_plans(engine_dir: str | Path, options: BuildOptions, log: Callable[[str], None] = lambda m: None) -> Plans:
    """Build one plan per network into the user cache (plans.plans_dir) and record them there; the engine dir
    is only read."""
    engine_dir = resolve_engine(engine_dir)
    manifest = read_manifest(engine_dir, verify="all")
    options = options.check(manifest)
    trt = import_tensorrt()
    device = current_device()
    key = device_key(device)
    root = plans_mod.writable_plans_dir(manifest)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorrtError("TensorRT could not create a builder (its log above says why: most often no usable GPU "
                            "or a driver older than its CUDA).")
    timings = TimingCache(root / f"timing-{key}.cache", log)
    plans = {}
    with atomic_dir(root / key, replace=True) as staging:  # the old plans stay until the new ones are in
        for name in manifest.networks:
            plans[name] = _build_network(trt, builder, logger, engine_dir, manifest, name, options, device, staging,
                                         timings)
            log(f"  {name}: {plans[name]['precision']}, {len(plans[name]['profiles'])} profile(s), "
                f"{plans[name]['build_seconds']} s")
    timings.save()
    log(f"plans in {root / key}")
    return record_build(manifest, device, options, plans)


class TimingCache:
    """One device key's timing cache: read once, handed to every network's build config, written after the plans.

    TensorRT refuses a cache from another GPU or TensorRT, or a damaged one: set_timing_cache returns False (and
    get_timing_cache() then gives None). Such a file is set aside (renamed *.rejected) with a warning, and the build
    goes on with an empty cache: a timing cache only saves time, it never decides a plan."""

    def __init__(self, path: Path, log: Callable[[str], None]):
        self.path, self.log = path, log
        self.blob = path.read_bytes() if path.exists() else b""

    def attach(self, config) -> None:
        if self._set(config, self.blob) or not self.blob:
            return
        self.log(f"  TensorRT rejected the timing cache {self.path.name} (another GPU's or TensorRT's, or "
                 f"damaged); set aside as {self.path.name}.rejected, building without it")
        self.path.replace(self.path.with_name(self.path.name + ".rejected"))
        self.blob = b""
        self._set(config, b"")

    @staticmethod
    def _set(config, blob: bytes) -> bool:
        cache = config.create_timing_cache(blob)
        return cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)

    def keep(self, config) -> None:
        """After a network's build: its config's cache (now holding this build's timings) seeds the next one."""
        cache = config.get_timing_cache()
        if cache is not None:
            self.blob = bytes(cache.serialize())

    def save(self) -> None:
        """Write the cache (after the plans are in place: a failure here costs the next build time, not plans)."""
        if self.blob:
            try:
                atomic_write_bytes(self.path, self.blob)
            except OSError as exc:
                self.log(f"  could not write the timing cache {self.path} ({exc}); the plans are kept")


def network_flags(trt, strong: bool) -> int:
    """create_network's flags. TensorRT 10 builds strongly typed only when asked (STRONGLY_TYPED); TensorRT 11 always
    does, and deprecates the flag (it may be gone): it is looked up, never assumed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if strong and flag is not None else 0


def _build_network(trt, builder, logger, engine_dir: Path, manifest: Manifest, name: str, options: BuildOptions,
                   device: dict, staging: Path, timings: TimingCache) -> dict:
    """Parse one ONNX graph, set its precision and profiles, build its plan into `staging`; the plan's record."""
    t0 = time.perf_counter()
    entry = manifest.networks[name]
    strong, flag = typing(name, entry.precision, options.precision, device["tensorrt"])
    network = builder.create_network(network_flags(trt, strong))  # explicit batch: the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(engine_dir / entry.file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorrtError(f"TensorRT cannot parse {entry.file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    if flag is not None:
        if not hasattr(trt.BuilderFlag, flag):
            raise TensorrtError(f"TensorRT {device['tensorrt']} has no BuilderFlag.{flag}: it builds {name} in the "
                                f"precision of its ONNX graph only. Export with `svdedit export ... --precision "
                                f"{flag.lower()} --no-fuse`.")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if options.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    timings.attach(config)
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
    plan.write_bytes(bytes(serialized))  # the plan first: nothing after this loses it
    timings.keep(config)
    precision = "int8" if entry.precision == "int8" else network_precision(name, options.precision)
    return {"file": f"{device_key(device)}/{name}.plan", "sha256": sha256_file(plan), "precision": precision,
            "profiles": [{k: [list(s) for s in v] for k, v in prof.items()} for prof in network_profiles],
            "build_seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------------------------------
# 3. Refit: new weights into a refittable plan, no rebuild
# --------------------------------------------------------------------------------------------------
def refit_plan(engine_dir: str | Path, network: str, weights: dict, log: Callable[[str], None] = lambda m: None) -> Plans:
    """Replace the named weights (ONNX initializer names: {name: array}) of one network's plan for this GPU, built
    --refittable, with TensorRT's Refitter; the refitted plan is written beside the old one under a new name and the
    record switched to it atomically, so a failure anywhere leaves the old plan in use."""
    engine_dir = resolve_engine(engine_dir)
    manifest = read_manifest(engine_dir)
    trt = import_tensorrt()
    plans = find_plans(manifest, current_device(), engine_dir)
    if plans.where != plans_mod.IN_CACHE:
        raise TensorrtError(f"the plans of {engine_dir} are svdedit 0.1's, inside the engine dir, which svdedit only "
                            f"reads; run `svdedit build {engine_dir} --refittable` to put refittable plans in the cache.")
    if not plans.build.refittable:
        raise TensorrtError(f"the TensorRT plans in {plans.root / plans.key} were built without --refittable; build "
                            f"them again with `svdedit build {engine_dir} --refittable` to replace weights.")
    if network not in plans.build.networks or not plans.intact(network):
        raise TensorrtError(f"no intact plan for {network} in {plans.root / plans.key}; run `svdedit build "
                            f"{engine_dir} --refittable` again.")
    logger = trt.Logger(trt.Logger.WARNING)
    _runtime, engine = load_plan(trt, logger, plans.path(network), engine_dir)  # the runtime outlives the engine
    count = refit_engine(trt, logger, engine, network, weights)  # weights given by the caller: none read from a graph
    blob = bytes(engine.serialize())
    digest = hashlib.sha256(blob).hexdigest()
    name = f"{network}-refit-{digest[:12]}.plan"
    atomic_write_bytes(plans.root / plans.key / name, blob)
    old = plans.path(network)
    record = dataclasses.asdict(plans.build)
    record["networks"][network].update(file=f"{plans.key}/{name}", sha256=digest)
    out = plans_mod.record_build(manifest, plans.key, record)
    if old.name != name:
        old.unlink(missing_ok=True)
    log(f"  {network}: {count} weight(s) refitted into {name}")
    return out
