"""onnxruntime IO binding in the runner (issue 31, item 6): a loop of UNet steps on an engine dir, the runner's call
(IO binding) against a plain InferenceSession.run of the same session, in the same run. Where CuPy sees a GPU, also
the latents kept on the GPU between steps (CuPy feeds and outputs) against NumPy feeds that cross the bus each step.

    python -m benchmarks.speed.bench_io_binding [--engine svdedit:shapes] [--steps 20] [--repeats 5] [--provider auto]

Each way: one warm-up loop, then the median of --repeats loops of --steps UNet calls at batch 2 (one guided step),
the engine's default size, the latents updated between steps (x <- x - 0.01 eps) so that each call reads the last
one's result. The final latents of each way are compared with session.run's. On a CPU the question is whether the
binding costs anything (it should not); on a GPU, what keeping the latents on the device saves.
Writes benchmarks/results/io_binding_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from benchmarks.machine import describe, device_slug, write_result


def feeds_for(manifest, batch: int = 2) -> dict:
    sizes = manifest.axis_sizes(batch)
    rng = np.random.default_rng(0)
    return {"sample": rng.standard_normal((batch, 4, sizes["latent_height"], sizes["latent_width"]), dtype=np.float32),
            "timestep": np.full((batch,), 500, np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, manifest.text.hidden_size), dtype=np.float32)}


def loop(call, feeds: dict, steps: int, xp=np, sync=lambda: None):
    """`steps` calls, each on the latents the last one left; the final latents."""
    x = feeds["sample"]
    for _ in range(steps):
        x = x - xp.float32(0.01) * call(dict(feeds, sample=x))
    sync()
    return x


def timed(call, feeds: dict, steps: int, repeats: int, xp=np, sync=lambda: None) -> tuple[list[float], np.ndarray]:
    out = loop(call, feeds, steps, xp, sync)            # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = loop(call, feeds, steps, xp, sync)
        runs.append(time.perf_counter() - t)
    return runs, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="svdedit:shapes", help="an engine dir with a whole UNet (default: the embedded model)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--provider", default="auto", help="auto (CUDA where onnxruntime-gpu sees a GPU), cpu, cuda")
    ap.add_argument("--name", help="the result files' stem (default: io_binding_<device>)")
    args = ap.parse_args(argv)
    from svdedit.runtime.engines import OrtRunner, read_manifest
    from svdedit.runtime.engines.names import resolve_engine

    engine = resolve_engine(args.engine)
    manifest = read_manifest(engine)
    try:
        import cupy

        gpu = bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001  no CuPy, or no driver
        cupy, gpu = None, False
    feeds = feeds_for(manifest)
    rows = []
    with OrtRunner(engine, "unet", manifest, args.provider) as runner:
        session, out_name = runner.session, runner.output_names[0]
        ways = [("InferenceSession.run, NumPy", lambda f: session.run([out_name], f)[0], feeds, np, lambda: None),
                ("runner (IO binding), NumPy", lambda f: runner(**f)[out_name], feeds, np, lambda: None)]
        if gpu:
            on_gpu = {n: cupy.asarray(a) for n, a in feeds.items()}
            ways.append(("runner (IO binding), CuPy: latents stay on the GPU", lambda f: runner(**f)[out_name], on_gpu,
                         cupy, cupy.cuda.Device().synchronize))
        reference = None
        for label, call, f, xp, sync in ways:
            print(f"{label} ...", file=sys.stderr)
            runs, out = timed(call, f, args.steps, args.repeats, xp, sync)
            out = cupy.asnumpy(out) if xp is not np else out
            reference = out if reference is None else reference
            rows.append({"way": label, "loop_s_median": statistics.median(runs), "loop_s_runs": [round(r, 4) for r in runs],
                         "per_call_ms": 1e3 * statistics.median(runs) / args.steps,
                         "max_abs_diff_vs_run": float(np.abs(out - reference).max())})
        provider = runner.provider
    for r in rows:
        r["vs_run"] = rows[0]["loop_s_median"] / r["loop_s_median"]
    machine = describe()
    device = machine["gpu"] if gpu and machine["gpu"] else machine["cpu"]
    import onnxruntime

    res = {"benchmark": "bench_io_binding", "command": "python -m benchmarks.speed.bench_io_binding " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "engine": str(args.engine), "provider": provider, "onnxruntime": onnxruntime.__version__,
           "cupy": getattr(cupy, "__version__", None), "gpu_measured": gpu, "steps": args.steps,
           "repeats": args.repeats, "machine": machine, "rows": rows}
    lines = [f"# onnxruntime IO binding: {args.steps} UNet steps, batch 2, {args.engine}, {provider}, {device}", "",
             f"Command: `{res['command']}`. onnxruntime {onnxruntime.__version__}; a warm-up loop, then the median of "
             f"{args.repeats} loops. CPU flags: {', '.join(machine.get('cpu_flags', [])) or 'not read'}.", "",
             "| way | loop s | per call ms | vs InferenceSession.run | max abs diff of the final latents |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['loop_s_median']:.3f} | {r['per_call_ms']:.2f} | {r['vs_run']:.2f}x | "
              f"{r['max_abs_diff_vs_run']:.2e} |" for r in rows]
    write_result(args.name or f"io_binding_{device_slug(device)}", res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
