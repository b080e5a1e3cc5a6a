"""One guided UNet call on the SD 1.5 shape under onnxruntime and under OpenVINO, both ways OpenVINO can run our
engine dirs: the `openvino` runtime (svdedit's OpenvinoRunner) and onnxruntime's OpenVINO plugin provider
(onnxruntime-ep-openvino). What decided which way svdedit takes (issue 30), and what bf16 and int8 cost.

    python -m benchmarks.speed.bench_openvino_unet --work /tmp/sd15 [--ep-python /tmp/ep-openvino/bin/python]

Engine dirs under --work: bench_speed.py's (engine-fp32, engine-int8-static; made there). --ep-python: a venv with
onnxruntime and onnxruntime-ep-openvino (benchmarks/speed/peer_venvs.sh ep-openvino); without it, the plugin's
rows are not run. Every case in its own process (its peak RSS is its own): it opens the UNet with an empty
compiled-model cache (the first open: OpenVINO compiles), closes it and opens it again (the second open: from
the cache), then one warm-up call and the median of --repeats calls, batch 2 (one guided step; --batch 1: one
inversion step), 64x64 latent.
Every output is compared with the first row's (onnxruntime's fp32) on the same inputs (relative L2).
Two more rows tell what the graph costs: optimum-intel's own export of the same pipeline (WORK/optimum-intel, made by
bench_speed.py) compiled the same way, and the nncf int8 engine dir; each OpenVINO row lists the layer types of its
compiled model (GroupNormalization fused or not, ...).
Writes benchmarks/results/openvino_unet_sd15_cpu.{json,md} (--only and --name: a subset, under another name).
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
#: (label, way, engine dir under --work, precision)
CASES = [
    ("onnxruntime CPU, fp32", "svdedit:cpu", "engine-fp32", None),
    ("onnxruntime CPU, int8 static", "svdedit:cpu", "engine-int8-static", None),
    ("OpenVINO runtime (svdedit), fp32", "svdedit:openvino", "engine-fp32", "fp32"),
    ("OpenVINO runtime (svdedit), bf16", "svdedit:openvino", "engine-fp32", "bf16"),
    ("OpenVINO runtime (svdedit), int8 static + bf16", "svdedit:openvino", "engine-int8-static", "bf16"),
    ("onnxruntime + OpenVINO plugin EP, fp32", "ep", "engine-fp32", "fp32"),
    ("onnxruntime + OpenVINO plugin EP, bf16", "ep", "engine-fp32", "bf16"),
    ("onnxruntime + OpenVINO plugin EP, int8 static + bf16", "ep", "engine-int8-static", "bf16"),
    ("OpenVINO runtime, optimum-intel's export of the same model, fp32", "ir", "optimum-intel", "fp32"),
    ("OpenVINO runtime, optimum-intel's export of the same model, bf16", "ir", "optimum-intel", "bf16"),
    ("OpenVINO runtime (svdedit), nncf int8 + bf16", "svdedit:openvino", "engine-int8-nncf", "bf16"),
]
#: the layer types of OpenVINO's compiled model that tell two graphs of one model apart (runtime_layers)
LAYER_TYPES = ("GroupNormalization", "MVN", "ScaledDotProductAttention", "Eltwise", "Reshape", "Transpose", "Convolution",
               "FullyConnected", "MatMul", "Subgraph")


def runtime_layers(compiled) -> dict:
    """{layer type: count} of OpenVINO's compiled model (what its CPU plugin runs, after its own fusions)."""
    from collections import Counter

    types = Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())
    return {t: types[t] for t in LAYER_TYPES if types[t]}


def inputs(batch: int = 2):
    import numpy as np

    rng = np.random.default_rng(0)
    return {"sample": rng.standard_normal((batch, 4, 64, 64), dtype=np.float32),
            "timestep": np.full((batch,), 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, 768), dtype=np.float32)}


def timed_calls(call, repeats: int) -> tuple[list[float], object]:
    out = call()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times, out


