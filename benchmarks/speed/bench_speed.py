"""Speed of one edit per configuration (exact, step caching, int8, both; on onnxruntime and on OpenVINO) against
Optimum, optimum-intel, OpenVINO GenAI and diffusers, in one run.

    python -m benchmarks.speed.bench_speed --work /tmp/sd15 --optimum-python /tmp/optimum/bin/python \
        --optimum-intel-python /tmp/optimum-intel/bin/python --genai-python /tmp/genai/bin/python

(the peers' venvs: benchmarks/speed/peer_venvs.sh optimum | optimum-intel | genai)

The SD 1.5-shaped model (benchmarks/speed/export_sd15_shape.py: 512x512, random weights) on this CPU, one real image
edited end to end (Editor.edit_images: encode, 10 inversion steps, 10 guided steps with the SVD + AVI step at
T_x, decode) by every configuration at the same step counts; each configuration and each peer in its own
process (its peak RSS is its own), a 2-step warm-up edit first, then the median of --repeats timed edits.
The per-step times (inversion step; guided step = one UNet call on 2 latents) carry to 50 steps.

Engine dirs under --work (made by this script when missing, from --work/pipeline):
    engine-fp32                    svdedit export                  the exact path
    engine-fp32-stepcache          svdedit export --step-cache      step caching at N = 2, 3, 5
    engine-int8-static             svdedit quantize (static)        int8 UNet
    engine-int8-dynamic            svdedit quantize --mode dynamic
    engine-int8-tensorrt           svdedit quantize --mode tensorrt  TensorRT's kind of int8, priced on the CPU
    engine-int8-static-stepcache   both
    engine-int8-nncf               svdedit quantize --mode nncf     NNCF's hybrid int8, an OpenVINO model
    engine-int8-nncf-stepcache     both
Optimum's export (--optimum-dir, made with benchmarks/speed/optimum_export.py in its own venv) is its peer;
optimum-intel's (WORK/optimum-intel, `optimum-cli export openvino` at its defaults) is optimum-intel's and GenAI's.
OpenVINO GenAI's Text2ImagePipeline cannot invert an image: it is timed generating at the edit's guided steps,
beside svdedit generating (the exact path and the fastest OpenVINO configuration), in a second table.

Writes benchmarks/results/speed_sd15_cpu.{json,md}; benchmarks/speed/speed_report.py adds the edit quality of each
configuration on the embedded model (benchmarks/quality/speed_quality.py) and the plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]

#: (label, engine dir name, sampling interval, inversion interval, provider, precision); "{bf16}" in a label and the
#: precision "default" are OpenVINO's default on this CPU (bf16 where it has bf16 units, else fp32)
CONFIGS = [
    ("exact (fp32)", "engine-fp32", 1, 1, "cpu", None),
    ("step cache N=2", "engine-fp32-stepcache", 2, 1, "cpu", None),
    ("step cache N=3", "engine-fp32-stepcache", 3, 1, "cpu", None),
    ("step cache N=5", "engine-fp32-stepcache", 5, 1, "cpu", None),
    ("int8 static", "engine-int8-static", 1, 1, "cpu", None),
    ("int8 dynamic", "engine-int8-dynamic", 1, 1, "cpu", None),
    ("int8 tensorrt mode", "engine-int8-tensorrt", 1, 1, "cpu", None),
    ("int8 static + step cache N=2", "engine-int8-static-stepcache", 2, 1, "cpu", None),
    ("int8 static + step cache N=3", "engine-int8-static-stepcache", 3, 1, "cpu", None),
    ("OpenVINO fp32", "engine-fp32", 1, 1, "openvino", "fp32"),
    ("OpenVINO {bf16}", "engine-fp32", 1, 1, "openvino", "default"),
    ("OpenVINO {bf16} + step cache N=2", "engine-fp32-stepcache", 2, 1, "openvino", "default"),
    ("OpenVINO {bf16} + step cache N=3", "engine-fp32-stepcache", 3, 1, "openvino", "default"),
    ("OpenVINO int8 static ({bf16})", "engine-int8-static", 1, 1, "openvino", "default"),
    ("OpenVINO int8 static ({bf16}) + step cache N=2", "engine-int8-static-stepcache", 2, 1, "openvino", "default"),
    ("OpenVINO int8 static ({bf16}) + step cache N=3", "engine-int8-static-stepcache", 3, 1, "openvino", "default"),
    ("OpenVINO nncf int8 ({bf16})", "engine-int8-nncf", 1, 1, "openvino", "default"),
    ("OpenVINO nncf int8 ({bf16}) + step cache N=3", "engine-int8-nncf-stepcache", 3, 1, "openvino", "default"),
]


def configs() -> list[tuple]:
    """CONFIGS with OpenVINO's default precision on this CPU filled in: (label, engine, n, ni, provider, precision)."""
    from svdedit.runtime.engines.openvino import default_precision

    here = default_precision()
    return [(label.replace("{bf16}", here), engine, n, ni, provider, here if precision == "default" else precision)
            for label, engine, n, ni, provider, precision in CONFIGS]


