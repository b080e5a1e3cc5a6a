"""int8 on OpenVINO two ways, from the same fp32 UNet graph and the same calibration: our QDQ graph (`svdedit quantize`,
static: onnxruntime's quantizer) against NNCF's post-training quantization, the tool OpenVINO users quantize with.

    benchmarks/speed/peer_venvs.sh nncf          # NNCF's own venv (it pulls scipy and scikit-learn; not ours)
    /tmp/nncf/bin/python -m benchmarks.speed.bench_nncf --engine WORK/engine-fp32 --int8 WORK/engine-int8-static \
        --name sd15

Each way is read by OpenVINO and compiled at its default precision on this CPU (bf16 where the CPU has bf16 units),
as `--provider openvino` runs it. The calibration is what `svdedit quantize` (static, its defaults) records: the fp32
engine sampling its first 2 calibration prompts, 10 steps each, every UNet call's inputs, less the last 2. The error is
read on held-out inputs, the 10 steps of a third prompt that no way saw, against the fp32 graph on onnxruntime: the
rms and the largest |difference| of the UNet's output. The time is one UNet call on a held-out input (median of 3
after a warm-up call).

NNCF's ways (OpenVINO backend, nncf.quantize on the graph OpenVINO reads from our ONNX file):
  - NNCF defaults: nncf.quantize(model, data) as its documentation shows it;
  - NNCF transformer: model_type TRANSFORMER, SmoothQuant off, the convolution that reads the latent input kept in
    fp32 (what `svdedit quantize` does with conv_in);
  - NNCF hybrid: optimum-intel's recipe for a diffusion UNet (int8 weight compression of every Conv and MatMul with
    weights, then activations quantized for the other matrix products, model_type TRANSFORMER, SmoothQuant off).

Writes benchmarks/results/nncf_int8_<name>_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

def record(engine: Path, log) -> tuple[list[dict], list[dict]]:
    """(calibration, held-out) UNet inputs: svdedit quantize's calibration (2 prompts x 10 steps, less the last 2
    calls) and a third prompt's 10 steps."""
    from svdedit.export.quantize import QuantizeOptions, record_unet_inputs

    calls = record_unet_inputs(engine, QuantizeOptions(prompts=3, steps=10), log)["unet"]
    return calls[:18], calls[20:]


def errors(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    d = np.concatenate([(o.astype(np.float64) - r).ravel() for r, o in zip(reference, outputs)])
    return {"rms": float(np.sqrt((d * d).mean())), "max_abs": float(np.abs(d).max()),
            "reference_max_abs": float(max(np.abs(r).max() for r in reference))}


def latent_convolutions(model) -> list[str]:
    """The Convolution reading the graph's latent input (conv_in)."""
    sample = model.input("sample").get_node()
    return [t.get_node().get_friendly_name() for t in sample.output(0).get_target_inputs()
            if t.get_node().get_type_name() == "Convolution"]


def nncf_ways(path: Path, calibration: list[dict]) -> dict:
    """{label: (callable returning the quantized openvino.Model, what it does)}"""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    from svdedit.export.quantize import nncf_hybrid

    core = ov.Core()
    data = nncf.Dataset(calibration)
    n = len(calibration)
    no_smooth = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1,
                                                                                                 matmul=-1))

    def defaults():
        return nncf.quantize(core.read_model(path), data, subset_size=n)

    def transformer():
        model = core.read_model(path)
        return nncf.quantize(model, data, subset_size=n, model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=nncf.IgnoredScope(names=latent_convolutions(model)),
                             advanced_parameters=no_smooth)

    def hybrid():  # what `svdedit quantize --mode nncf` writes
        return nncf_hybrid(path, calibration)

    return {"NNCF defaults": defaults, "NNCF transformer, conv_in fp32": transformer,
            "NNCF hybrid (optimum-intel's UNet recipe)": hybrid}


def measure(model, held_out: list[dict], reference: list[np.ndarray], repeats: int) -> dict:
    import openvino as ov

    t = time.perf_counter()
    compiled = ov.Core().compile_model(model, "CPU")
    compile_s = time.perf_counter() - t
    outputs = [compiled(f)[0] for f in held_out]
    compiled(held_out[0])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        compiled(held_out[0])
        times.append(time.perf_counter() - t)
    return {"compile_s": round(compile_s, 2), "call_s": statistics.median(times),
            "call_runs_s": [round(x, 3) for x in times],
            "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")), **errors(reference, outputs)}


def markdown(res: dict) -> str:
    rows, base = res["rows"], res["rows"][0]
    lines = [f"# int8 on OpenVINO two ways: {res['name']}, {res['machine']['cpu']}, {res['machine']['cores']} cores", "",
             f"Command: `{res['command']}`. OpenVINO {res['versions']['openvino']}, NNCF {res['versions']['nncf']}; "
             f"CPU flags: {', '.join(res['machine']['cpu_flags'])}. Error: the UNet's output on {res['held_out']} "
             f"held-out inputs against the fp32 graph on onnxruntime (largest output {base['reference_max_abs']:.3g}). "
             f"Time: one UNet call on OpenVINO at its default precision, median of {res['repeats']}.", "",
             "| way | quantize s | rms error | max error | call s | speed vs fp32 graph |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r.get('quantize_s', '-')} | {r['rms']:.4f} | {r['max_abs']:.3f} "
                     f"| {r['call_s']:.3f} | {base['call_s'] / r['call_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="an fp32 engine dir with a whole UNet (unet.onnx)")
    ap.add_argument("--int8", type=Path, required=True, help="its static int8 engine dir (svdedit quantize, defaults)")
    ap.add_argument("--name", default="shapes", help="the result files' name: nncf_int8_NAME_cpu.{json,md}")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        sys.exit(f"bench_nncf runs in NNCF's venv (benchmarks/speed/peer_venvs.sh nncf): {exc}")
    import logging

    import onnxruntime as ort

    from benchmarks.machine import describe, write_result

    nncf.set_log_level(logging.WARNING)  # its INFO lists every node it leaves unquantized

    def log(message):
        print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)

    calibration, held_out = record(args.engine, log)
    fp32 = args.engine / "unet.onnx"
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    reference = [session.run(None, f)[0].astype(np.float64) for f in held_out]
    del session
    core = ov.Core()
    rows = []
    for label, path in (("fp32 graph (no int8)", fp32), ("QDQ (svdedit quantize, static)", args.int8 / "unet.onnx")):
        log(label)
        rows.append({"label": label, **measure(core.read_model(path), held_out, reference, args.repeats)})
    for label, make in nncf_ways(fp32, calibration).items():
        log(label)
        t = time.perf_counter()
        model = make()
        quantize_s = round(time.perf_counter() - t, 1)
        rows.append({"label": label, "quantize_s": quantize_s, **measure(model, held_out, reference, args.repeats)})
        del model
    quantization = json.loads((args.int8 / "manifest.json").read_text()).get("quantization", {})
    rows[1]["quantize_s"] = quantization.get("seconds", "-")
    res = {"benchmark": "bench_nncf", "name": args.name,
           "command": "python -m benchmarks.speed.bench_nncf " + " ".join(sys.argv[1:] if argv is None else argv),
           "held_out": len(held_out), "calibration": len(calibration), "repeats": args.repeats, "rows": rows,
           "versions": {"openvino": ov.__version__, "nncf": nncf.__version__, "onnxruntime": ort.__version__},
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "machine": describe()}
    write_result(f"nncf_int8_{args.name}_cpu", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
