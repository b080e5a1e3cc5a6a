"""One edit of a real image, end to end, per stage: svdedit (ONNX Runtime) against diffusers (torch)
doing the same work, in the same run, on the same model, images, prompts and attribute.

    python -m benchmarks.bench_edit                                   # the embedded model, CPU
    python -m benchmarks.bench_edit --model sd15 --steps 4 --batches 1 --repeats 3     # SD 1.5 shape, CPU
    python -m benchmarks.bench_edit --model sd15 --steps 50 --precision fp16           # on a GPU

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
--model sd15: an SD 1.5-architecture pipeline with seeded random weights (benchmarks/export_sd15_shape.py),
built and exported into --work once (about 10 GB, a few minutes) and reused afterwards.

Writes benchmarks/results/edit_<model>_<device>.json and .md, and a plot of the time per stage and the
throughput against batch size (edit_<model>_<device>.png).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = "a large red circle in the middle", "a large blue circle in the middle"
# prompts of the edited images (the attribute's word change, red -> blue, applies to each)
PROMPTS = ["a small red square on the left", "a large red triangle on the right", "a small red circle in the middle",
           "a large red square in the middle", "a small red triangle on the right", "a large red circle on the left",
           "a small red square on the right", "a large red triangle in the middle"]
#: one SD 1.5 UNet evaluation of one 64x64 latent (shared/design/anchors.md), and dense fp16 peaks
SD15_UNET_FLOP = 0.80e12
PEAK_FP16_TFLOPS = {"H100": 989.0, "H200": 989.0}
STAGES = ("text", "vae_encode", "invert", "sample_to_edit", "svd_avi", "sample_rest", "vae_decode")


# ------------------------------------------------------------------------------------------------
# inputs shared by both implementations
# ------------------------------------------------------------------------------------------------
def images(n: int, size: int) -> np.ndarray:
    """n rendered shapes images (red, so that red -> blue applies), float32 (n, 3, size, size) in [-1, 1]."""
    from PIL import Image

    from models.shapes_data import parse_caption, render

    rng = np.random.default_rng(7)
    out = []
    for p in PROMPTS[:n] if n <= len(PROMPTS) else (PROMPTS * (n // len(PROMPTS) + 1))[:n]:
        img = Image.fromarray(render(parse_caption(p), rng)).resize((size, size), Image.LANCZOS)
        out.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return np.stack(out)


def prompts(n: int) -> list[str]:
    return (PROMPTS * (n // len(PROMPTS) + 1))[:n]


class PeakDeviceMemory:
    """Peak GPU memory of this process, polled from nvidia-smi every 20 ms (None without a GPU)."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        pid = str(os.getpid())
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError):
                return
            for line in out.splitlines():
                p, _, mib = line.partition(",")
                if p.strip() == pid:
                    self.peak_mib = max(self.peak_mib or 0, int(mib))
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------
# the two implementations, each run in a child process
# ------------------------------------------------------------------------------------------------
class Svdedit:
    name = "svdedit (onnxruntime)"

    def __init__(self, spec: dict):
        from svdedit.runtime.avi import Attribute
        from svdedit.runtime.edit import Editor
        from svdedit.runtime.pipeline import Pipeline
        from svdedit.runtime.timing import Stages

        self.pipe = Pipeline(spec["engine"], spec["provider"]).__enter__()
        self.stages = Stages()
        self.editor = Editor(self.pipe, stages=self.stages)
        self.attr = Attribute.load(spec["attr"])
        self.size = self.pipe.size
        self.provider = self.pipe.providers["unet"]

    def edit(self, imgs: np.ndarray, ps: list[str]) -> np.ndarray:
        r = self.editor.edit_images([self.attr], imgs, ps, batch=len(imgs))
        return r.edited