def child_svdedit(engine: str, provider: str, precision: str | None, repeats: int, out_npy: str, batch: int) -> dict:
    """svdedit's runner of `provider` (cpu: onnxruntime; openvino: OpenvinoRunner), its UNet only."""
    import os

    import numpy as np

    os.environ["XDG_CACHE_HOME"] = cache = tempfile.mkdtemp(prefix="ov-cache-")  # the first open compiles
    atexit.register(shutil.rmtree, cache, ignore_errors=True)  # a few GB per row: not left in /tmp
    from svdedit.runtime.engines import open_engines, read_manifest

    manifest = read_manifest(engine)
    opens = []
    for _ in range(2):
        runner = open_engines(engine, manifest, provider, precision)["unet"]
        t = time.perf_counter()
        runner.activate()
        opens.append(time.perf_counter() - t)
        if len(opens) == 1:
            runner.deactivate()
    feeds = inputs(batch)
    times, out = timed_calls(lambda: runner(**feeds)["model_output"], repeats)
    np.save(out_npy, out)
    layers = runtime_layers(runner.compiled) if provider == "openvino" else None
    return {"provider": runner.provider, "runtime_layers": layers, "first_open_s": opens[0], "second_open_s": opens[1],
            "seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child_ir(folder: str, precision: str, repeats: int, out_npy: str, batch: int) -> dict:
    """optimum-intel's own export of the same pipeline (WORK/optimum-intel, made by bench_speed.py), its UNet IR
    compiled by the openvino runtime as svdedit compiles ours: what the graph alone costs (its timestep is int64, its
    output out_sample)."""
    import os

    import numpy as np
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
    opens, core = [], ov.Core()
    cache = tempfile.mkdtemp(prefix="ov-ir-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    for _ in range(2):
        t = time.perf_counter()
        compiled = core.compile_model(os.path.join(folder, "unet", "openvino_model.xml"), "CPU",
                                      {**config, "CACHE_DIR": cache})
        opens.append(time.perf_counter() - t)
    request = compiled.create_infer_request()
    feeds = dict(inputs(batch), timestep=np.full((batch,), 500, np.int64))
    times, out = timed_calls(lambda: request.infer(feeds)[compiled.output(0)].copy(), repeats)
    np.save(out_npy, out)
    return {"provider": f"OpenVINO-CPU-{precision} (optimum-intel's IR)", "runtime_layers": runtime_layers(compiled),
            "first_open_s": opens[0], "second_open_s": opens[1],
            "seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child_ep(engine: str, precision: str, repeats: int, out_npy: str, batch: int) -> dict:
    """onnxruntime with the OpenVINO plugin provider on the engine dir's unet.onnx (no svdedit: its own venv).
    Precision through the plugin's load_config (INFERENCE_PRECISION_HINT); its model cache in a fresh folder."""
    import numpy as np
    import onnxruntime as ort
    import onnxruntime_ep_openvino as plugin

    ort.register_execution_provider_library("openvino_ep", plugin.get_library_path())
    device = [d for d in ort.get_ep_devices() if d.ep_name == plugin.get_ep_name()
              and d.ep_metadata.get("ov_device") == "CPU"][0]
    cache = tempfile.mkdtemp(prefix="ep-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    options = {"load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}}),
               "cache_dir": cache}
    opens = []
    for _ in range(2):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_provider_for_devices([device], options)
        t = time.perf_counter()
        session = ort.InferenceSession(str(Path(engine) / "unet.onnx"), so)
        opens.append(time.perf_counter() - t)
    feeds = inputs(batch)
    times, out = timed_calls(lambda: session.run(["model_output"], feeds)[0], repeats)
    np.save(out_npy, out)
    return {"provider": session.get_providers()[0], "first_open_s": opens[0], "second_open_s": opens[1],
            "seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "versions": {"onnxruntime": ort.__version__}}


def markdown(res: dict) -> str:
    rows = res["rows"]
    ref = rows[0]["label"]
    batch = res.get("batch", 2)
    step = "one guided step" if batch == 2 else "one inversion step" if batch == 1 else f"batch {batch}"
    lines = [f"# One UNet call ({step}), onnxruntime and OpenVINO: SD 1.5 shape, {res['device_label']}", "",
             f"Command: `{res['command']}`. Batch {batch}, 64x64 latent (512 px), random weights; each row "
             f"in its own process: open with an empty cache, close, open again, a warm-up call, then the median of "
             f"{res['repeats']} calls. CPU flags: {', '.join(res['machine'].get('cpu_flags', []))}.", "",
             f"| way | call s | calls, min-max s | vs {ref} | rel. L2 vs {ref} | first open s | "
             "second open s | peak RSS GiB | OpenVINO's compiled layers |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']} | not run: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['label']} | {r['seconds_median']:.2f} | {min(r['seconds_runs']):.2f}-"
                     f"{max(r['seconds_runs']):.2f} | {r['speedup']:.2f}x | {r['rel_l2']:.4f} | "
                     f"{r['first_open_s']:.2f} | {r['second_open_s']:.2f} | {r['peak_rss_gib']:.2f} | "
                     f"{', '.join(f'{k} {v}' for k, v in (r.get('runtime_layers') or {}).items()) or '-'} |")
    lines += ["", "The first open compiles (OpenVINO) or optimises (onnxruntime) the graph; the second reads OpenVINO's "
              "compiled model from the cache (svdedit: the per-user cache; the plugin: its cache_dir). The plugin "
              "compiles on the first call as well, which its open time does not show."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2, help="the UNet's batch (2: one guided step; 1: one inversion step)")
    ap.add_argument("--ep-python", type=Path, default=None, help="a Python with onnxruntime-ep-openvino")
    ap.add_argument("--only", help="labels of CASES to run, separated by semicolons (the labels hold commas; default: "
                                   "all); the first is the reference")
    ap.add_argument("--name", default="openvino_unet_sd15_cpu",
                    help="the result files' name under benchmarks/results/ (another name for a subset of rows)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # way engine precision out.npy
    args = ap.parse_args(argv)
    if args.child:
        way, engine, precision, out_npy = args.child
        precision = None if precision == "-" else precision
        result = (child_ep(engine, precision, args.repeats, out_npy, args.batch) if way == "ep" else
                  child_ir(engine, precision, args.repeats, out_npy, args.batch) if way == "ir" else
                  child_svdedit(engine, way.split(":")[1], precision, args.repeats, out_npy, args.batch))
        print(json.dumps(result))
        return 0

    import numpy as np

    from benchmarks.machine import describe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [c for c in CASES if not args.only or c[0] in args.only.split(";")]
        for i, (label, way, engine, precision) in enumerate(cases):
            python = args.ep_python if way == "ep" else Path(sys.executable)
            if python is None:
                rows.append({"label": label, "skipped": "no --ep-python (benchmarks/speed/peer_venvs.sh ep-openvino)"})
                continue
            out_npy = f"{tmp}/{i}.npy"
            proc = subprocess.run([str(python), "-m", "benchmarks.speed.bench_openvino_unet", "--repeats",
                                   str(args.repeats), "--batch", str(args.batch), "--child", way,
                                   str(args.work / engine), precision or "-", out_npy],
                                  cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"label": label, "skipped": proc.stderr.strip().splitlines()[-1][:200]})
                print(f"{label}: failed: {rows[-1]['skipped']}", file=sys.stderr)
                continue
            rows.append({"label": label, "way": way, "engine": engine, "precision": precision,
                         **json.loads(proc.stdout.strip().splitlines()[-1]), "output": np.load(out_npy)})
            print(f"{label}: {rows[-1]['seconds_median']:.2f} s", file=sys.stderr)
    ref_seconds, ref_out = rows[0]["seconds_median"], rows[0]["output"]
    for r in rows:
        if "output" in r:
            r["speedup"] = ref_seconds / r["seconds_median"]
            r["rel_l2"] = float(np.linalg.norm(r.pop("output") - ref_out) / np.linalg.norm(ref_out))
    machine = describe()
    import openvino

    res = {"benchmark": "bench_openvino_unet",
           "command": "python -m benchmarks.speed.bench_openvino_unet " + " ".join(sys.argv[1:]),
           "model": f"SD 1.5 shape (random weights), batch {args.batch}, 64x64 latent", "machine": machine,
           "device_label": f"{machine['cpu']}, {machine['cores']} cores", "repeats": args.repeats, "batch": args.batch,
           "versions": {"openvino": openvino.__version__.split("-")[0]}, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