def _generation_children() -> dict:
    from benchmarks.speed.edit_peers import genai_generation, svdedit_generation

    return {"genai": genai_generation, "svdedit-generate": svdedit_generation}


def prepare(pipeline: Path, work: Path, log, needed: set[str] | None = None) -> dict[str, Path]:
    """The engine dirs of CONFIGS (or only the names in `needed`), made from the diffusers pipeline folder `pipeline`
    under `work` where missing: {name: folder}. speed_quality.py makes the embedded model's the same way."""
    from svdedit.export.exporter import ExportOptions, export_model
    from svdedit.export.quantize import QuantizeOptions, quantize_engine

    needed = {name for _, name, *_ in CONFIGS} if needed is None else needed
    for name, options in (("engine-fp32", ExportOptions()), ("engine-fp32-stepcache", ExportOptions(step_cache=True))):
        if not (work / name / "manifest.json").exists():
            export_model(pipeline, work / name, options, log=log)
    for name, source, mode in (("engine-int8-static", "engine-fp32", "static"),
                               ("engine-int8-dynamic", "engine-fp32", "dynamic"),
                               ("engine-int8-tensorrt", "engine-fp32", "tensorrt"),
                               ("engine-int8-static-stepcache", "engine-fp32-stepcache", "static"),
                               ("engine-int8-nncf", "engine-fp32", "nncf"),
                               ("engine-int8-nncf-stepcache", "engine-fp32-stepcache", "nncf")):
        if name in needed and not (work / name / "manifest.json").exists():
            quantize_engine(work / source, work / name, QuantizeOptions(mode=mode), log=log)
    return {name: work / name for name in needed}


