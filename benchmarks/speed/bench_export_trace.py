"""How the export gives torch its dynamic axes, measured on the SD 1.5 shape: as named `torch.export.Dim` objects (the
export before this change: the first trace of the VAE encoder, the VAE decoder and the UNet failed on constraints
torch.export found, and torch.onnx traced them again with its suggested fixes) against axis names (now:
torch.onnx makes each a Dim.DYNAMIC and infers those bounds in the one trace).

    python -m benchmarks.speed.bench_export_trace --work W [--rounds 1]

W: the folder `python -m benchmarks.speed.export_sd15_shape --work W` leaves (W/pipeline: SD 1.5's architecture,
seeded random weights). Each export runs in a fresh process (no warm-up carried from one way to the other), the
ways taking turns (machine.turns); per network the seconds of `torch.onnx.export` as the exporter logs them, the
whole export, and the process's peak RSS. The "before" way is this file's copy of the exporter's old
`_export_onnx`, patched in for its runs. Writes benchmarks/results/export_trace_sd15_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import describe, turns, write_result

WAYS = ("named Dim objects (before)", "axis names (now)")
CHILD = """
import json, os, sys, time, warnings
from pathlib import Path
import svdedit.export.exporter as ex

def named_dims(spec, module, feeds, path, opset):  # the exporter's _export_onnx before this change
    import torch
    dims = {}
    dynamic_shapes = {t.name: {axis: dims.setdefault(name, torch.export.Dim(name))
                               for axis, name in spec.dynamic_axes()[t.name].items()} for t in spec.inputs}
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, verbose=False, report=False,
                                    input_names=[t.name for t in spec.inputs],
                                    output_names=[t.name for t in spec.outputs], dynamic_shapes=dynamic_shapes, **kwargs)
    ex._drop_stack_traces(program.model)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(path), external_data=n_bytes > ex.EXTERNAL_DATA_BYTES)

source, out, way = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if way == "before":
    ex._export_onnx = named_dims
lines = []
t = time.perf_counter()
ex.export_model(source, out, ex.ExportOptions(), log=lines.append)
total = time.perf_counter() - t
from benchmarks.machine import status_gib
per = {l.split(":")[0].strip(): float(l.split("exported in ")[1].split(" s")[0]) for l in lines if "exported in" in l}
parity = {l.split(":")[0].strip(): l.split("parity ")[1] for l in lines if "exported in" in l}
print(json.dumps({"total_s": total, "export_s": per, "parity": parity,
                  "peak_rss_gib": status_gib(os.getpid(), "VmHWM")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="export_sd15_shape's folder (its pipeline/)")
    ap.add_argument("--rounds", type=int, default=1, help="exports per way (each ~4 min here)")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    runs: dict[str, list[dict]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-export-trace-") as tmp:
        for r, k in turns(len(WAYS), args.rounds):
            out = Path(tmp) / f"engine-{r}-{k}"
            proc = subprocess.run([sys.executable, "-c", CHILD, str(args.work / "pipeline"), str(out),
                                   ("before", "now")[k]], capture_output=True, text=True, cwd=root,
                                  env={**__import__("os").environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")})
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            runs[WAYS[k]].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(WAYS[k], runs[WAYS[k]][-1], flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    median = {w: {"total_s": round(statistics.median(x["total_s"] for x in rs), 1),
                  "export_s": {n: round(statistics.median(x["export_s"][n] for x in rs), 1) for n in rs[0]["export_s"]},
                  "peak_rss_gib": round(max(x["peak_rss_gib"] for x in rs), 2), "parity": rs[0]["parity"]}
              for w, rs in runs.items()}
    before, now = (median[w] for w in WAYS)
    res = {"benchmark": "export_trace", "model": "SD 1.5 shape (seeded random weights), fp32", "rounds": args.rounds,
           "machine": describe(), "median": median, "runs": runs,
           "ratio_total": round(before["total_s"] / now["total_s"], 3)}
    nets = list(now["export_s"])
    rows = [f"| {n} | {before['export_s'][n]} | {now['export_s'][n]} | {before['export_s'][n] / now['export_s'][n]:.2f}x |"
            for n in nets]
    md = "\n".join([
        f"# The export's trace on the SD 1.5 shape ({res['machine']['cpu']}, {res['machine']['cores']} cores; "
        f"median of {args.rounds}, each in a fresh process)", "",
        "| seconds | named Dim objects (before) | axis names (now) | speed-up |", "|---|---|---|---|",
        *rows,
        f"| the whole export | {before['total_s']} | {now['total_s']} | {res['ratio_total']:.2f}x |",
        f"| peak RSS GiB | {before['peak_rss_gib']} | {now['peak_rss_gib']} | |", ""])
    write_result("export_trace_sd15_cpu", res, md)


if __name__ == "__main__":
    main()
