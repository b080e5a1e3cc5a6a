"""`svdedit quantize`: an engine dir -> the same engine dir with an int8 UNet (onnxruntime's quantization tools, or
NNCF's for OpenVINO).

The story, top to bottom (``quantize_engine``):

1. read the source engine dir (hashes verified); its UNet is the whole ``unet`` or the three parts of
   --step-cache, and each is quantized on its own;
2. static mode: calibrate on what the model itself computes. The fp32 engine samples a few prompts
   (guided, the runtime's own DDIM), and every UNet call's inputs are recorded; onnxruntime's MinMax
   calibrator reads them (its augmented graph returns each tensor's min and max, reduced in the graph, so
   its memory is one call's activations, not all of them). Dynamic mode needs no calibration: activations
   are quantized per call at run time;
3. quantize: static = QDQ (QuantizeLinear/DequantizeLinear pairs around Conv and MatMul; uint8
   activations, int8 weights per channel: the u8s8 path of onnxruntime's x86 kernels, VNNI where the CPU
   has it); dynamic = MatMul/Gemm weights int8, activations quantized on the fly; tensorrt = the QDQ of
   static as TensorRT's explicit quantization reads it (int8 activations and weights, symmetric so every
   zero point is 0, biases left fp32), which `svdedit build` takes. Other ops stay fp32. nncf = NNCF's hybrid
   int8, optimum-intel's recipe for diffusion UNets: every Conv and MatMul weight int8 (weight compression),
   activations quantized only at the inputs of the weight-free MatMuls (attention), written as an OpenVINO
   model (unet.xml + unet.bin) that only the provider openvino runs: NNCF's ONNX backend writes per-channel
   DequantizeLinear nodes on convolution weights that onnxruntime refuses;
4. parity: the int8 graph (on onnxruntime's CPU provider; an OpenVINO model on OpenVINO at fp32) against the
   fp32 graph on recorded inputs held out from the calibration,
   written into the manifest (there is no torch reference here: the export's own parity still holds for
   the fp32 graph the int8 one came from);
5. write OUT_DIR atomically: the int8 UNet graphs, the other files copied, the manifest with the
   networks' new files, hashes, precision "int8" and a ``quantization`` record. The engine's identity is
   the model's, so attribute files learned on the fp32 engine load on the int8 one.

Torch-free (onnx and onnxruntime; NNCF and OpenVINO for nncf). TensorRT builds a QDQ graph strongly typed, its int8 scales read from the
Q/DQ nodes (no BuilderFlag.INT8: TensorRT 11 removed it); it accepts only symmetric int8 Q/DQ, hence the tensorrt
mode. Never built on a real TensorRT here (no machine had one), see README "TensorRT".
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from svdedit.runtime.engines.contract import MANIFEST_FILE, OPENVINO_MODEL_SUFFIX
from svdedit.runtime.engines.manifest import Manifest, read_manifest, write_manifest
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.files import atomic_dir, sha256_file

MODES = ("static", "dynamic", "tensorrt", "nncf")
#: the modes calibrated on recorded UNet inputs (static ranges); dynamic computes each call's ranges
CALIBRATED = ("static", "tensorrt", "nncf")
#: NNCF's hybrid int8 (optimum-intel's UNet recipe) against our static QDQ, held-out rms error against fp32 on
#: OpenVINO (benchmarks/speed/bench_nncf.py, results/nncf_int8_*_cpu.md): embedded model 0.0106 against 0.0325;
#: SD 1.5 shape 0.0066 against 0.0294, and its UNet call 1.31x faster (1.92 s against 2.51 s, bf16)
NNCF_INSTALL_HINT = "the nncf mode needs NNCF and OpenVINO: pip install 'svdedit[nncf]'."
#: what static QDQ quantizes: the convolutions and matrix products (nearly all of a UNet's FLOPs); norms,
#: softmax, the fused attention and the elementwise ops stay fp32. The convolution that reads the graph's latent
#: input (conv_in) stays fp32 too: one MinMax range cannot cover both pure noise and a clean latent (embedded
#: model, against fp32 on held-out steps: rms error 0.064 with it quantized, 0.047 without)
STATIC_OPS = ["Conv", "MatMul"]
#: dynamic quantization computes each call's activation range, so conv_in is fine there (rms 0.031 with Conv;
#: MatMul and Gemm alone 0.0045, but then the convolutions, most of the weights, stay fp32)
DYNAMIC_OPS = ["MatMul", "Gemm", "Conv"]
#: calibration prompts: varied, ordinary captions (static mode samples each once, from its own seed)
CALIBRATION_PROMPTS = [
    "a photograph of a red house by a lake", "a small blue square on the left", "a portrait of a smiling woman",
    "a large green circle in the middle", "a city street at night, rain", "a bowl of fruit on a wooden table",
    "a dog running on the beach", "a mountain landscape at sunset",
]


@dataclass(frozen=True)
class QuantizeOptions:
    mode: str = "static"
    prompts: int = 2              # calibration prompts (static)
    steps: int = 10               # DDIM steps sampled per prompt; every step's UNet call is recorded
    size: int | None = None       # image side of the calibration samples (default: the model's own)
    guidance: float = 3.0
    force: bool = False

    def check(self, manifest: Manifest) -> "QuantizeOptions":
        if self.mode not in MODES:
            raise SvdeditError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}.")
        if not 1 <= self.prompts <= len(CALIBRATION_PROMPTS):
            raise SvdeditError(f"--prompts {self.prompts}: give 1 to {len(CALIBRATION_PROMPTS)}.")
        if not 2 <= self.steps <= 200:
            raise SvdeditError(f"--steps {self.steps}: give 2 to 200.")
        size = self.size or manifest.image_size.default
        s = manifest.image_size
        if not (s.min <= size <= s.max and size % s.multiple_of == 0):
            raise SvdeditError(f"--size {size}: this model takes {s.min} to {s.max} pixels in multiples of "
                               f"{s.multiple_of}.")
        return self


def unet_networks(manifest: Manifest) -> list[str]:
    return [n for n in manifest.networks if n.startswith("unet")]


# --------------------------------------------------------------------------------------------------
# 2. Calibration: the UNet's inputs as the model samples
# --------------------------------------------------------------------------------------------------
def record_unet_inputs(engine_dir: Path, options: QuantizeOptions, log) -> dict[str, list[dict]]:
    """{network: [feeds of each call]} of every UNet network while the fp32 engine samples the calibration
    prompts (interval 1: every part runs at every step)."""
    from svdedit.runtime.pipeline import Intervals, Pipeline

    recorded: dict[str, list[dict]] = {}
    with Pipeline(engine_dir, "cpu", intervals=Intervals()) as pipe:
        for name in unet_networks(pipe.manifest):
            runner = pipe.engines[name]
            recorded[name] = []

            def recording(runner=runner, calls=recorded[name], **feeds):
                calls.append({k: np.array(v, copy=True) for k, v in feeds.items()})
                return runner(**feeds)
            pipe.engines[name] = recording
        for i, prompt in enumerate(CALIBRATION_PROMPTS[:options.prompts]):
            log(f"  calibration sample {i + 1}/{options.prompts}: {prompt!r}, {options.steps} steps")
            x = pipe.noise(seed=i, size=options.size)
            pipe.denoise(x, pipe.encode_prompt([prompt]), options.steps, options.guidance)
    return recorded


class _Feeds:
    """onnxruntime's CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some calibrators ask for it; ours is read once
        pass


