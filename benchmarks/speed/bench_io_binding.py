"""onnxruntime IO binding in the runner (issue 31, item 6): a loop of UNet steps on an engine dir, the runner's call
(by default session.run for NumPy feeds; and forced to IO binding) against a plain InferenceSession.run of the same
session, in the same run: the first difference is the runner's own checks, the second what a binding per call costs.
Where CuPy sees a GPU, also the latents kept on the GPU between steps (CuPy feeds and outputs, bound) against NumPy
feeds that cross the bus each step (and, on onnxruntime-gpu's CUDA provider, the runner capturing and replaying CUDA
graphs), and the whole sampling loop (Pipeline.generate, --steps guided steps) with the
latents on the host against the latents kept on the GPU (Pipeline's latents_on_device).

    python -m benchmarks.speed.bench_io_binding [--engine svdedit:shapes] [--steps 20] [--repeats 5] [--provider auto]

Each way: one warm-up loop, then --repeats loops of --steps UNet calls at batch 2 (one guided step), the ways taking
turns loop by loop (this machine's speed drifts by more than the differences measured); a way's time is its median
loop, its ratio to session.run the median of the per-round ratios. Each call is at the engine's default size, the
latents updated between steps (x <- x - 0.01 eps) so that each call reads the last one's result. The final latents of
each way are compared with session.run's. On a CPU the question is what the runner and a binding cost; on a GPU,
what keeping the latents on the device saves.
Writes benchmarks/results/io_binding_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np

from benchmarks.machine import describe, device_slug, turns, write_result
from svdedit.runtime.pipeline import to_host


def loop(call, feeds: dict, steps: int, xp=np, sync=lambda: None):
    """`steps` calls, each on the latents the last one left; the final latents."""
    x = feeds["sample"]
    for _ in range(steps):
        x = x - xp.float32(0.01) * call(dict(feeds, sample=x))
    sync()
    return x


def interleaved(ways: list, repeats: int) -> list[tuple[list[float], object]]:
    """`ways`: [(label, run)], run() doing one timed unit and returning its result. Each run timed `repeats` times,
    the ways taking turns (the order reversed every other round, so that the machine's drift falls on all of them
    alike), after one warm-up run each: [(seconds of each round, last result)]."""
    outs = [run() for _, run in ways]   # warm-up
    runs: list[list[float]] = [[] for _ in ways]
    for _, k in turns(len(ways), repeats):
        t = time.perf_counter()
        outs[k] = ways[k][1]()
        runs[k].append(time.perf_counter() - t)
    return list(zip(runs, outs))


def rows_of(ways: list, timings: list, per: int) -> list[dict]:
    """One row per way: its median, the median of its per-round ratios to the first way, its largest difference from
    the first way's result (`per`: calls in one run, for the time per call)."""
    reference = to_host(timings[0][1])
    rows = []
    for (label, _), (runs, out) in zip(ways, timings):
        ratios = [round(a / b, 3) for a, b in zip(timings[0][0], runs)]
        rows.append({"way": label, "loop_s_median": statistics.median(runs), "loop_s_runs": [round(r, 4) for r in runs],
                     "per_call_ms": 1e3 * statistics.median(runs) / per, "vs_run_per_round": ratios,
                     "vs_run": statistics.median(ratios),
                     "max_abs_diff_vs_run": float(np.abs(to_host(out) - reference).max())})
    return rows


