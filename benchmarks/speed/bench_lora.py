"""LoRA on the SD 1.5 shape: switching adapters at run time (engines/lora.py) against exporting again with the
adapter fused (`svdedit export --lora`), the UNet's speed with a swapped adapter against without, and the memory
of a swap, in one run.

    python -m benchmarks.speed.bench_lora --work W [--rank 16] [--rounds 3]

W: the folder `python -m benchmarks.speed.export_sd15_shape --work W` leaves (W/pipeline: SD 1.5's architecture,
seeded random weights). Made here once, under W: a LoRA of it (peft, rank --rank on the UNet's attention, feed-forward,
projections and ResNet convs, and the text encoder's attention and MLP, B drawn at random: tests/fixtures/lora.py),
W/engine-lora-ready (`--lora-ready` export), and one export with the adapter fused (timed, then deleted).

Measured:
- a switch: a fresh process opens the lora-ready engine dir with the adapter (read the file, merge it into the base
  weights in NumPy into the per-user cache, create the onnxruntime sessions), with the adapter merged before (the
  cache's), and without; --rounds each, taking turns; seconds by phase (the whole process, imports included) and
  the process's peak RSS (VmHWM): the memory of a swap;
- the same switch against the export with the adapter fused (the only way onnxruntime and Optimum offer);
- the UNet's call (guided, batch 2, 512 px, onnxruntime CPU) with the adapter swapped in against the same engine dir
  without: after the swap the weights are plain initializers, so it should cost nothing (--rounds interleaved calls).

Writes benchmarks/results/lora_sd15_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe, turns, write_result

OPEN = """
import json, os, sys, time
from pathlib import Path
t0 = time.perf_counter()
from svdedit.runtime.engines.lora import read_adapter
from svdedit.runtime.engines import read_manifest
from svdedit.runtime.pipeline import Pipeline
engine, lora, first = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "first"
if first:  # no adapter merged before: the switch as a deployment first meets it
    import shutil
    for d in (Path(os.environ["XDG_CACHE_HOME"]) / "svdedit" / "engines").glob("*/lora"):
        shutil.rmtree(d)
t = {}
s = time.perf_counter(); manifest = read_manifest(engine); t["manifest_s"] = time.perf_counter() - s
s = time.perf_counter(); adapters = [read_adapter(lora, 1.0)] if lora else []; t["read_adapter_s"] = time.perf_counter() - s
s = time.perf_counter(); pipe = Pipeline(engine, "cpu", manifest=manifest, lora=adapters)
t["construct_s"] = time.perf_counter() - s  # with an adapter: its merge into the base weights (NumPy)
s = time.perf_counter()
with pipe:
    t["sessions_s"] = time.perf_counter() - s