# --------------------------------------------------------------------------------------------------
# 3. + 4. One network
# --------------------------------------------------------------------------------------------------
def quantize_network(src: Path, dst: Path, mode: str, calibration: list[dict] | None) -> dict:
    """Quantize the graph `src` into `dst` (with its .data file where the graph is over 2 GB; nncf: an OpenVINO model,
    dst.xml and its .bin)."""
    import logging

    import onnxruntime as ort

    large = src.with_name(src.name + ".data").exists()
    t0 = time.perf_counter()
    ort.set_default_logger_severity(3)        # the calibrator's sessions list every initializer they drop
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # the quantizer warns on the root logger for every 1-D weight
    try:
        if mode == "nncf":
            _quantize_nncf(src, dst, calibration)
        else:
            _quantize(src, dst, mode, calibration, large)
    except SvdeditError:
        raise
    except Exception as exc:  # noqa: BLE001  the quantizer, on a graph its version cannot read
        cause = f"{type(exc).__name__}: {str(exc)[:200]}"
        for leftover in (dst, dst.with_suffix(".bin"), dst.with_name(dst.name + ".data")):
            leftover.unlink(missing_ok=True)
        if mode == "nncf":
            nncf, ov = import_nncf()
            raise SvdeditError(f"nncf {nncf.__version__} (OpenVINO {ov.__version__.split('-')[0]}) could not quantize "
                               f"{src.name} ({cause}). Try the newest: pip install -U nncf openvino; or quantize with "
                               f"--mode static, which runs on every provider.") from exc
        raise SvdeditError(f"onnxruntime {ort.__version__} could not quantize {src.name} ({cause}). Its 1.31 quantizer "
                           f"fails on the graphs today's exporter writes and 1.32 works: pip install -U "
                           f"'onnxruntime>=1.32' (onnxruntime-gpu has no 1.32 yet: quantize in a CPU environment; the "
                           f"int8 engine dir it writes runs anywhere).") from exc
    finally:
        root.setLevel(level)
    return {"seconds": round(time.perf_counter() - t0, 1)}