def pipeline_ways(engine, provider: str, steps: int, stack) -> list:
    """generate() of --steps guided steps with the latents on the host, and kept on the GPU (Pipeline's
    latents_on_device), from the same noise; the pipelines are opened on `stack`."""
    from svdedit.runtime.pipeline import Pipeline

    ways = []
    for label, on_device in (("pipeline, latents on the host", False), ("pipeline, latents kept on the GPU", True)):
        pipe = stack.enter_context(Pipeline(engine, provider, latents_on_device=on_device))
        x = pipe.noise(0)
        ways.append((label, lambda pipe=pipe, x=x: pipe.generate("a large red circle on the left", steps=steps,
                                                                  guidance=5.0, init_noise=x)))
    return ways


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="svdedit:shapes", help="an engine dir with a whole UNet (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--provider", default="auto", help="auto (CUDA where onnxruntime-gpu sees a GPU), cpu, cuda")
    ap.add_argument("--name", help="the result files' stem (default: io_binding_<device>)")
    args = ap.parse_args(argv)
    from svdedit.runtime.engines import OrtRunner, read_manifest
    from svdedit.runtime.engines.check import example_feeds
    from svdedit.runtime.engines.names import resolve_engine

    engine = resolve_engine(args.engine)
    manifest = read_manifest(engine)
    try:
        import cupy

        gpu = bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001  no CuPy, or no driver
        cupy, gpu = None, False
    feeds = example_feeds(manifest, "unet", batch=2)
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(OrtRunner(engine, "unet", manifest, args.provider))
        bound = stack.enter_context(OrtRunner(engine, "unet", manifest, args.provider, io_binding=True))
        session, out_name = runner.session, runner.output_names[0]
        calls = [("InferenceSession.run, NumPy", lambda f: session.run([out_name], f)[0], feeds, np, lambda: None),
                 ("runner (default: session.run for NumPy), NumPy", lambda f: runner(**f)[out_name], feeds, np,
                  lambda: None),
                 ("runner forced to IO binding, NumPy", lambda f: bound(**f)[out_name], feeds, np, lambda: None)]
        if gpu:
            on_gpu = {n: cupy.asarray(a) for n, a in feeds.items()}
            calls.append(("runner (IO binding), CuPy: latents stay on the GPU", lambda f: runner(**f)[out_name],
                          on_gpu, cupy, cupy.cuda.Device().synchronize))
            if runner.provider == "CUDAExecutionProvider":  # onnxruntime-gpu: the CUDA provider's CUDA graphs too
                graphs = stack.enter_context(OrtRunner(engine, "unet", manifest, "cuda", cuda_graphs=True))
                calls.append(("runner with CUDA graphs, CuPy", lambda f: graphs(**f)[out_name], on_gpu, cupy,
                              cupy.cuda.Device().synchronize))
        ways = [(label, lambda c=c, f=f, xp=xp, sync=sync: loop(c, f, args.steps, xp, sync))
                for label, c, f, xp, sync in calls]
        print(f"{len(ways)} ways, {args.repeats} interleaved rounds ...", file=sys.stderr)
        rows = rows_of(ways, interleaved(ways, args.repeats), args.steps)
        pipeline_rows = []
        if gpu:  # the whole sampling loop: ddim's arithmetic and the guidance on the GPU too
            ways = pipeline_ways(engine, args.provider, args.steps, stack)
            pipeline_rows = rows_of(ways, interleaved(ways, args.repeats), args.steps)
        provider = runner.provider
    machine = describe()
    device = machine["gpu"] if gpu and machine["gpu"] else machine["cpu"]
    import onnxruntime

    res = {"benchmark": "bench_io_binding", "command": "python -m benchmarks.speed.bench_io_binding " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "engine": str(args.engine), "provider": provider, "onnxruntime": onnxruntime.__version__,
           "cupy": getattr(cupy, "__version__", None), "gpu_measured": gpu, "steps": args.steps,
           "repeats": args.repeats, "machine": machine, "rows": rows, "pipeline_rows": pipeline_rows}
    lines = [f"# onnxruntime IO binding: {args.steps} UNet steps, batch 2, {args.engine}, {provider}, {device}", "",
             f"Command: `{res['command']}`. onnxruntime {onnxruntime.__version__}; a warm-up loop each, then "
             f"{args.repeats} rounds in which the ways take turns; loop s is a way's median, the ratio the median of "
             f"the per-round ratios. CPU flags: {', '.join(machine.get('cpu_flags', [])) or 'not read'}.", "",
             "| way | loop s | per call ms | vs InferenceSession.run | max abs diff of the final latents |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['loop_s_median']:.3f} | {r['per_call_ms']:.2f} | {r['vs_run']:.2f}x | "
              f"{r['max_abs_diff_vs_run']:.2e} |" for r in rows]
    if pipeline_rows:
        lines += ["", f"The whole sampling loop: `Pipeline.generate`, {args.steps} steps at guidance 5 (batch 2 per UNet "
                      f"call), from the same noise.", "",
                  "| way | s per generate | per step ms | vs latents on the host | max abs diff of the latents |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['way']} | {r['loop_s_median']:.3f} | {r['per_call_ms']:.2f} | {r['vs_run']:.2f}x | "
                  f"{r['max_abs_diff_vs_run']:.2e} |" for r in pipeline_rows]
    write_result(args.name or f"io_binding_{device_slug(device)}", res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
