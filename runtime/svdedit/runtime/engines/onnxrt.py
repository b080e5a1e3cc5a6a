"""The onnxruntime runner: one network's ONNX graph in an onnxruntime session (CPU, CUDA or TensorRT provider).

    with OrtRunner(engine_dir, "unet", manifest, provider="auto") as unet:   # the session is created once
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

onnxruntime-gpu lists providers whose CUDA libraries it cannot load and then runs on the CPU without a
word; the runner logs a warning (logger "svdedit.runtime", which the command line prints) when that happens.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from svdedit.kernels import array_module
from svdedit.runtime.engines.base import Runner
from svdedit.runtime.engines.names import engine_cache_dir
from svdedit.runtime.engines.manifest import Manifest
from svdedit.runtime.errors import EngineDirError, SvdeditError

log = logging.getLogger("svdedit.runtime")

#: preference order when the provider is "auto"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
#: onnxruntime's element type names, as NumPy names them
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}


def choose_providers(requested: str = "auto") -> list[str]:
    """onnxruntime providers to ask for: the best available, or the one requested, CPU as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested == "auto":
        return [p for p in PROVIDER_ORDER if p in available]
    name = requested if requested.endswith("ExecutionProvider") else PROVIDER_NAMES.get(requested.lower(), requested)
    if name not in available:
        raise SvdeditError(
            f"the provider {requested!r} is not available in this onnxruntime (available: {', '.join(available)}). "
            f"Use the provider auto, or install onnxruntime-gpu for CUDA/TensorRT."
        )
    return [name] + (["CPUExecutionProvider"] if name != "CPUExecutionProvider" else [])


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from their wheels (the gpu extra's onnxruntime-gpu[cuda,cudnn]) before the first CUDA or
    TensorRT session, as onnxruntime-gpu asks (onnxruntime.preload_dlls, 1.21+); once per process. Where they are
    not wheels (a system CUDA) onnxruntime finds them itself, so a failure here is only logged."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001  its errors are OSErrors or its own; the session says what is missing
            log.info("onnxruntime.preload_dlls: %s", exc)


def provider_entry(name: str, cache_dir: Path, precision: str, cuda_graphs: bool = False):
    """What onnxruntime is given for one provider: TensorRT's EP keeps its engine and timing caches in the
    engine's per-user cache folder (names.engine_cache_dir: <cache>/ort-tensorrt/, created here), so that only the
    first session on a machine pays for the build, and an installed (read-only) engine dir is never written. The
    CUDA provider captures CUDA graphs when `cuda_graphs` (OrtRunner's)."""
    if name == "CUDAExecutionProvider" and cuda_graphs:
        return (name, {"enable_cuda_graph": "1"})
    if name != "TensorrtExecutionProvider":
        return name
    cache = cache_dir / "ort-tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    return (name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                   "trt_fp16_enable": str(precision == "fp16")})


def session_options():
    """onnxruntime's session options for every network.

    No CPU memory arena: each session's arena keeps its largest activations for good, and four sessions
    add up (SD 1.5 shape, fused attention, the edit's calls: peak RSS 9.87 GiB with an arena per session,
    7.43 with one shared arena, 5.47 without, and no slower: UNet 2.40 s / 4.76 s at batch 1 / 2 against
    2.71 / 5.82 with arenas). Measured by benchmarks/speed/session_memory.py, results in
    benchmarks/results/session_memory_sd15_cpu.md. Graph optimisation stays at onnxruntime's default
    (all), threads at its default (one per physical core).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False
    # Idle worker threads sleep instead of spinning: a spinning pool of one session takes the cores from the next
    # one (the split UNet of --step-cache runs three sessions per step: embedded model, 50 guided steps at batch 4,
    # 1.19 s spinning against 0.75 s not; the whole UNet 0.68 against 0.73, within the noise of that run).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def device_array(value):
    """An onnxruntime OrtValue on a CUDA device as a CuPy array sharing its memory (DLPack where this onnxruntime has
    it; else its pointer, the OrtValue kept alive as the memory's owner)."""
    import cupy

    if hasattr(value, "__dlpack__"):
        return cupy.from_dlpack(value)
    dtype = np.dtype(ORT_TYPES[value.data_type()])
    shape = tuple(value.shape())
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), int(np.prod(shape)) * dtype.itemsize, value)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


#: run option naming the CUDA graph a run captures or replays (onnxruntime 1.18+; -1: none; 0 is not to be used)
GRAPH_ID = "gpu_graph_id"