def _quantize(src: Path, dst: Path, mode: str, calibration: list[dict] | None, large: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=DYNAMIC_OPS,
                         use_external_data_format=large, extra_options={"MatMulConstBOnly": True})
        return
    # tensorrt: what TensorRT's explicit quantization reads (int8 Q/DQ, symmetric: zero points 0; biases left fp32);
    # static: onnxruntime's fastest x86 path (uint8 activations, asymmetric)
    trt = mode == "tensorrt"
    quantize_static(src, dst, _Feeds(calibration), quant_format=QuantFormat.QDQ, op_types_to_quantize=STATIC_OPS,
                    nodes_to_exclude=_reading_graph_inputs(src), per_channel=True,
                    activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False} if trt else {})


def import_nncf():
    """(nncf, openvino), or a SvdeditError that says how to install them."""
    try:
        import nncf  # noqa: PLC0415  (import guard: NNCF is optional)
        import openvino
    except ImportError:
        raise SvdeditError(NNCF_INSTALL_HINT) from None
    return nncf, openvino


def weighted_ops(model) -> list[str]:
    """The Convolution and MatMul nodes of an openvino.Model with a constant weight (optimum-intel's
    _collect_ops_with_weights): the ops whose weights NNCF's hybrid mode compresses and whose activations it leaves."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() in ("MatMul", "Convolution") and any(
                op.input_value(i).get_node().get_type_name() == "Constant" for i in range(2)):
            names.append(op.get_friendly_name())
    return names


def nncf_hybrid(src: Path, calibration: list[dict]):
    """NNCF's hybrid int8 of the ONNX graph `src` (optimum-intel's recipe for diffusion UNets), as an openvino.Model:
    every Conv and MatMul weight compressed to int8 (asymmetric, per output channel), then nncf.quantize with the
    transformer preset on the calibration feeds, every op with a weight ignored (so only the weight-free MatMuls of
    attention get quantized activations) and SmoothQuant off."""
    import logging

    from svdedit.runtime.engines.base import stdout_to_stderr

    nncf, ov = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf.set_log_level(logging.ERROR)
    with stdout_to_stderr():  # NNCF's progress bars
        model = ov.Core().read_model(str(src))
        weighted = weighted_ops(model)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                             model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=nncf.IgnoredScope(names=weighted, validate=False),
                             advanced_parameters=AdvancedQuantizationParameters(
                                 smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)))


def _quantize_nncf(src: Path, dst: Path, calibration: list[dict]) -> None:
    """nncf_hybrid of `src`, saved as the OpenVINO model `dst` (.xml, and its .bin)."""
    _, ov = import_nncf()
    ov.save_model(nncf_hybrid(src, calibration), str(dst), compress_to_fp16=False)  # what is left fp32 stays fp32


def _reading_graph_inputs(path: Path) -> list[str]:
    """The names of the Conv nodes that read a graph input directly (a UNet's conv_in)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def _run(path: Path) -> Callable[[dict], list[np.ndarray]]:
    """feeds -> the outputs in the graph's order: onnxruntime's CPU provider for an ONNX graph, OpenVINO at fp32 for an
    OpenVINO model."""
    if path.suffix == OPENVINO_MODEL_SUFFIX:
        _, ov = import_nncf()
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda feeds: [request.infer(feeds)[o] for o in compiled.outputs]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def parity(src: Path, dst: Path, feeds: list[dict]) -> dict:
    """The int8 graph against the fp32 one on held-out recorded inputs: the largest |difference| of any output,
    and of the largest output value (the error's scale)."""
    a, b = _run(src), _run(dst)
    max_abs = ref_max = 0.0
    sq = n = 0.0
    for f in feeds:
        for ra, rb in zip(a(f), b(f)):
            d = np.abs(ra.astype(np.float64) - rb)
            max_abs, ref_max = max(max_abs, float(d.max())), max(ref_max, float(np.abs(ra).max()))
            sq, n = sq + float((d * d).sum()), n + d.size
    return {"max_abs": max_abs, "reference_max_abs": ref_max, "rms": (sq / max(n, 1)) ** 0.5, "inputs": len(feeds),
            "against": "the fp32 graph it was quantized from (onnxruntime CPU)",
            "run_on": "OpenVINO CPU, fp32" if dst.suffix == OPENVINO_MODEL_SUFFIX else "onnxruntime CPU"}


# --------------------------------------------------------------------------------------------------
# 5. The whole step
# --------------------------------------------------------------------------------------------------
#: what each mode does, as the manifest's quantization record says it
RECORDS = {
    "static": {"ops": STATIC_OPS, "activations": "uint8, per tensor, MinMax", "weights": "int8, per channel",
               "biases": "int32", "kept_fp32": "Conv nodes reading a graph input (conv_in)", "runs_on": "any provider"},
    "dynamic": {"ops": DYNAMIC_OPS, "activations": "uint8, per call (dynamic)", "weights": "int8, per tensor",
                "biases": "fp32", "kept_fp32": None, "runs_on": "any provider"},
    "tensorrt": {"ops": STATIC_OPS, "activations": "int8 symmetric (zero point 0), per tensor, MinMax",
                 "weights": "int8 symmetric, per channel", "biases": "fp32",
                 "kept_fp32": "Conv nodes reading a graph input (conv_in)", "runs_on": "any provider"},
    "nncf": {"ops": ["Convolution", "MatMul"],
             "activations": "int8 (NNCF's transformer preset), only at the inputs of MatMuls without a weight (attention)",
             "weights": "int8 asymmetric, per output channel (NNCF weight compression)", "biases": "fp32",
             "kept_fp32": "the activations into every Conv and MatMul with a weight (their weights are int8)",
             "runs_on": "the provider openvino only (an OpenVINO model)"},
}


def quantize_engine(engine_dir: str | Path, out_dir: str | Path, options: QuantizeOptions = QuantizeOptions(),
                    log: Callable[[str], None] = lambda message: None) -> Manifest:
    from svdedit.runtime.engines.names import resolve_engine

    engine_dir, out_dir = resolve_engine(engine_dir), Path(out_dir)
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise SvdeditError("svdedit quantize needs onnxruntime and onnx (pip install onnx).") from None
    manifest = read_manifest(engine_dir, verify="all")
    options = options.check(manifest)
    if options.mode == "nncf":
        import_nncf()
    if any(manifest.networks[n].precision != "fp32" for n in unet_networks(manifest)):
        raise SvdeditError(f"{engine_dir}'s UNet is {manifest.networks[unet_networks(manifest)[0]].precision}; "
                           f"quantize an fp32 engine dir (svdedit export MODEL -o DIR --precision fp32).")
    if out_dir.resolve() == engine_dir.resolve():
        raise SvdeditError("-o is the engine dir itself; write the int8 engine dir to another folder.")
    if out_dir.exists() and any(out_dir.iterdir()) and not options.force:
        raise SvdeditError(f"{out_dir} already exists and is not empty; pass --force to replace it, or choose another -o.")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise SvdeditError(f"{out_dir} holds files that are not an engine dir; svdedit will not overwrite them, not "
                           f"even with --force.")
    t_start = time.perf_counter()
    names = unet_networks(manifest)
    calibrated = options.mode in CALIBRATED
    if calibrated:
        log(f"recording the UNet's inputs: {options.prompts} prompt(s) x {options.steps} steps at "
            f"{options.size or manifest.image_size.default} px")
    # the held-out inputs of the parity check are recorded in both modes (dynamic needs no calibration: one short
    # sample is enough for its parity check)
    recorded = record_unet_inputs(engine_dir, options if calibrated else
                                  dataclasses.replace(options, prompts=1, steps=min(options.steps, 4)), log)
    raw = manifest.to_dict()
    with atomic_dir(out_dir, replace=out_dir.exists()) as work:
        for rel, _ in manifest.files():
            if not any(rel in (manifest.networks[n].file, manifest.networks[n].external_data,
                               manifest.networks[n].lora_weights) for n in names):
                shutil.copy2(engine_dir / rel, work / rel)
        records = {}
        for name in names:
            net = manifest.networks[name]
            calls = recorded[name]
            held_out = calls[-2:] if len(calls) > 2 else calls   # the last steps of the last prompt
            calibration = calls[:-2] if len(calls) > 2 else calls
            log(f"  {name}: {options.mode} int8 ({len(calibration)} calibration calls)" if calibrated
                else f"  {name}: dynamic int8")
            src = engine_dir / net.file
            dst = work / (Path(net.file).stem + OPENVINO_MODEL_SUFFIX if options.mode == "nncf" else net.file)
            took = quantize_network(src, dst, options.mode, calibration if calibrated else None)
            for stray in work.glob("*-inferred.onnx"):  # the quantizer's scratch files
                stray.unlink()
            p = parity(src, dst, held_out)
            log(f"  {name}: quantized in {took['seconds']} s; against fp32 max|diff| {p['max_abs']:.3g} "
                f"(outputs up to {p['reference_max_abs']:.3g}), rms {p['rms']:.3g}")
            entry = raw["networks"][name]
            entry.update(file=dst.name, sha256=sha256_file(dst), precision="int8")
            data = dst.with_suffix(".bin") if options.mode == "nncf" else dst.with_name(dst.name + ".data")
            for key in ("external_data", "external_data_sha256", "lora_weights", "lora_weights_sha256", "lora_targets"):
                entry.pop(key, None)  # the int8 graph holds its weights itself (and takes no run-time LoRA)
            if data.exists():
                entry.update(external_data=data.name, external_data_sha256=sha256_file(data))
            records[name] = {"parity_int8": p, "seconds": took["seconds"]}
        raw["quantization"] = {
            "mode": options.mode, "tool": _tool(options.mode),
            **RECORDS[options.mode],
            "calibration": {"prompts": CALIBRATION_PROMPTS[:options.prompts], "steps": options.steps,
                            "size": options.size or manifest.image_size.default, "guidance": options.guidance,
                            "calls": {n: len(recorded[n]) for n in names}} if calibrated else None,
            "networks": records, "from": {"cache_key": manifest.cache_key},
            "seconds": round(time.perf_counter() - t_start, 1),
        }
        raw.pop("tensorrt", None)  # plans of the fp32 graphs do not belong to the int8 ones
        out = Manifest.from_dict(raw)
        write_manifest(work, out)
    log(f"wrote {out_dir} in {raw['quantization']['seconds']} s")
    return read_manifest(out_dir, verify="all")


def _tool(mode: str) -> str:
    import onnxruntime

    if mode == "nncf":
        nncf, ov = import_nncf()
        return f"nncf {nncf.__version__} (OpenVINO {ov.__version__.split('-')[0]})"
    return f"onnxruntime.quantization {onnxruntime.__version__}"