class Diffusers:
    name = "diffusers (torch)"

    def __init__(self, spec: dict):
        import torch
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        from svdedit.runtime import ddim
        from svdedit.runtime.avi import Attribute
        from svdedit.runtime.timing import Stages

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = torch.float16 if spec["precision"] == "fp16" and self.device == "cuda" else torch.float32
        self.ref = ref = self.load(spec)
        self.sched = DDIMScheduler.from_config(ref.scheduler.config)
        self.inverse = DDIMInverseScheduler.from_config(ref.scheduler.config)
        self.attr = Attribute.load(spec["attr"])
        self.schedule_only = SimpleNamespace(schedule=ddim.Schedule.from_json(Path(spec["engine"]) / "schedule.json"))
        self.stages = Stages()
        self.size = json.loads((Path(spec["engine"]) / "manifest.json").read_text())["image_size"]["default"]
        self.provider = getattr(self, "provider_label", None) or \
            f"torch {torch.__version__} {self.device} ({torch.get_num_threads()} threads)"

    def load(self, spec: dict):
        from diffusers import StableDiffusionPipeline

        ref = StableDiffusionPipeline.from_pretrained(spec["pipeline"], torch_dtype=self.dtype, safety_checker=None,
                                                      requires_safety_checker=False, local_files_only=True)
        return ref.to(self.device)

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def edit(self, imgs: np.ndarray, ps: list[str]) -> np.ndarray:
        from svdedit.runtime import avi
        from svdedit.runtime.edit import Editor, edit_step
        from svdedit.runtime.images import to_uint8

        torch, ref, st, knobs = self.torch, self.ref, self.stages, self.attr.knobs
        steps, n, sf = knobs.steps, len(imgs), ref.vae.config.scaling_factor
        tgts = Editor.targets([self.attr], ps)
        i_x, i_z = edit_step(self.schedule_only, knobs)
        g = knobs.guidance
        with torch.no_grad():
            with st("text"):
                e_src = ref.encode_prompt(ps, self.device, 1, False)[0]
                e_tgt = ref.encode_prompt(tgts, self.device, 1, False)[0]
                unc = ref.encode_prompt([""] * n, self.device, 1, False)[0]
                self._sync()
            with st("vae_encode"):
                x0 = torch.from_numpy(imgs).to(self.device, self.dtype)
                z = ref.vae.encode(x0).latent_dist.mean * sf
                self._sync()
            with st("invert"):
                self.inverse.set_timesteps(steps)
                traj = [z]
                for t in self.inverse.timesteps:
                    z = self.inverse.step(ref.unet(z, t, e_src).sample, t, z).prev_sample
                    traj.append(z)
                self._sync()
            x = traj[steps - i_x]

            def guided(z, cond, start, stop):
                self.sched.set_timesteps(steps)
                both = torch.cat([unc, cond])
                for t in self.sched.timesteps[start:stop]:
                    out = ref.unet(torch.cat([z, z]), t, both).sample
                    u, c = out.chunk(2)
                    z = self.sched.step(u + g * (c - u), t, z).prev_sample
                return z

            with st("sample_to_edit"):
                zz = guided(traj[-1], e_tgt, 0, i_z)
                self._sync()
            with st("svd_avi"):
                xn, zn = (a.float().cpu().numpy() for a in (x, zz))
                pair = avi.decompose(xn, zn, knobs.k, knobs.tail)
                y = torch.from_numpy(avi.apply(self.attr.params, pair, 1.0)).to(self.device, self.dtype)
            with st("sample_rest"):
                y = guided(y, e_tgt, i_x, steps)  # strength 1: the continuation is the target's embedding
                self._sync()
            with st("vae_decode"):
                out = ref.vae.decode(y / sf).sample.float().cpu().numpy()
        return to_uint8(out)


class Optimum(Diffusers):
    """Optimum's onnxruntime pipeline (ORTStableDiffusionPipeline, its own export, its own venv: facts.md),
    driven by the same loop as the diffusers peer (its components take and return torch tensors)."""

    name = "optimum (onnxruntime)"

    def load(self, spec: dict):
        import optimum.onnxruntime as ortopt

        from importlib.metadata import version

        provider = "CUDAExecutionProvider" if self.device == "cuda" else "CPUExecutionProvider"
        self.provider_label = f"optimum-onnx {version('optimum-onnx')}, onnxruntime {version('onnxruntime')} {provider}"
        return ortopt.ORTStableDiffusionPipeline.from_pretrained(spec["optimum"], provider=provider)