class GraphSlot:
    """What one input shape's CUDA graph needs: input and output buffers that stay where they are (a captured graph
    reads and writes fixed addresses), bound once, and the graph's id. On the CPU provider the same buffers run
    without a graph (how the tests check the copying in and out)."""

    def __init__(self, session, feeds: dict, output_names: list[str], device: tuple[str, int], graph_id: int):
        import onnxruntime as ort

        self.graph_id = graph_id
        self.inputs = {n: ort.OrtValue.ortvalue_from_shape_and_type(list(a.shape), a.dtype, *device)
                       for n, a in feeds.items()}
        self.fill(feeds)
        # the output shapes: one run without a graph, onnxruntime allocating the outputs
        probe = session.io_binding()
        for n, v in self.inputs.items():
            probe.bind_ortvalue_input(n, v)
        for n in output_names:
            probe.bind_output(n, *device)
        session.run_with_iobinding(probe, run_options(-1))
        self.outputs = {n: ort.OrtValue.ortvalue_from_shape_and_type(v.shape(), np.dtype(ORT_TYPES[v.data_type()]),
                                                                     *device)
                        for n, v in zip(output_names, probe.get_outputs())}
        self.binding = session.io_binding()
        for n, v in self.inputs.items():
            self.binding.bind_ortvalue_input(n, v)
        for n, v in self.outputs.items():
            self.binding.bind_ortvalue_output(n, v)

    def fill(self, feeds: dict) -> None:
        """Copy the feeds into the input buffers: NumPy from the host, CuPy on the device (then CuPy's stream is
        waited for once: onnxruntime runs on a stream of its own)."""
        on_device = False
        for n, a in feeds.items():
            if array_module(a) is np:
                self.inputs[n].update_inplace(np.ascontiguousarray(a))
            else:
                device_array(self.inputs[n])[...] = a
                on_device = True
        if on_device:
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def results(self, on_device: bool) -> dict:
        """Copies of the outputs (the buffers are overwritten by the next run): CuPy on the device, or NumPy."""
        if on_device:
            return {n: device_array(v).copy() for n, v in self.outputs.items()}
        return {n: np.array(v.numpy()) for n, v in self.outputs.items()}


def run_options(graph_id: int):
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID, str(graph_id))
    return options


