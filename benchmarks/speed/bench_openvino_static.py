"""Does compiling the UNet for static shapes make OpenVINO faster? (issue 30: a lead from a noisy probe on the Intel
Xeon, where static looked ~10% faster at batch 2.) The OpenVINO runner compiles each network once with dynamic
shapes; optimum-intel can reshape its models to static ones first. Here one process compiles the engine dir's UNet
both ways, with the runner's own compile options at --precision, and the two take turns call by call (the order
reversed every other round: this machine's speed drifts by more than the difference asked about).

    python -m benchmarks.speed.bench_openvino_static --engine /work/sd15/engine [--precision fp32] [--batch 2]
        [--rounds 8]

The engine dir is one with a whole UNet (export_sd15_shape --work DIR writes DIR/engine). Reports each way's compile
time, its median call, the median of the per-round ratios (dynamic / static: above 1 means static is faster) and the
largest difference between their outputs. Writes benchmarks/results/openvino_static_<cpu>_<precision>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, device_slug, turns, write_result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True, type=Path, help="an engine dir with a whole UNet (unet.onnx)")
    ap.add_argument("--precision", default=None, help="fp32 or bf16 (default: the runner's for this CPU)")
    ap.add_argument("--batch", type=int, default=2, help="the UNet's batch (2: one guided step)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--name", help="the result files' stem")
    args = ap.parse_args(argv)
    import openvino as ov

    from svdedit.runtime.engines import read_manifest
    from svdedit.runtime.engines.check import example_feeds
    from svdedit.runtime.engines.openvino import PRECISIONS, check_precision

    manifest = read_manifest(args.engine)
    precision = check_precision(args.precision)
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision]}   # what OpenvinoRunner compiles with
    path = str(args.engine / manifest.networks["unet"].file)
    x = example_feeds(manifest, "unet", batch=args.batch)
    core = ov.Core()
    compile_s, requests = {}, {}
    for way in ("dynamic", "static"):
        model = core.read_model(path)
        if way == "static":
            model.reshape({name: list(a.shape) for name, a in x.items()})
        t = time.perf_counter()
        compiled = core.compile_model(model, "CPU", config)
        compile_s[way] = time.perf_counter() - t
        requests[way] = compiled.create_infer_request()
        print(f"{way}: compiled in {compile_s[way]:.1f} s", file=sys.stderr, flush=True)
    outs = {way: np.array(r.infer(x)[0]) for way, r in requests.items()}   # warm-up
    times: dict[str, list[float]] = {way: [] for way in requests}
    ways = list(requests)
    for i, k in turns(len(ways), args.rounds):
        t = time.perf_counter()
        requests[ways[k]].infer(x)
        times[ways[k]].append(time.perf_counter() - t)
        print(f"round {i + 1}: {ways[k]} {times[ways[k]][-1]:.2f} s", file=sys.stderr, flush=True)
    ratios = [d / s for d, s in zip(times["dynamic"], times["static"])]
    machine = describe()
    res = {"benchmark": "bench_openvino_static",
           "command": "python -m benchmarks.speed.bench_openvino_static " + " ".join(sys.argv[1:] if argv is None else argv),
           "engine": str(args.engine), "precision": precision, "batch": args.batch, "rounds": args.rounds,
           "openvino": ov.get_version(), "machine": machine, "compile_s": compile_s,
           "call_s": {w: [round(t, 4) for t in v] for w, v in times.items()},
           "call_s_median": {w: statistics.median(v) for w, v in times.items()},
           "dynamic_over_static_per_round": [round(r, 4) for r in ratios],
           "dynamic_over_static": statistics.median(ratios),
           "max_abs_diff": float(np.abs(outs["dynamic"] - outs["static"]).max())}
    lines = [f"# OpenVINO UNet, dynamic against static shapes: batch {args.batch}, {precision}, {machine['cpu']}", "",
             f"Command: `{res['command']}`. OpenVINO {res['openvino']}; the runner's compile options; a warm-up call "
             f"each, then {args.rounds} rounds in which the two take turns. CPU flags: "
             f"{', '.join(machine.get('cpu_flags', [])) or 'not read'}.", "",
             "| compiled for | compile s | call s (median) | calls s |", "|---|---|---|---|"]
    lines += [f"| {w} shapes | {compile_s[w]:.1f} | {res['call_s_median'][w]:.3f} | "
              f"{', '.join(f'{t:.2f}' for t in times[w])} |" for w in requests]
    lines += ["", f"Dynamic over static, per round: {', '.join(f'{r:.3f}' for r in ratios)}; median "
                  f"**{res['dynamic_over_static']:.3f}** (above 1: static is faster). Largest output difference "
                  f"{res['max_abs_diff']:.2e}."]
    write_result(args.name or f"openvino_static_{device_slug(machine['cpu'])}_{precision}", res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
