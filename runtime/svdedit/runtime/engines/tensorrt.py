"""The TensorRT runner: one network's plan (made by `svdedit build`, export/svdedit/export/build.py), run with CuPy buffers.

    with TensorrtRunner(engine_dir, "unet", manifest) as unet:       # same interface as OrtRunner
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Plans live in the user's cache (plans.py: <engine cache>/tensorrt/<key>/, recorded in builds.json beside)
under a device key: the GPU's name, its compute capability and the TensorRT version (``device_key``). A
plan runs only where its key matches; ``find_plans`` says what exists and how to rebuild otherwise. A
model's identity, and so its attribute files, do not depend on the plans (contract.Manifest.identity).

Activation deserialises the plan and makes one execution context per optimisation profile; a call
picks the first profile whose ranges hold the input shapes, binds CuPy device buffers by name
(``set_tensor_address``) and runs ``execute_async_v3`` on a CuPy stream. The networks run one after
another, so they share one activation buffer (``SharedActivations``). Plans built ``--static`` are
run through CUDA graphs, one per input shape. NumPy feeds give NumPy outputs; CuPy feeds, CuPy outputs.

A LoRA swapped in at run time (engines/lora.py) is refitted into the deserialised engine before its contexts are
made (``refit_swapped``: plans built --refittable; the cached plan is not written).

`import tensorrt` and `import cupy` happen only on activation (TensorRT is optional; its absence is a
TensorrtError that says how to install it). Nothing here has run against a real TensorRT yet.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from svdedit.runtime.engines.base import Runner
from svdedit.runtime.engines.manifest import Manifest
from svdedit.runtime.engines.plans import Plans, all_plans, device_key, plans_dir
from svdedit.runtime.errors import TensorrtError

log = logging.getLogger("svdedit.runtime")

INSTALL_HINT = (
    "TensorRT is not installed. It comes from NVIDIA's package index, for a machine with an NVIDIA GPU: "
    "`pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13` (or `pip install svdedit[tensorrt]`), "
    "with a driver for CUDA 13; see the README's TensorRT section."
)


def import_tensorrt():
    """The tensorrt module, or a TensorrtError that says how to install it. `tensorrt` is the module of the tensorrt-cu13
    package, which re-exports `tensorrt_bindings` (the tensorrt-cu13-bindings wheel); the bindings alone serve too where
    TensorRT's libraries are installed some other way."""
    for name in ("tensorrt", "tensorrt_bindings"):
        try:
            return importlib.import_module(name)  # import guard: TensorRT is optional
        except ImportError:
            continue
    raise TensorrtError(INSTALL_HINT)


# --------------------------------------------------------------------------------------------------
# Which plans this machine can run
# --------------------------------------------------------------------------------------------------
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


def find_plans(manifest: Manifest, device: dict, engine_dir: Path) -> Plans:
    """The plans for this device (the user cache's, or the engine dir's own from svdedit 0.1), or a TensorrtError
    saying what exists and how to rebuild."""
    builds = all_plans(manifest, engine_dir)
    key = device_key(device)
    if key in builds:
        return builds[key]
    if not builds:
        raise TensorrtError(f"{engine_dir} has no TensorRT plans for this machine; build them with "
                            f"`svdedit build {engine_dir}` (they go to {plans_dir(manifest)}).")
    other = "; ".join(f"{p.build.gpu} (compute capability {p.build.compute_capability}, TensorRT {p.build.tensorrt})"
                      for p in builds.values())
    raise TensorrtError(
        f"the TensorRT plans of {engine_dir} were built for {other}; this machine has {device['gpu']} (compute "
        f"capability {device['compute_capability']}, TensorRT {device['tensorrt']}). A plan runs only on the GPU "
        f"and TensorRT version it was built with: run `svdedit build {engine_dir}` here.")


def plans_for_this_device(manifest: Manifest, engine_dir: Path) -> bool:
    """Whether there are plans this machine can run (False, quietly, without TensorRT or a GPU; False with a
    warning when the cache's record is damaged, so that `auto` falls back to onnxruntime)."""
    try:
        device = current_device()
    except TensorrtError:
        return False
    try:
        return device_key(device) in all_plans(manifest, engine_dir)
    except TensorrtError as exc:
        log.warning("not using TensorRT plans: %s", exc)
        return False


def choose_profile(profiles: list[dict], shapes: dict[str, tuple[int, ...]], network: str) -> int:
    """The first profile whose ranges hold every input's shape, or an error naming the shapes and ranges."""
    def fits(shape, rng):
        lo, _, hi = rng
        return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))

    for i, prof in enumerate(profiles):
        if all(fits(shapes[n], rng) for n, rng in prof.items()):
            return i
    ranges = "; ".join(", ".join(f"{n} {tuple(r[0])}..{tuple(r[2])}" for n, r in p.items()) for p in profiles)
    given = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
    raise TensorrtError(f"{network}: shapes {given} are outside the TensorRT plan's profiles ({ranges}). Build the "
                        f"plans again for a larger batch or other shapes (`svdedit build --help`), or run on the "
                        f"provider cpu or cuda.")