class OrtRunner(Runner):
    """One network of an engine dir, run by onnxruntime. `session` is the onnxruntime InferenceSession while active.

    `io_binding`: how a call reaches onnxruntime. None (the default) binds where it pays: CuPy feeds on a GPU
    provider are bound where they lie and the outputs stay there; NumPy feeds go through session.run, the simpler
    path, as fast on the CPU (a binding per call: 1.03x, within the noise, benchmarks/results/io_binding_amd-epyc.md).
    True binds every call (NumPy feeds too: what the tests and bench_io_binding compare bit for bit with
    session.run).

    `cuda_graphs`: on the CUDA provider, capture each input shape's run as a CUDA graph and replay it (onnxruntime's
    enable_cuda_graph, one gpu_graph_id per shape, up to MAX_GRAPHS shapes; the later ones run without a graph), the
    inputs copied into buffers that stay put and the outputs copied out. Off by default: it has not run on a GPU yet.
    On the CPU provider the same fixed buffers run without a graph.

    `graph`: the graph file to load instead of the engine dir's (the same graph, its external data beside it with a
    LoRA merged in: engines/lora.swapped_graphs)."""

    #: input shapes that get a CUDA graph each (the UNet of an edit sees 2 or 3: batch 1, 2, and a blend's)
    MAX_GRAPHS = 8

    def __init__(self, engine_dir: str | Path, network: str, manifest: Manifest, provider: str = "auto",
                 io_binding: bool | None = None, cuda_graphs: bool = False,
                 graph: Path | None = None):
        super().__init__(engine_dir, network, manifest)
        self.graph = graph
        self.requested_provider = provider
        self.io_binding = io_binding
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[tuple, GraphSlot] = {}
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        if self.entry.is_openvino_model:
            raise EngineDirError(f"{self.engine_dir / self.entry.file} is an OpenVINO model (NNCF's int8), which "
                                 f"onnxruntime cannot load: run this engine dir on the provider openvino.")
        wanted = choose_providers(self.requested_provider)
        if wanted[0] != "CPUExecutionProvider":
            preload_cuda_libraries()
        path = self.graph or self.engine_dir / self.entry.file
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(),
                providers=[provider_entry(p, engine_cache_dir(self.manifest.identity(), self.manifest.graphs_key()),
                                          self.entry.precision, self.cuda_graphs) for p in wanted])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EngineDirError(
                f"onnxruntime cannot load {path} ({str(exc).splitlines()[0][:300]}). The graph is damaged or was "
                f"written by an incompatible exporter; re-create the engine dir with `svdedit export ... --force`."
            ) from None
        try:
            self.check_graph(path, *([(a.name, ORT_TYPES.get(a.type, a.type), len(a.shape)) for a in args]
                                     for args in (self.session.get_inputs(), self.session.get_outputs())))
        except EngineDirError:
            self.session = None
            raise
        self.provider = self.session.get_providers()[0]
        log.info("%s: onnxruntime session on %s", self.network, self.provider)
        if self.provider != wanted[0]:
            # onnxruntime-gpu lists providers whose CUDA libraries it cannot load, then silently uses the CPU.
            log.warning("%s: asked for %s but onnxruntime gave %s (its libraries could not be loaded); running on %s.",
                        self.network, wanted[0], self.provider, self.provider)

    def _infer(self, feeds: dict) -> dict:
        """One call. NumPy feeds give NumPy outputs. CuPy feeds (latents kept on the GPU between steps) give CuPy
        outputs on their device, as the TensorRT runner does: on a GPU provider bound where they lie, on the CPU
        provider copied to the host and the outputs back to their device."""
        on_device = [n for n, a in feeds.items() if array_module(a) is not np]
        if on_device and self.provider == "CPUExecutionProvider":
            import cupy

            return {n: cupy.asarray(a) for n, a in self._infer({n: cupy.asnumpy(a) for n, a in feeds.items()}).items()}
        try:
            if self.cuda_graphs:
                key = tuple((n, tuple(a.shape)) for n, a in sorted(feeds.items()))
                if key in self.graphs or len(self.graphs) < self.MAX_GRAPHS:
                    return self._run_graph(key, feeds, on_device=bool(on_device))
            if on_device or self.io_binding:
                return self._run_bound(feeds, on_device=bool(on_device))
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        except Exception as exc:  # onnxruntime's InvalidArgument / Fail / RuntimeException: a graph at odds with its data
            if type(exc).__module__.startswith("onnxruntime"):
                raise EngineDirError(f"{self.network} ({self.engine_dir / self.entry.file}) failed on inputs of shapes "
                                     f"{ {n: tuple(a.shape) for n, a in feeds.items()} }: "
                                     f"{str(exc).splitlines()[0][:300]}") from None
            raise

    def _run_bound(self, feeds: dict, on_device: bool) -> dict:
        """One call through onnxruntime's IO binding: outputs on the feeds' device (CuPy) or copied to the host."""
        binding = self.session.io_binding()
        kept = [self._bind_input(binding, n, a) for n, a in feeds.items()]  # alive until the run is over
        device = next((a.device.id for a in kept if array_module(a) is not np), None)
        for name in self.output_names:
            binding.bind_output(name, *(("cuda", device) if on_device else ("cpu",)))
        self.session.run_with_iobinding(binding)
        if not on_device:
            return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
        return dict(zip(self.output_names, map(device_array, binding.get_outputs())))

    def _run_graph(self, key: tuple, feeds: dict, on_device: bool) -> dict:
        """One call through the fixed buffers of its input shape `key` (GraphSlot): the first call of a shape finds the
        output shapes and makes the buffers; onnxruntime captures the graph on a later run and replays it after."""
        slot = self.graphs.get(key)
        if slot is None:
            device = ("cuda", 0) if self.provider == "CUDAExecutionProvider" else ("cpu", 0)
            slot = self.graphs[key] = GraphSlot(self.session, feeds, self.output_names, device, len(self.graphs) + 1)
        else:
            slot.fill(feeds)
        self.session.run_with_iobinding(slot.binding, run_options(slot.graph_id))
        return slot.results(on_device)

    @staticmethod
    def _bind_input(binding, name: str, a):
        """Bind one input: a NumPy array from host memory, a CuPy array by its device pointer (once the work queued
        on CuPy's stream is done: onnxruntime runs on a stream of its own). Returns the array bound."""
        if array_module(a) is np:
            a = np.asarray(a, order="C")
            binding.bind_cpu_input(name, a)
            return a
        import cupy

        a = cupy.ascontiguousarray(a)
        cupy.cuda.get_current_stream().synchronize()
        binding.bind_input(name, "cuda", a.device.id, a.dtype, list(a.shape), a.data.ptr)
        return a

    def _deactivate(self) -> None:
        self.graphs.clear()
        self.session = None
