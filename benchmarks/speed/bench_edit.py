"""One edit of a real image, end to end, per stage: svdedit (ONNX Runtime) against diffusers (torch)
doing the same work, in the same run, on the same model, images, prompts and attribute.

    python -m benchmarks.speed.bench_edit                                   # the embedded model, CPU
    python -m benchmarks.speed.bench_edit --model sd15 --steps 4 --batches 1 --repeats 3     # SD 1.5 shape, CPU
    python -m benchmarks.speed.bench_edit --model sd15 --steps 50 --precision fp16           # on a GPU
    python -m benchmarks.speed.bench_edit --model sdxl --size 512 --steps 4 --batches 1 --repeats 2 --work /tmp/sdxl

The edit (Editor.edit_images, the product's path): encode the source and target prompts; VAE-encode the
image; invert it with DDIM (N steps, guidance 1, batch B); sample the target prompt from the inverted
noise down to T_x (guided: one UNet call of 2B per step); SVD + AVI at T_x; the remaining steps
(guided); VAE-decode. N inversion + N guided UNet steps in all. The peer does exactly this with
diffusers' UNet2DConditionModel / AutoencoderKL / CLIPTextModel, DDIMInverseScheduler and
DDIMScheduler (its SVD + AVI step calls the same NumPy code as ours; it is timed as its own stage).

Each implementation runs in its own process (so each one's peak RSS is its own: model loading,
session creation and the edits), warm-up first at every batch size, then the median of --repeats
runs. The two final images are compared (max abs difference) so that the timings are of the same work.
Throughput = B / (median seconds of one batch of B edits).

--model shapes: the embedded model (models/shapes; the engine is exported to a temp dir unless --engine).
--model sd15: an SD 1.5-architecture pipeline with seeded random weights (benchmarks/speed/export_sd15_shape.py),
built and exported into --work once (about 10 GB, a few minutes) and reused afterwards.
--model sdxl: SDXL base's architecture with seeded random weights (benchmarks/speed/export_sdxl_shape.py), built
and exported into --work once (about 28 GB, ~15 min on 2 cores), each in a process of its own; --size 512 edits
at 512 px (Pipeline(size=...); the time ids are then the image's own 512 x 512), and the peers are
StableDiffusionXLPipeline's parts and ORTStableDiffusionXLPipeline's.

The attribute is learned by the product's own `learn` (runtime/svdedit/runtime/editing/learn.py) at the edited
size, without calibrating its strength scale (strength 1 is the full edit either way).

Writes benchmarks/results/edit_<model>_<device>.json and .md, and a plot of the time per stage and the
throughput against batch size (edit_<model>_<device>.png). The implementations are in edit_peers.py,
the report in edit_report.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.speed.edit_peers import IMPLEMENTATIONS, child
from benchmarks.speed.edit_report import markdown, plot

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
SOURCE, TARGET = "a large red circle in the middle", "a large blue circle in the middle"
#: one SD 1.5 UNet evaluation of one 64x64 latent (docs/facts.md, numbers to compare with), and dense fp16 peaks
SD15_UNET_FLOP = 0.80e12
PEAK_FP16_TFLOPS = {"H100": 989.0, "H200": 989.0}


# ------------------------------------------------------------------------------------------------
# the parent: prepare the model and the attribute, run both children, write the results
# ------------------------------------------------------------------------------------------------
def prepare(args) -> tuple[Path, Path]:
    """(diffusers pipeline folder, engine dir) of the benchmarked model, built/exported if missing."""
    from svdedit.export.exporter import ExportOptions, export_model

    if args.model == "shapes":
        pipeline = ROOT / "models" / "shapes"
        engine = args.engine or Path(tempfile.mkdtemp(prefix="bench-edit-")) / "engine"
    else:
        pipeline = args.work / "pipeline"
        engine = args.engine or args.work / f"engine-{args.precision}{'' if args.fuse else '-nofuse'}"
        if not (pipeline / "model_index.json").exists():
            print(f"building the {args.model}-shape pipeline in {pipeline} ...", file=sys.stderr)
            if args.model == "sd15":
                from benchmarks.speed.export_sd15_shape import build_sd15_shape

                build_sd15_shape(pipeline)
            else:  # its own process: the 14 GB of torch weights are not kept by this one
                subprocess.run([sys.executable, "-m", "benchmarks.speed.export_sdxl_shape", "--build-only",
                                str(pipeline)], check=True, stdout=subprocess.DEVNULL)
    if not (engine / "manifest.json").exists():
        print(f"exporting {pipeline} to {engine} ...", file=sys.stderr)
        if args.model == "sdxl":  # the product's command, in its own process (peak 16 GiB, export_sdxl_shape.json)
            subprocess.run([sys.executable, "-m", "svdedit.cli", "export", str(pipeline), "-o", str(engine),
                            "--precision", args.precision] + ([] if args.fuse else ["--no-fuse"]), check=True,
                           stdout=subprocess.DEVNULL)
        else:
            export_model(pipeline, engine, ExportOptions(precision=args.precision, fuse=args.fuse), log=lambda m: None)
    return pipeline, engine


def learn(engine: Path, steps: int, size: int | None, work: Path) -> Path:
    """The attribute red -> blue, learned on this engine at this size by the product's learn(), in a child process
    (so that the children measured next have the memory to themselves)."""
    attr = work / f"red2blue-{steps}.safetensors"
    spec = {"engine": str(engine), "steps": steps, "size": size, "out": str(attr)}
    subprocess.run([sys.executable, "-m", "benchmarks.speed.bench_edit", "--child", "learn", "--spec", json.dumps(spec)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return attr


def learn_child(spec: dict) -> dict:
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.editing.learn import learn as learn_attribute
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(spec["engine"], size=spec["size"]) as pipe:
        attr = learn_attribute(Editor(pipe), SOURCE, TARGET, knobs=Knobs(steps=spec["steps"], calibration_seeds=0))
    attr.save(spec["out"])
    return {"attribute": spec["out"]}


def run_child(impl: str, spec: dict, python: str = sys.executable, max_rss_gib: float | None = None) -> dict:
    """One implementation's child process. A peer that passes `max_rss_gib` is stopped and returned as
    {"not_run": why}; svdedit passing it, or any child failing otherwise, ends the benchmark."""
    from benchmarks.machine import run_watched

    cmd = [python, "-m", "benchmarks.speed.bench_edit", "--child", impl, "--spec", json.dumps(spec)]
    proc, stopped = run_watched(cmd, max_rss_gib or float("inf"), cwd=ROOT)
    if stopped and impl != "svdedit":
        return {"not_run": {**stopped, "why": f"stopped at {stopped['stopped_at_rss_gib']:.2f} GiB of RSS after "
                                              f"{stopped['seconds_until_stopped']:.0f} s (limit {max_rss_gib:g} GiB)"}}
    if proc.returncode or stopped:
        sys.exit(f"{impl} failed{f' ({stopped})' if stopped else ''}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("onnxruntime", "onnxruntime-gpu", "torch", "diffusers", "numpy", "cupy-cuda13x"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def utilisation(args, impls: list[dict], machine: dict) -> dict | None:
    """UNet TFLOP/s during the step loops (N inversion evaluations of B latents, N guided of 2B), and the
    fraction of the GPU's dense fp16 peak; SD 1.5 shape only (the FLOP count is that model's)."""
    if args.model != "sd15":
        return None
    peak = next((v for k, v in PEAK_FP16_TFLOPS.items() if k in (machine.get("gpu") or "")), None)
    out = {}
    for impl in impls:
        rows = {}
        for r in impl["batches"]:
            st = r["stages_median_s"]
            seconds = st["invert"] + st["sample_to_edit"] + st["sample_rest"]
            tflops = 3 * args.steps * r["batch"] * SD15_UNET_FLOP / seconds / 1e12
            rows[r["batch"]] = {"unet_tflops": round(tflops, 3),
                                "fraction_of_fp16_peak": round(tflops / peak, 4) if peak else None}
        out[impl["impl"]] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("shapes", "sd15", "sdxl"), default="shapes")
    ap.add_argument("--size", type=int, help="image side to edit at (default: the model's; 512 for --model sdxl as the "
                                             "issue asks, its default being 1024)")
    ap.add_argument("--engine", type=Path, help="an engine dir of the model (default: exported as needed)")
    ap.add_argument("--work", type=Path, help="where the SD 1.5- or SDXL-shape pipeline and its engine dir are kept "
                                              "(default: svdedit-sd15 or svdedit-sdxl in the temp dir)")
    ap.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    ap.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="export without the attention fusion (svdedit export --no-fuse), to measure its effect")
    ap.add_argument("--steps", type=int, default=50, help="inversion steps = guided steps (default 50)")
    ap.add_argument("--batches", default="1,2,4,8", help="batch sizes (default 1,2,4,8)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--provider", default="auto", help="onnxruntime provider for svdedit (default auto)")
    ap.add_argument("--optimum-python", metavar="PYTHON",
                    help="a Python of a venv with optimum-onnx (it cannot share ours, facts.md) to add Optimum's "
                         "onnxruntime pipeline as a third peer")
    ap.add_argument("--optimum-dir", type=Path, metavar="DIR",
                    help="Optimum's export of the same pipeline (optimum.exporters.onnx.main_export)")
    ap.add_argument("--optimum-export-result", type=Path, metavar="JSON",
                    help="what `optimum_export.py --max-rss-gib` printed: when the export did not fit, Optimum is "
                         "recorded as not run, with why")
    ap.add_argument("--max-rss-gib", type=float, default=21.0,
                    help="a peer whose process passes this resident memory is stopped and reported as not run "
                         "(default 21: what a 24 GiB machine leaves; svdedit passing it fails the run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        print(json.dumps(learn_child(spec) if args.child == "learn" else child(args.child, spec)))
        return
    args.work = args.work or Path(tempfile.gettempdir()) / f"svdedit-{args.model}"

    from benchmarks.machine import describe

    pipeline, engine = prepare(args)
    work = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    size = args.size or (512 if args.model == "sdxl" else None)
    attr = learn(engine, args.steps, size, work)
    spec = {"engine": str(engine), "pipeline": str(pipeline), "attr": str(attr), "provider": args.provider,
            "precision": args.precision, "batches": [int(b) for b in args.batches.split(",")],
            "repeats": args.repeats, "out": str(work / "first"), "optimum": str(args.optimum_dir),
            "size": size, "xl": args.model == "sdxl"}
    runs = [("svdedit", sys.executable), ("diffusers", sys.executable)]
    not_run = {}
    optimum_export = json.loads(args.optimum_export_result.read_text()) if args.optimum_export_result else {}
    if optimum_export.get("fits") is False:
        not_run[IMPLEMENTATIONS["optimum"][0].name] = {**optimum_export, "why": (
            f"its export (benchmarks/speed/optimum_export.py --max-rss-gib {optimum_export['limit_gib']:g}) was "
            f"stopped at {optimum_export['stopped_at_rss_gib']:.2f} GiB of RSS after "
            f"{optimum_export['seconds_until_stopped']:.0f} s")}
    elif args.optimum_python:
        runs.append(("optimum", args.optimum_python))
    impls = []
    for impl, python in runs:
        print(f"running {impl} ...", file=sys.stderr)
        out = run_child(impl, spec, python, args.max_rss_gib)
        if "not_run" in out:
            not_run[IMPLEMENTATIONS[impl][0].name] = out["not_run"]
        else:
            impls.append(out)
    runs = [(i, p) for i, p in runs if IMPLEMENTATIONS[i][0].name not in not_run]
    if len(impls) < 2:
        sys.exit(f"no peer was measured beside svdedit: {json.dumps(not_run)}")
    firsts = {i: np.load(spec["out"] + f".{i}.npy").astype(int) for i, _ in runs}
    differences = {i: int(np.abs(firsts[i] - firsts["svdedit"]).max()) for i, _ in runs[1:]}
    machine = describe()
    device = "gpu" if "CUDA" in impls[0]["provider"] or "Tensorrt" in impls[0]["provider"] else "cpu"
    from svdedit.runtime.editing.avi import Attribute

    knobs = Attribute.load(attr).knobs
    result = {
        "benchmark": "bench_edit", "command": "python -m benchmarks.speed.bench_edit " + " ".join(sys.argv[1:]),
        "model": args.model, "precision": args.precision, "fused": args.fuse,
        "model_label": {"shapes": "embedded model (64x64)", "sd15": "SD 1.5 shape (512x512, random weights)",
                        "sdxl": f"SDXL shape ({size}x{size}, random weights)"}[args.model],
        "size": size,
        "device_label": machine["gpu"] if device == "gpu" else f"{machine['cpu']}, {machine['cores']} cores",
        "steps": args.steps, "guidance": knobs.guidance, "t_edit": knobs.t_edit, "batches": spec["batches"],
        "repeats": args.repeats, "machine": machine, "versions": versions(), "implementations": impls,
        "max_abs_image_difference_uint8": max(differences.values()),
        "image_difference_by_peer_uint8": differences,
        "unet_utilisation": utilisation(args, impls, machine),
        "speedup_per_edit_batch1": impls[1]["batches"][0]["seconds_median"] / impls[0]["batches"][0]["seconds_median"],
        "peak_rss_ratio": impls[0]["peak_rss_gib"] / impls[1]["peak_rss_gib"],
        "peers_not_run": not_run,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"edit_{args.model}{f'_{size}' if args.model == 'sdxl' else ''}_{args.precision}" \
           f"{'' if args.fuse else '_nofuse'}_{device}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    plot(result, RESULTS / f"{stem}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