IMPLEMENTATIONS = {"svdedit": Svdedit, "diffusers": Diffusers, "optimum": Optimum}


def child(impl: str, spec: dict) -> dict:
    """Load one implementation, warm it up, time it; print one JSON line."""
    t0 = time.perf_counter()
    with PeakDeviceMemory() as vram:
        runner = IMPLEMENTATIONS[impl](spec)
        load_s = time.perf_counter() - t0
        rows, first = [], None
        for b in spec["batches"]:
            imgs, ps = images(b, runner.size), prompts(b)
            out = runner.edit(imgs, ps)  # warm-up at this batch size
            if first is None:
                first = out
            runs = []
            for _ in range(spec["repeats"]):
                runner.stages.reset()
                t = time.perf_counter()
                runner.edit(imgs, ps)
                runs.append((time.perf_counter() - t, dict(runner.stages.seconds)))
            total = statistics.median(r[0] for r in runs)
            rows.append({
                "batch": b, "seconds_median": total, "seconds_runs": [round(r[0], 4) for r in runs],
                "edits_per_second": b / total, "seconds_per_edit": total / b,
                "stages_median_s": {s: statistics.median(r[1].get(s, 0.0) for r in runs) for s in STAGES},
            })
    np.save(spec["out"] + f".{impl}.npy", first)
    return {"impl": runner.name, "provider": runner.provider, "load_s": load_s, "batches": rows,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_device_mib": vram.peak_mib}


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
        from benchmarks.export_sd15_shape import build_sd15_shape

        pipeline = args.work / "pipeline"
        engine = args.engine or args.work / f"engine-{args.precision}{'' if args.fuse else '-nofuse'}"
        if not (pipeline / "model_index.json").exists():
            print(f"building the SD 1.5-shape pipeline in {pipeline} ...", file=sys.stderr)
            build_sd15_shape(pipeline)
    if not (engine / "manifest.json").exists():
        print(f"exporting {pipeline} to {engine} ...", file=sys.stderr)
        export_model(pipeline, engine, ExportOptions(precision=args.precision, fuse=args.fuse), log=lambda m: None)
    return pipeline, engine


def learn(engine: Path, steps: int, work: Path) -> Path:
    """The attribute red -> blue, learned on this engine by the product's own command."""
    attr = work / f"red2blue-{steps}.safetensors"
    subprocess.run([sys.executable, "-m", "svdedit.cli", "learn", "--engine", str(engine), "--source", SOURCE,
                    "--target", TARGET, "--steps", str(steps), "-o", str(attr)], check=True, stdout=subprocess.DEVNULL)
    return attr


def run_child(impl: str, spec: dict, python: str = sys.executable) -> dict:
    proc = subprocess.run([python, "-m", "benchmarks.bench_edit", "--child", impl, "--spec", json.dumps(spec)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{impl} failed:\n{proc.stderr[-3000:]}")
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


def plot(result: dict, path: Path) -> None:
    """Left: seconds per stage of one edit at batch 1 (stacked bars, one per implementation).
    Right: edits per second against batch size."""
    from PIL import Image, ImageDraw

    colours = {"text": (140, 140, 140), "vae_encode": (86, 180, 233), "invert": (0, 114, 178),
               "sample_to_edit": (230, 159, 0), "svd_avi": (204, 121, 167), "sample_rest": (213, 94, 0),
               "vae_decode": (0, 158, 115)}
    impls = result["implementations"]
    W, H, pad = 900, 420, 60
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((pad, 10), f"one edit, {result['model_label']}, {result['steps']}+{result['steps']} steps, "
                      f"{result['device_label']}", fill="black")
    # stacked bars
    b1 = [next(r for r in i["batches"] if r["batch"] == result["batches"][0]) for i in impls]
    top = max(r["seconds_median"] for r in b1) * 1.1
    x0, y0, y1 = pad, H - pad, 50
    for k, (impl, r) in enumerate(zip(impls, b1)):
        left = x0 + 20 + k * 95
        acc = 0.0
        for s in STAGES:
            v = r["stages_median_s"][s]
            ya, yb = y0 - (acc + v) / top * (y0 - y1), y0 - acc / top * (y0 - y1)
            d.rectangle([left, ya, left + 70, yb], fill=colours[s])
            acc += v
        d.text((left, y0 + 5), impl["impl"].split()[0], fill="black")
        d.text((left, y0 - acc / top * (y0 - y1) - 14), f"{r['seconds_median']:.2f} s", fill="black")
    d.line([x0, y0, x0 + 300, y0], fill="black")
    d.text((x0 - 50, y1 - 20), f"seconds per edit (batch {result['batches'][0]})", fill="black")
    for j, s in enumerate(STAGES):
        d.rectangle([x0 + 310, y1 + 18 * j, x0 + 322, y1 + 12 + 18 * j], fill=colours[s])
        d.text((x0 + 328, y1 + 18 * j), s, fill="black")
    # throughput
    px0, px1 = 520, W - 30
    tmax = max(r["edits_per_second"] for i in impls for r in i["batches"]) * 1.15
    bs = result["batches"]
    d.line([px0, y0, px1, y0], fill="black")
    d.line([px0, y0, px0, y1], fill="black")
    d.text((px0, y1 - 20), "edits per second", fill="black")
    d.text((px1 - 60, y0 + 20), "batch size", fill="black")
    xs = {b: px0 + 20 + (px1 - px0 - 40) * (j / max(1, len(bs) - 1)) for j, b in enumerate(bs)}
    for b, xb in xs.items():
        d.text((xb - 3, y0 + 5), str(b), fill="black")
    for impl, col in zip(impls, [(0, 114, 178), (213, 94, 0), (0, 158, 115)]):
        pts = [(xs[r["batch"]], y0 - r["edits_per_second"] / tmax * (y0 - y1)) for r in impl["batches"]]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for (x, y), r in zip(pts, impl["batches"]):
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
            d.text((x + 5, y - 14), f"{r['edits_per_second']:.2g}", fill=col)
        d.text((pts[-1][0] - 80, pts[-1][1] + 6), impl["impl"].split()[0], fill=col)
    im.save(path)


def markdown(result: dict) -> str:
    impls = result["implementations"]
    ours, peers = impls[0], impls[1:]
    b0 = result["batches"][0]
    head = " | ".join(f"{i['impl']} s" for i in impls)
    ratios = " | ".join(f"{p['impl'].split()[0]} / svdedit" for p in peers)
    lines = [f"# One edit end to end: {result['model_label']}, {result['device_label']}", "",
             f"Command: `{result['command']}`. {result['steps']} inversion + {result['steps']} guided steps "
             f"(guidance {result['guidance']}), median of {result['repeats']} runs after a warm-up; each "
             f"implementation in its own process, the same images, prompts and attribute. The final images differ "
             f"from svdedit's by at most {result['max_abs_image_difference_uint8']} (uint8 levels).", "",
             f"| stage (batch {b0}) | {head} | {ratios} |", "|---|" + "---|" * (len(impls) + len(peers))]
    rows = [i["batches"][0] for i in impls]
    for st in STAGES:
        v = [r["stages_median_s"][st] for r in rows]
        lines.append(f"| {st} | " + " | ".join(f"{x:.3f}" for x in v) + " | "
                     + " | ".join(f"{x / v[0]:.2f}x" if v[0] else "-" for x in v[1:]) + " |")
    t = [r["seconds_median"] for r in rows]
    lines.append("| **edit** | " + " | ".join(f"**{x:.3f}**" for x in t) + " | "
                 + " | ".join(f"**{x / t[0]:.2f}x**" for x in t[1:]) + " |")
    lines += ["", "| batch | " + " | ".join(f"{i['impl'].split()[0]} edits/s" for i in impls) + " | "
              + " | ".join(f"svdedit / {p['impl'].split()[0]}" for p in peers) + " |",
              "|---|" + "---|" * (len(impls) + len(peers))]
    for k, b in enumerate(result["batches"]):
        e = [i["batches"][k]["edits_per_second"] for i in impls]
        lines.append(f"| {b} | " + " | ".join(f"{x:.4f}" for x in e) + " | "
                     + " | ".join(f"{e[0] / x:.2f}x" for x in e[1:]) + " |")
    lines += ["", "| | " + " | ".join(i["impl"].split()[0] for i in impls) + " |", "|---|" + "---|" * len(impls),
              "| peak host RSS (GiB) | " + " | ".join(f"{i['peak_rss_gib']:.2f}" for i in impls) + " |",
              "| svdedit's RSS / this one's | " + " | ".join(f"{ours['peak_rss_gib'] / i['peak_rss_gib']:.2f}x"
                                                          for i in impls) + " |",
              "| load (s) | " + " | ".join(f"{i['load_s']:.1f}" for i in impls) + " |"]
    if ours["peak_device_mib"] is not None:
        lines.append("| peak device memory (MiB) | " + " | ".join(str(i["peak_device_mib"]) for i in impls) + " |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--model", choices=("shapes", "sd15"), default="shapes")
    ap.add_argument("--engine", type=Path, help="an engine dir of the model (default: exported as needed)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "svdedit-sd15",
                    help="where the SD 1.5-shape pipeline and its engine dir are kept (--model sd15)")
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
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))))
        return

    from benchmarks.machine import describe

    pipeline, engine = prepare(args)
    work = Path(tempfile.mkdtemp(prefix="bench-edit-"))
    attr = learn(engine, args.steps, work)
    spec = {"engine": str(engine), "pipeline": str(pipeline), "attr": str(attr), "provider": args.provider,
            "precision": args.precision, "batches": [int(b) for b in args.batches.split(",")],
            "repeats": args.repeats, "out": str(work / "first"), "optimum": str(args.optimum_dir)}
    runs = [("svdedit", sys.executable), ("diffusers", sys.executable)]
    if args.optimum_python:
        runs.append(("optimum", args.optimum_python))
    impls = []
    for impl, python in runs:
        print(f"running {impl} ...", file=sys.stderr)
        impls.append(run_child(impl, spec, python))
    firsts = {i: np.load(spec["out"] + f".{i}.npy").astype(int) for i, _ in runs}
    differences = {i: int(np.abs(firsts[i] - firsts["svdedit"]).max()) for i, _ in runs[1:]}
    machine = describe()
    device = "gpu" if "CUDA" in impls[0]["provider"] or "Tensorrt" in impls[0]["provider"] else "cpu"
    from svdedit.runtime.avi import Attribute

    knobs = Attribute.load(attr).knobs
    result = {
        "benchmark": "bench_edit", "command": "python -m benchmarks.bench_edit " + " ".join(sys.argv[1:]),
        "model": args.model, "precision": args.precision, "fused": args.fuse,
        "model_label": "embedded model (64x64)" if args.model == "shapes" else "SD 1.5 shape (512x512, random weights)",
        "device_label": machine["gpu"] if device == "gpu" else f"{machine['cpu']}, {machine['cores']} cores",
        "steps": args.steps, "guidance": knobs.guidance, "t_edit": knobs.t_edit, "batches": spec["batches"],
        "repeats": args.repeats, "machine": machine, "versions": versions(), "implementations": impls,
        "max_abs_image_difference_uint8": max(differences.values()),
        "image_difference_by_peer_uint8": differences,
        "unet_utilisation": utilisation(args, impls, machine),
        "speedup_per_edit_batch1": impls[1]["batches"][0]["seconds_median"] / impls[0]["batches"][0]["seconds_median"],
        "peak_rss_ratio": impls[0]["peak_rss_gib"] / impls[1]["peak_rss_gib"],
    }
    RESULTS.mkdir(exist_ok=True)
    stem = f"edit_{args.model}_{args.precision}{'' if args.fuse else '_nofuse'}_{device}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    plot(result, RESULTS / f"{stem}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