t["total_s"] = time.perf_counter() - t0
from benchmarks.machine import status_gib
t["peak_rss_gib"] = status_gib(os.getpid(), "VmHWM")
print(json.dumps(t))
"""


def make_lora(work: Path, rank: int) -> Path:
    path = work / "lora" / f"rank{rank}.safetensors"
    if not path.is_file():
        from diffusers import StableDiffusionPipeline

        from tests.fixtures.lora import save_peft_lora

        save_peft_lora(StableDiffusionPipeline.from_pretrained(work / "pipeline"), path, seed=0, text_encoder=True,
                       rank=rank)
    return path


def export(work: Path, out: Path, **options) -> float:
    from svdedit.export.exporter import ExportOptions, export_model

    t0 = time.perf_counter()
    export_model(work / "pipeline", out, ExportOptions(**options), log=lambda m: print(m, file=sys.stderr))
    return time.perf_counter() - t0


def open_in_a_process(engine: Path, lora: Path | None, first: bool = False) -> dict:
    proc = subprocess.run([sys.executable, "-c", OPEN, str(engine), str(lora or ""), "first" if first else "again"],
                          capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unet_calls(engine: Path, lora: Path, rounds: int) -> dict:
    """Seconds of one guided UNet call (batch 2) with and without the adapter, the two sessions taking turns."""
    from svdedit.runtime.engines import OrtRunner, read_manifest
    from svdedit.runtime.engines.check import example_feeds
    from svdedit.runtime.engines.lora import read_adapter, swapped_graphs

    manifest = read_manifest(engine)
    graph = swapped_graphs(engine, manifest, [read_adapter(lora)])["unet"]
    feeds = example_feeds(manifest, "unet", batch=2)
    runners = [OrtRunner(engine, "unet", manifest, "cpu"), OrtRunner(engine, "unet", manifest, "cpu", graph=graph)]
    times: list[list[float]] = [[], []]
    outs = []
    for r in runners:
        r.activate()
        outs.append(r(**feeds)["model_output"])  # warm-up
    for _, k in turns(2, rounds):
        t0 = time.perf_counter()
        runners[k](**feeds)
        times[k].append(time.perf_counter() - t0)
    for r in runners:
        r.deactivate()
    import numpy as np

    return {"without_s": [round(t, 3) for t in times[0]], "with_s": [round(t, 3) for t in times[1]],
            "ratio_with_over_without": round(statistics.median(times[1]) / statistics.median(times[0]), 3),
            "outputs_differ_by": float(np.abs(outs[1] - outs[0]).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="lora_sd15_cpu")
    args = ap.parse_args()
    import os

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-lora-")
    from svdedit.runtime.engines.lora import read_adapter

    lora = make_lora(args.work, args.rank)
    ready = args.work / "engine-lora-ready"
    ready_export_s = None
    if not (ready / "manifest.json").is_file():
        ready_export_s = export(args.work, ready, lora_ready=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        fused_export_s = export(args.work, Path(tmp) / "fused", lora=((str(lora), 1.0),))
    opens: list[list[dict]] = [[], [], []]  # without an adapter; with it, merged first; with it, merged before
    open_in_a_process(ready, None)  # warm-up: the page cache and the verification record
    for _, k in turns(3, args.rounds):
        opens[k].append(open_in_a_process(ready, lora if k else None, first=k == 1))
    calls = unet_calls(ready, lora, args.rounds)

    def med(rows, key):
        return round(statistics.median(r[key] for r in rows), 3)

    adapter = read_adapter(lora)
    res = {
        "benchmark": "bench_lora", "machine": describe(), "rounds": args.rounds,
        "lora": {"file": lora.name, "bytes": lora.stat().st_size, "rank": args.rank, "layers": len(adapter.layers),
                 "components": adapter.record()["components"]},
        "export_fused_s": round(fused_export_s, 1),
        "export_lora_ready_s": None if ready_export_s is None else round(ready_export_s, 1),
        "open": {"without": opens[0], "with": opens[1], "with_merged_before": opens[2]},
        "switch_s": {"with": med(opens[1], "total_s"), "without": med(opens[0], "total_s"),
                     "with_merged_before": med(opens[2], "total_s"),
                     "merge": med(opens[1], "construct_s"), "read_adapter": med(opens[1], "read_adapter_s"),
                     "sessions": {"with": med(opens[1], "sessions_s"), "without": med(opens[0], "sessions_s")}},
        "peak_rss_gib": {"with": med(opens[1], "peak_rss_gib"), "without": med(opens[0], "peak_rss_gib"),
                         "with_merged_before": med(opens[2], "peak_rss_gib")},
        "unet_call": calls,
    }
    s = res["switch_s"]
    md = "\n".join([
        f"# LoRA on the SD 1.5 shape ({res['machine'].get('cpu')}, {res['machine'].get('cores')} cores)",
        "",
        f"Adapter: rank {args.rank}, {len(adapter.layers)} layers ({', '.join(adapter.record()['components'])}), "
        f"{lora.stat().st_size / 2**20:.0f} MiB. Median of {args.rounds} rounds; each open in a fresh process.",
        "",
        "| way to run with the adapter | seconds | peak RSS GiB |",
        "|---|---|---|",
        f"| export again with it fused (`svdedit export --lora`) | {res['export_fused_s']:.0f} | - |",
        f"| open the --lora-ready engine dir with it (read, merge, sessions) | {s['with']:.1f} | {res['peak_rss_gib']['with']:.2f} |",
        f"| open it with the same adapter again (merged before, in the cache) | {s['with_merged_before']:.1f} | "
        f"{res['peak_rss_gib']['with_merged_before']:.2f} |",
        f"| (the same engine dir opened without an adapter) | {s['without']:.1f} | {res['peak_rss_gib']['without']:.2f} |",
        "",
        f"Switching at run time: {res['export_fused_s'] / s['with']:.0f}x faster than an export; of its "
        f"{s['with']:.1f} s (a whole process: imports, manifest, sessions), {s['merge']:.1f} s merge the adapter (NumPy, "
        f"written to the cache), "
        f"{s['read_adapter']:.2f} s read it, and the sessions take {s['sessions']['with']:.1f} s (without an adapter "
        f"{s['sessions']['without']:.1f} s).",
        "",
        f"UNet call (guided, batch 2, onnxruntime CPU) with the adapter against without: "
        f"{calls['ratio_with_over_without']:.3f}x the time (with {statistics.median(calls['with_s']):.2f} s, without "
        f"{statistics.median(calls['without_s']):.2f} s; outputs differ by up to {calls['outputs_differ_by']:.3g}).",
        "",
    ])
    write_result(args.name, res, md)


if __name__ == "__main__":
    main()
