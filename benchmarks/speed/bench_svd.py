"""Channel-wise SVD of latent batches: svdedit.kernels against its peers, in the same run.

    python -m benchmarks.speed.bench_svd [--repeats 7]

Batches of 1, 8, 64 latents of 4x16x16, 4x64x64, 4x96x96. On every machine: ours on NumPy (LAPACK)
and torch.linalg.svd on the CPU. Where a GPU with CuPy is present: ours on CuPy, cupy.linalg.svd,
and torch.linalg.svd on CUDA (synchronised; warm-up first). Median of --repeats runs, milliseconds,
and the largest relative error of the singular values against NumPy float64.
Writes benchmarks/results/svd_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, device_slug
from svdedit.kernels import channel_svd

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHAPES = [(4, 16, 16), (4, 64, 64), (4, 96, 96)]
BATCHES = [1, 8, 64]


def _time(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(runs)


def _rel_err(s, ref) -> float:
    return float(np.max(np.abs(np.asarray(s, np.float64) - ref) / np.maximum(ref.max(axis=-1, keepdims=True), 1e-30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    try:
        import cupy

        gpu = bool(cupy.cuda.is_available())
    except Exception:
        cupy, gpu = None, False
    rows = []
    for b in BATCHES:
        for c, h, w in SHAPES:
            x = np.random.default_rng(0).standard_normal((b, c, h, w)).astype(np.float32)
            ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
            row = {"batch": b, "shape": [c, h, w], "ms": {}, "max_rel_err": {}}
            row["ms"]["svdedit_numpy"] = _time(lambda: channel_svd(x), args.repeats)
            row["max_rel_err"]["svdedit_numpy"] = _rel_err(channel_svd(x)[1], ref)
            if torch is not None:
                xt = torch.from_numpy(x)
                row["ms"]["torch_cpu"] = _time(lambda: torch.linalg.svd(xt, full_matrices=False), args.repeats)
                row["max_rel_err"]["torch_cpu"] = _rel_err(torch.linalg.svdvals(xt).numpy(), ref)
            if gpu:
                sync = cupy.cuda.Device().synchronize
                xg = cupy.asarray(x)
                row["ms"]["svdedit_cupy"] = _time(lambda: channel_svd(xg), args.repeats, sync)
                row["max_rel_err"]["svdedit_cupy"] = _rel_err(cupy.asnumpy(channel_svd(xg)[1]), ref)
                row["ms"]["cupy_linalg_svd"] = _time(lambda: cupy.linalg.svd(xg, full_matrices=False), args.repeats, sync)
                if torch is not None and torch.cuda.is_available():
                    xc = torch.from_numpy(x).cuda()
                    row["ms"]["torch_cuda"] = _time(lambda: torch.linalg.svd(xc, full_matrices=False), args.repeats,
                                                    torch.cuda.synchronize)
            ours = row["ms"]["svdedit_cupy" if gpu else "svdedit_numpy"]
            row["speedup_of_ours_vs"] = {k: v / ours for k, v in row["ms"].items() if not k.startswith("svdedit")}
            rows.append(row)
            print(json.dumps(row))
    machine = describe()
    device = machine["gpu"] or machine["cpu"]
    result = {"benchmark": "bench_svd", "machine": machine, "repeats": args.repeats,
              "torch": getattr(torch, "__version__", None), "cupy": getattr(cupy, "__version__", None),
              "gpu_measured": gpu, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"svd_{device_slug(device)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
