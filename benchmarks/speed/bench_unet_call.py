"""One guided UNet call (batch 2, 64x64 latent) per engine dir of bench_speed.py, on the SD 1.5 shape: what a full
step and a cached step of step caching cost, and what int8 does to one call.

    python -m benchmarks.speed.bench_unet_call --work /tmp/sd15

Each engine in its own process (its peak RSS is its own), a warm-up call first, then the median of --repeats.
For a split UNet (--step-cache) `full` runs unet_in -> unet_deep -> unet_out, `cached` runs unet_in -> unet_out
with the kept deep feature. Writes benchmarks/results/unet_call_sd15_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
#: (label, engine dir under --work, interval: 1 = every call full, 0 = every call after the first cached)
CASES = [("fp32, whole UNet", "engine-fp32", 1), ("int8 static, whole UNet", "engine-int8-static", 1),
         ("fp32 split, full step", "engine-fp32-stepcache", 1), ("fp32 split, cached step", "engine-fp32-stepcache", 0),
         ("int8 split, full step", "engine-int8-static-stepcache", 1),
         ("int8 split, cached step", "engine-int8-static-stepcache", 0)]


def child(engine: str, interval: int, repeats: int) -> dict:
    import numpy as np

    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(engine, "cpu") as pipe:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 4, 64, 64), dtype=np.float32)
        e = rng.standard_normal((2, 77, 768), dtype=np.float32)
        ts = np.full((2,), 500.0, np.float32)
        unet = pipe.unet_fn(interval or 10**9)   # 0: only the first call computes the deep branch
        unet(x, ts, e)                           # warm-up (and, cached, the deep feature)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            unet(x, ts, e)
            times.append(time.perf_counter() - t)
    return {"seconds_median": statistics.median(times), "seconds_runs": [round(t, 3) for t in times],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15"))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeats)))
        return 0
    from benchmarks.machine import describe

    rows = []
    for label, engine, interval in CASES:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.speed.bench_unet_call", "--repeats", str(args.repeats),
                               "--child", str(args.work / engine), str(interval)], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        rows.append({"label": label, "engine": engine, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(f"{label}: {rows[-1]['seconds_median']:.2f} s", file=sys.stderr)
    whole = rows[0]["seconds_median"]
    for r in rows:
        r["fraction_of_fp32_whole"] = r["seconds_median"] / whole
    machine = describe()
    res = {"benchmark": "bench_unet_call", "command": "python -m benchmarks.speed.bench_unet_call " + " ".join(sys.argv[1:]),
           "model": "SD 1.5 shape (random weights), batch 2 (one guided step), 64x64 latent", "machine": machine,
           "device_label": f"{machine['cpu']}, {machine['cores']} cores", "repeats": args.repeats, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "unet_call_sd15_cpu.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps([(r["label"], round(r["seconds_median"], 2), round(r["fraction_of_fp32_whole"], 2)) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