# ------------------------------------------------------------------------------------------------
# one configuration (or peer) in its own process
# ------------------------------------------------------------------------------------------------
def child(spec: dict) -> dict:
    from benchmarks.speed.edit_peers import IMPLEMENTATIONS, images, prompts
    from svdedit.runtime.editing.avi import Attribute

    impl = spec["impl"]
    t0 = time.perf_counter()
    if impl in ("genai", "svdedit-generate"):  # the peer that cannot invert, and svdedit doing the same
        return _generation_children()[impl](spec)
    runner = IMPLEMENTATIONS[impl][0](spec)
    if impl == "svdedit":
        from svdedit.runtime.pipeline import Intervals

        runner.pipe.intervals = runner.pipe.check_intervals(Intervals(*spec["intervals"]))
    load_s = time.perf_counter() - t0
    attr = Attribute.load(spec["attr"])
    imgs, ps = images(1, runner.size), prompts(1)
    runner.attr = dataclasses.replace(attr, knobs=attr.knobs.replace(steps=2))
    runner.edit(imgs, ps)                                       # warm-up: every session and kernel, 2 steps
    runner.attr = attr
    runs, first = [], None
    for _ in range(spec["repeats"]):
        runner.stages.reset()
        t = time.perf_counter()
        out = runner.edit(imgs, ps)
        runs.append((time.perf_counter() - t, dict(runner.stages.seconds)))
        first = out if first is None else first
    np.save(spec["out"], first)
    steps = attr.knobs.steps
    stages = {s: statistics.median(r[1].get(s, 0.0) for r in runs) for s in runs[0][1]}
    return {"impl": runner.name, "provider": runner.provider, "load_s": round(load_s, 2),
            "seconds_median": statistics.median(r[0] for r in runs), "seconds_runs": [round(r[0], 3) for r in runs],
            "stages_median_s": stages,
            "invert_step_s": stages.get("invert", 0.0) / steps,
            "guided_step_s": (stages.get("sample_to_edit", 0.0) + stages.get("sample_rest", 0.0)) / steps,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_child(spec: dict) -> dict:
    """`spec` run by its own interpreter (spec["python"], else this one) in a process of its own."""
    spec = dict(spec)
    python = spec.pop("python", sys.executable)
    proc = subprocess.run([python, "-m", "benchmarks.speed.bench_speed", "--child", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{spec['impl']} {spec.get('label', '')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rounds(jobs: list[dict], rounds: int, out: str) -> list[dict]:
    """Each job run `rounds` times, the rounds interleaved and their order reversed every other round (A B, B A, A B:
    a machine whose speed drifts during the run slows every row alike), its output image at out.format(index). A row
    is its first round's result with the median over rounds of seconds and per-step times, every round's seconds in
    seconds_rounds and the highest peak RSS."""
    from benchmarks.machine import turns   # here, not at the top: the children run in the peers' venvs

    results: list[list[dict]] = [[] for _ in jobs]
    for r, i in turns(len(jobs), rounds):
        job = dict(jobs[i], out=out.format(i))
        print(f"running {job['label']}" + (f" (round {r + 1} of {rounds})" if rounds > 1 else "") + " ...",
              file=sys.stderr)
        results[i].append(run_child(job))
        print(f"  {results[i][-1]['seconds_median']:.1f} s, {results[i][-1]['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    rows = []
    for job, runs in zip(jobs, results):
        row = {"label": job["label"], **runs[0]}
        for key in ("seconds_median", "invert_step_s", "guided_step_s", "load_s"):
            if key in row:
                row[key] = statistics.median(run[key] for run in runs)
        row["peak_rss_gib"] = max(run["peak_rss_gib"] for run in runs)
        if rounds > 1:
            row["seconds_rounds"] = [round(run["seconds_median"], 3) for run in runs]
        rows.append(row)
    return rows


def rounds_text(values: list[float], fmt: str) -> str:
    """'a, b, c (min m)' of per-round values, or '-' for none."""
    return f"{', '.join(fmt.format(v) for v in values)} (min {fmt.format(min(values))})" if values else "-"


def paired(peer: dict, row: dict) -> list[float]:
    """The peer's seconds over the row's, round by round (the rounds ran side by side); [] without rounds."""
    return [p / r for p, r in zip(peer.get("seconds_rounds", []), row.get("seconds_rounds", []))]


def round_cells(res: dict) -> tuple[list[list[str]], list[list[str]]]:
    """The round-by-round cells of a --rounds run, for the result's markdown and the README's table alike: per
    configuration [label, seconds per round, vs optimum-intel per round, vs its fp32 per round], per generation row
    [label, seconds per round, vs GenAI per round]."""
    ref = {r["label"]: r for r in res["rows"]}
    ovi, ovi32 = ref.get(OPTIMUM_INTEL), ref.get(OPTIMUM_INTEL + ", forced to fp32")
    rows = [[r["label"], rounds_text(r["seconds_rounds"], "{:.1f}"),
             rounds_text(paired(ovi, r) if ovi else [], "{:.2f}x"),
             rounds_text(paired(ovi32, r) if ovi32 else [], "{:.2f}x")] for r in res["rows"]]
    gen = res.get("generation") or []
    generation = [[g["label"], rounds_text(g["seconds_rounds"], "{:.1f}"), rounds_text(paired(gen[-1], g), "{:.2f}x")]
                  for g in gen]
    return rows, generation


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    rows = res["rows"]
    ref = {r["label"]: r for r in rows}
    opt, dif, ovi = ref.get("optimum (onnxruntime)"), ref.get("diffusers (torch)"), ref.get(OPTIMUM_INTEL)
    flags = ", ".join(res["machine"].get("cpu_flags", []))
    lines = [f"# Speed of one edit per configuration: {res['model_label']}, {res['device_label']}", "",
             f"Command: `{res['command']}`. {res['steps']} inversion + {res['steps']} guided steps (guidance "
             f"{res['guidance']}), one 512x512 image, each row in its own process: a 2-step warm-up edit, then the "
             f"median of {res['repeats']} edits. Per-step times carry to 50 steps. Image difference: max |uint8| "
             f"against the first row's edit ({rows[0]['label']}). CPU flags: {flags or 'not read'}.", "",
             "| configuration | edit s | invert step s | guided step s | peak RSS GiB | vs Optimum | vs optimum-intel "
             "| vs diffusers | RSS / diffusers' | max diff vs first row |", "|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(peer, r):
        return f"{peer['seconds_median'] / r['seconds_median']:.2f}x" if peer else "-"

    for r in rows:
        rss = f"{r['peak_rss_gib'] / dif['peak_rss_gib']:.2f}" if dif else "-"
        lines.append(f"| {r['label']} | {r['seconds_median']:.1f} | {r['invert_step_s']:.2f} | {r['guided_step_s']:.2f} "
                     f"| {r['peak_rss_gib']:.2f} | {ratio(opt, r)} | {ratio(ovi, r)} | {ratio(dif, r)} | {rss} "
                     f"| {r.get('max_diff_vs_first', r.get('max_diff_vs_exact', '-'))} |")
    lines += ["", "Speed ratios are the peer's seconds over the row's (above 1: the row is faster). Step caching "
              "applies to sampling only here (inversion interval 1: the inversion is what the edit rests on). "
              "optimum-intel runs the same edit (the same loop drives its OpenVINO components)."]
    gen = res.get("generation") or []
    if res.get("rounds", 1) > 1:
        cells, generation = round_cells(res)
        lines += ["", f"## Round by round: {res['rounds']} rounds, interleaved (A B, B A, ...)", "",
                  "Each round ran every row once, minutes apart; a ratio here compares the rows of one round. Its "
                  "spread is what the machine's drift does to a single comparison.", "",
                  "| configuration | seconds per round | vs optimum-intel per round | vs optimum-intel fp32 per round |",
                  "|---|---|---|---|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        if generation:
            lines += ["", "| generation | seconds per round | vs GenAI per round |", "|---|---|---|"]
            lines += ["| " + " | ".join(c) + " |" for c in generation]
    if gen:
        genai = gen[-1]
        lines += ["", f"## Generation only: {res['steps']} guided steps and the decode, 512x512 (GenAI cannot invert)",
                  "", "| implementation | seconds | vs GenAI | peak RSS GiB |", "|---|---|---|---|"]
        lines += [f"| {g['label']} ({g['provider']}) | {g['seconds_median']:.1f} | {ratio(genai, g)} | "
                  f"{g['peak_rss_gib']:.2f} |" for g in gen]
    return "\n".join(lines) + "\n"


OPTIMUM_INTEL = "optimum-intel (OpenVINO)"


def openvino_export(python: str, work: Path) -> Path:
    """optimum-intel's own export of WORK/pipeline (optimum-cli export openvino, its defaults), made once; its time
    and peak RSS go to WORK/optimum-intel-export.json."""
    out = work / "optimum-intel"
    if not (out / "model_index.json").exists():
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", str(Path(python).parent / "optimum-cli"), "export", "openvino",
                               "-m", str(work / "pipeline"), "--library", "diffusers", "--task", "text-to-image",
                               str(out)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"optimum-intel's export failed:\n{proc.stderr[-3000:]}")
        (work / "optimum-intel-export.json").write_text(json.dumps({
            "seconds": round(time.perf_counter() - t, 1),
            "peak_rss_gib": round(int(proc.stderr.strip().splitlines()[-1]) / 2**20, 2)}))
    return out


def generation_rows(args, base: dict, rows: list[dict], work: Path, labels: list[str]) -> list[dict]:
    """GenAI generating at the edit's guided steps, beside svdedit generating with the exact path (where `labels`, the
    rows run, hold it), the fastest OpenVINO configuration of `rows` and the fastest of all (none without
    --genai-python)."""
    if not (args.genai_python and args.optimum_intel_python):
        return []
    from svdedit.runtime.editing.avi import Attribute

    knobs = Attribute.load(base["attr"]).knobs
    ours = [r for r in rows if r["impl"].startswith("svdedit")]
    fastest = [min((r for r in ours if r["label"].startswith("OpenVINO")), key=lambda r: r["seconds_median"]),
               min(ours, key=lambda r: r["seconds_median"])]
    by_label = {c[0]: c for c in configs()}
    spec = dict(base, steps=knobs.steps, guidance=knobs.guidance, size=512)
    jobs = [dict(spec, impl="svdedit-generate", label=f"svdedit generate, {label}", engine=str(work / by_label[label][1]),
                 provider=by_label[label][4], run_precision=by_label[label][5])
            for label in dict.fromkeys(l for l in (CONFIGS[0][0], *(r["label"] for r in fastest)) if l in labels)]
    jobs.append(dict(spec, impl="genai", label="OpenVINO GenAI Text2ImagePipeline", python=args.genai_python))
    return run_rounds(jobs, args.rounds, str(work / "generation-{}.npy"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="timed edits per process (their median is its time)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every row this many times, interleaved (A B, B A, ...): on a machine whose speed drifts, "
                         "each round's ratio compares rows measured minutes apart; a row's time is its median round")
    ap.add_argument("--optimum-python", metavar="PYTHON")
    ap.add_argument("--optimum-dir", type=Path, help="Optimum's export (default: WORK/optimum)")
    ap.add_argument("--optimum-intel-python", metavar="PYTHON",
                    help="optimum-intel's venv (benchmarks/speed/peer_venvs.sh optimum-intel): its OVStableDiffusionPipeline "
                         "at its defaults and forced to fp32, on its own export (WORK/optimum-intel, made when missing)")
    ap.add_argument("--genai-python", metavar="PYTHON",
                    help="OpenVINO GenAI's venv (peer_venvs.sh genai): Text2ImagePipeline on the same export; it cannot "
                         "invert, so it is timed generating, beside svdedit generating (needs --optimum-intel-python)")
    ap.add_argument("--only", help="comma-separated labels to run (default: all)")
    ap.add_argument("--skip", help="comma-separated labels to leave out (their engine dirs are then not made; "
                                   "'diffusers (torch)' leaves that peer out)")
    ap.add_argument("--name", default="speed_sd15_cpu",
                    help="the result files' name under benchmarks/results/ (another name for a subset of rows)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from benchmarks.speed.bench_edit import SOURCE, TARGET, versions
    from benchmarks.machine import describe

    from benchmarks.speed.export_sd15_shape import build_sd15_shape

    work = args.work
    if not (work / "pipeline" / "model_index.json").exists():
        build_sd15_shape(work / "pipeline")
    skip = (args.skip or "").split(",")
    chosen = [c for c in configs() if (not args.only or c[0] in args.only.split(",")) and c[0] not in skip]
    prepare(work / "pipeline", work, lambda m: print(m, file=sys.stderr), {c[1] for c in chosen} | {"engine-fp32"})
    attr = work / f"red2blue-{args.steps}.safetensors"
    if not attr.exists():
        subprocess.run([sys.executable, "-m", "svdedit.cli", "learn", "--engine", str(work / "engine-fp32"), "--source",
                        SOURCE, "--target", TARGET, "--steps", str(args.steps), "--calibration-seeds", "0", "-o",
                        str(attr)], check=True, stdout=subprocess.DEVNULL)
    base = {"pipeline": str(work / "pipeline"), "attr": str(attr), "provider": "cpu", "precision": "fp32",
            "repeats": args.repeats, "optimum": str(args.optimum_dir or work / "optimum")}
    jobs = [dict(base, impl="svdedit", label=label, engine=str(work / engine), intervals=[n, ni], provider=provider,
                 run_precision=precision) for label, engine, n, ni, provider, precision in chosen]
    if "diffusers (torch)" not in skip:
        jobs.append(dict(base, impl="diffusers", label="diffusers (torch)", engine=str(work / "engine-fp32")))
    if args.optimum_python:
        jobs.append(dict(base, impl="optimum", label="optimum (onnxruntime)", engine=str(work / "engine-fp32"),
                         python=args.optimum_python))
    if args.optimum_intel_python:
        base["optimum_intel"] = str(openvino_export(args.optimum_intel_python, work))
        for precision, label in (("default", OPTIMUM_INTEL), ("fp32", OPTIMUM_INTEL + ", forced to fp32")):
            jobs.append(dict(base, impl="optimum-intel", label=label, engine=str(work / "engine-fp32"),
                             python=args.optimum_intel_python, precision=precision))
    rows = [dict(row, engine=Path(job["engine"]).name, intervals=job.get("intervals"))
            for job, row in zip(jobs, run_rounds(jobs, args.rounds, str(work / "speed-{}.npy")))]
    first = np.load(work / "speed-0.npy").astype(int)
    for i, r in enumerate(rows):
        r["max_diff_vs_first"] = int(np.abs(np.load(work / f"speed-{i}.npy").astype(int) - first).max())
    generation = generation_rows(args, base, rows, work, [c[0] for c in chosen])
    machine = describe()
    from svdedit.runtime.editing.avi import Attribute

    knobs = Attribute.load(attr).knobs
    res = {"benchmark": "bench_speed", "command": "python -m benchmarks.speed.bench_speed " + " ".join(sys.argv[1:]),
           "model_label": "SD 1.5 shape (512x512, random weights)",
           "device_label": f"{machine['cpu']}, {machine['cores']} cores", "steps": args.steps,
           "guidance": knobs.guidance, "t_edit": knobs.t_edit, "repeats": args.repeats, "rounds": args.rounds,
           "machine": machine,
           "versions": versions(), "rows": rows, "generation": generation}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
