"""Opening an engine dir: every file hashed on every open (svdedit 0.1 to 0.3) against only what changed since
this user last hashed it (the verification record, runtime/svdedit/runtime/engines/verified.py), in one run.

    python -m benchmarks.speed.bench_open --engine DIR [--runs 5]

DIR: an SD 1.5-shape engine dir (`python -m benchmarks.speed.export_sd15_shape --work W` leaves one in W/engine).
Measured, each a median of --runs after one warm-up (so the files are in the page cache: the hash is CPU-bound):
`Pipeline(DIR)` as it was (read_manifest hashing every file, verify="all"), and as it is (verify="changed", with the
record written by the warm-up). Constructing a Pipeline reads the manifest, schedule and tokenizer; the networks
load later, on entering it. Writes benchmarks/results/open_sd15_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe

RESULTS = Path(__file__).resolve().parents[1] / "results"


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up: the page cache, and the record
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="the engine dir to open")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "open_sd15_cpu.json")
    args = ap.parse_args()

    import os

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-open-")  # a record of this run's own

    from svdedit.runtime.engines.manifest import read_manifest
    from svdedit.runtime.pipeline import Pipeline

    engine = args.engine
    size = sum((engine / rel).stat().st_size for rel, _ in read_manifest(engine, verify="none").files())
    before = timed(lambda: Pipeline(engine, manifest=read_manifest(engine, verify="all")), args.runs)
    after = timed(lambda: Pipeline(engine), args.runs)
    t0 = time.perf_counter()
    read_manifest(engine, verify="none")
    read_none = time.perf_counter() - t0
    result = {
        "benchmark": "bench_open",
        "machine": describe(),
        "engine_dir_bytes": size,
        "runs": args.runs,
        "pipeline_open_s": {"every_file_hashed": round(statistics.median(before), 4),
                            "changed_files_hashed": round(statistics.median(after), 4)},
        "all_runs_s": {"every_file_hashed": [round(t, 4) for t in before],
                       "changed_files_hashed": [round(t, 4) for t in after]},
        "ratio": round(statistics.median(before) / statistics.median(after), 1),
        "manifest_alone_unverified_s": round(read_none, 4),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("engine_dir_bytes", "pipeline_open_s", "ratio")}))


if __name__ == "__main__":
    main()