def load_plan(trt, logger, path: Path, engine_dir: Path, also: str = "") -> tuple:
    """(runtime, engine) of one plan file; the runtime must outlive the engine. TensorRT returns None (and logs why)
    rather than raising: that is an error naming the plan and the rebuild (`also`: another way out, for the message)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise TensorrtError(f"TensorRT {trt.__version__} could not load the plan {path} (see its log above: a plan "
                            f"from another TensorRT build, or too little GPU memory). Run `svdedit build "
                            f"{engine_dir}` again{also}.")
    return runtime, engine


def refit_engine(trt, logger, engine, network: str, weights: dict, graph: Path | None = None) -> int:
    """Put `weights` ({ONNX initializer name: array}) into `engine`, deserialised from a plan built --refittable, with
    TensorRT's Refitter; the count of weights refitted. Weights that TensorRT folded with these at build (its
    get_missing_weights) are read, with all the others, from `graph` (the ONNX file the new weights belong to)
    through the ONNX parser's refitter. A TensorrtError names what TensorRT refused; the plan file is never written."""
    refitter = trt.Refitter(engine, logger)
    known = set(refitter.get_all_weights())
    unknown = sorted(set(weights) - known)
    if unknown:
        raise TensorrtError(f"{network}'s plan has no weights named {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''}; its weights carry the ONNX initializer names "
                            f"(e.g. {', '.join(sorted(known)[:3])}).")
    arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}  # alive until the refit is done
    for name, value in arrays.items():
        if not refitter.set_named_weights(name, trt.Weights(value)):
            raise TensorrtError(f"TensorRT refused the weights {name} of {network} (shape {value.shape}, {value.dtype}): "
                                f"they must have the shape and type of the initializer they replace.")
    missing = list(refitter.get_missing_weights())
    if missing and graph is None:
        raise TensorrtError(f"refitting {network} needs these weights too (TensorRT folded them with the ones given): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}.")
    if missing:  # the parser's refitter reads every weight of the graph and refits the engine with them
        parser = trt.OnnxParserRefitter(refitter, logger)
        if not parser.refit_from_file(str(graph)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "see its log above"
            raise TensorrtError(f"TensorRT could not refit {network}'s plan from {graph} ({errors}); the old plan stays.")
        return len(known)
    if not refitter.refit_cuda_engine():
        raise TensorrtError(f"TensorRT could not refit {network}'s plan (see its log above); the old plan stays.")
    return len(arrays)


def refit_swapped(trt, logger, engine, network: str, plans: Plans, graph: Path, net) -> None:
    """Refit `engine` with the weights a run-time LoRA changed in `network` (lora.swapped_weights of `graph`)."""
    from svdedit.runtime.engines.lora import swapped_weights

    if not plans.build.refittable:
        raise TensorrtError(refit_hint(plans))
    count = refit_engine(trt, logger, engine, network, swapped_weights(graph, network, net), graph)
    log.info("%s: %d weight(s) refitted for the LoRA adapters (%s)", network, count, graph.parent)


def refit_hint(plans: Plans) -> str:
    """Why a LoRA cannot be swapped into `plans` (not built refittable), and the ways that work."""
    return (f"a LoRA swapped in at run time is refitted into the TensorRT plans, and the plans in "
            f"{plans.root / plans.key} were not built refittable. Build them again with `svdedit build ENGINE_DIR "
            f"--refittable`, choose another provider (cpu, cuda, ort-tensorrt, openvino), or fuse the adapter at "
            f"export (`svdedit export MODEL -o DIR --lora FILE`).")


#: TensorRT's output types (DataType names) as NumPy/CuPy dtypes; BF16 has none: it is read as uint16 and widened
OUTPUT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "BF16": np.uint16, "INT32": np.int32, "INT64": np.int64,
                 "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def output_dtype(trt_dtype, network: str, name: str):
    """The buffer dtype of an output TensorRT reports as `trt_dtype` (an fp16 plan's outputs are fp16, not fp32)."""
    kind = getattr(trt_dtype, "name", str(trt_dtype)).rsplit(".", 1)[-1]
    if kind not in OUTPUT_DTYPES:
        raise TensorrtError(f"{network}: its plan's output {name} is {kind}, which svdedit cannot read; build the plans "
                            f"from an fp32 or fp16 export.")
    return OUTPUT_DTYPES[kind]


def widen(a):
    """A bf16 output (held as uint16) as float32: its bits are the top half of a float32's."""
    if a.dtype != np.uint16:
        return a
    return (a.astype(np.uint32) << 16).view(np.float32)


class SharedActivations:
    """One device buffer for the activation memory of engines that run one after another."""

    def __init__(self):
        self.buffer = None

    def get(self, nbytes: int):
        import cupy

        if self.buffer is None or self.buffer.nbytes < nbytes:
            self.buffer = cupy.empty(max(nbytes, 1), dtype=cupy.uint8)
        return self.buffer


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------
class TensorrtRunner(Runner):
    """One network's TensorRT plan, run with CuPy buffers on one CuPy stream."""

    provider = "TensorRT"

    def __init__(self, engine_dir: str | Path, network: str, manifest: Manifest,
                 shared: SharedActivations | None = None, cuda_graphs: bool | None = None, refit: Path | None = None):
        super().__init__(engine_dir, network, manifest)
        self.shared = shared or SharedActivations()
        self.cuda_graphs = cuda_graphs  # None: capture CUDA graphs when the plans were built --static
        self.refit = refit  # a LoRA swapped in (lora.swapped_graphs): its graph, whose new weights are refitted in
        self._graphs: dict = {}

    def _activate(self) -> None:
        trt = import_tensorrt()
        plans = find_plans(self.manifest, current_device(), self.engine_dir)  # also: is there a GPU and CuPy?
        build = plans.build
        import cupy

        plan = build.networks.get(self.network)
        if plan is None:
            raise TensorrtError(f"the TensorRT build in {plans.root} has no plan for {self.network}; run "
                                f"`svdedit build {self.engine_dir}` again.")
        path = plans.path(self.network)
        if not plans.intact(self.network):
            raise TensorrtError(f"{path} is missing or does not match its build record; run "
                                f"`svdedit build {self.engine_dir}` again.")
        self.profiles = [{k: tuple(tuple(s) for s in v) for k, v in p.items()} for p in plan.profiles]
        if self.cuda_graphs is None:
            self.cuda_graphs = build.static
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime, self.engine = load_plan(trt, logger, path, self.engine_dir, also=", or choose the provider cuda or cpu")
        if self.refit is not None:  # in memory only: the plan in the cache stays the engine dir's
            refit_swapped(trt, logger, self.engine, self.network, plans, self.refit, self.manifest.networks[self.network])
        self._allocation = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.contexts = [self._context(i) for i in range(len(self.profiles))]
        self.output_dtypes = {n: output_dtype(self.engine.get_tensor_dtype(n), self.network, n)
                              for n in self.output_names}
        log.info("%s: TensorRT plan %s", self.network, plan.file)

    def _context(self, profile: int):
        """A new execution context on `profile` (None from TensorRT is an error: most often GPU memory)."""
        ctx = self.engine.create_execution_context(self._allocation)
        if ctx is None:
            raise TensorrtError(f"{self.network}: TensorRT could not create an execution context for its plan (see its "
                                f"log above; most often too little GPU memory). Close other GPU work, or build the "
                                f"plans for a smaller batch (`svdedit build --help`).")
        ctx.set_optimization_profile_async(profile, self.stream.ptr)
        return ctx

    def _deactivate(self) -> None:
        self.contexts, self.engine, self._graphs = [], None, {}
        self.output_dtypes = {}

    def _infer(self, feeds: dict) -> dict:
        shapes = {n: tuple(a.shape) for n, a in feeds.items()}
        i = choose_profile(self.profiles, shapes, self.network)
        if self.cuda_graphs:
            outputs = self._run_graph(i, shapes, feeds)
        else:
            outputs = self._run(i, feeds)
        self.stream.synchronize()
        outputs = {n: widen(a) for n, a in outputs.items()}
        if all(isinstance(a, np.ndarray) for a in feeds.values()):
            return {n: a.get() for n, a in outputs.items()}
        # a graph's output buffers are overwritten by its next launch: hand out copies
        return {n: a.copy() for n, a in outputs.items()} if self.cuda_graphs else outputs

    def _bind(self, ctx, inputs: dict, memory) -> dict:
        """Set the input shapes, allocate the outputs, bind every tensor by name; return the outputs."""
        import cupy

        for n, a in inputs.items():
            ctx.set_input_shape(n, a.shape)
        outputs = {n: cupy.empty(tuple(ctx.get_tensor_shape(n)), dtype=self.output_dtypes[n]) for n in self.output_names}
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
                # a captured graph holds its context's shapes and addresses: each graph gets a context of its own,
                # or the next capture on a shared one would rebind the tensors an earlier graph launches with
                ctx = self._context(i)
                inputs = {n: cupy.empty(s, dtype=feeds[n].dtype) for n, s in shapes.items()}
                memory = cupy.empty(max(1, self.engine.get_device_memory_size_for_profile_v2(i)), cupy.uint8)
                outputs = self._bind(ctx, inputs, memory)
                self._execute(ctx, shapes)  # TensorRT's shape-dependent setup happens outside capture
                self.stream.begin_capture()
                self._execute(ctx, shapes)
                graph = self.stream.end_capture()
                self._graphs[key] = (inputs, outputs, memory, graph, ctx)
            inputs, outputs, _, graph, _ = self._graphs[key]
            for n, a in inputs.items():
                a[...] = cupy.asarray(feeds[n])
            graph.launch(self.stream)
        return outputs
