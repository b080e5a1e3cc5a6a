"""How well does the embedded model (models/shapes) draw what it is asked? Measured with the exact
attribute reader of models/shapes_data.py.

    python -m benchmarks.quality.bench_shapes_model [--model models/shapes] [--prompts 200] [--steps 50]
    python -m benchmarks.quality.bench_shapes_model --model models/shapes_xl --guidance 3.0   # the SDXL-architecture one

- for N held-out prompts (every attribute combination, cycled, each with its own seed) sampled with
  50 DDIM steps at several guidance scales: the fraction of images whose read attributes match the
  prompt, per attribute and all four at once;
- the VAE's reconstruction PSNR on held-out renders (a seed the training never used);
- a grid PNG of samples for the README.

Sampling here uses diffusers' StableDiffusionPipeline (StableDiffusionXLPipeline for models/shapes_xl) + DDIMScheduler
(torch): the runtime's own sampler is measured against it elsewhere. Writes benchmarks/results/<model>_model.{json,md}
and benchmarks/results/<model>_samples.png (<model>: the folder's name, shapes or shapes_xl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe
from models.shapes_data import ATTRIBUTES, all_attributes, dataset, read_attributes

RESULTS = Path(__file__).resolve().parents[1] / "results"
HELD_OUT_SEED = 10_000  # the training pool uses seed 0


def load_pipeline(model: Path):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if (Path(model) / "text_encoder_2").is_dir():
        pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=torch.float32, local_files_only=True)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 64) -> np.ndarray:
    """uint8 images (n, 64, 64, 3), one seeded generator per image, so results do not depend on batching."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        imgs = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                    output_type="np").images
        out.append(np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def score(images: np.ndarray, wanted: list) -> dict:
    hits = {k: 0 for k in ATTRIBUTES}
    all_four = 0
    for img, a in zip(images, wanted):
        r = read_attributes(img)
        ok = [r[k] == getattr(a, k) for k in ATTRIBUTES]
        for k, good in zip(ATTRIBUTES, ok):
            hits[k] += good
        all_four += all(ok)
    n = len(wanted)
    return {**{k: hits[k] / n for k in ATTRIBUTES}, "all_four": all_four / n, "n": n}


def vae_psnr(pipe, n: int) -> dict:
    import torch

    images, _ = dataset(n, seed=HELD_OUT_SEED)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    with torch.no_grad():
        rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    mse = ((rec - images.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))
    return {"mean_db": float(psnr.mean()), "min_db": float(psnr.min()), "n": n}


def save_grid(images: np.ndarray, path: Path, cols: int, scale: int = 2) -> None:
    from PIL import Image

    cols = min(cols, len(images))
    rows = len(images) // cols
    grid = images[: rows * cols].reshape(rows, cols, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 64, cols * 64, 3)
    Image.fromarray(grid).resize((cols * 64 * scale, rows * 64 * scale), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/shapes"))
    ap.add_argument("--prompts", type=int, default=216)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0, 3.0, 5.0, 7.5])
    ap.add_argument("--vae-images", type=int, default=500)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    pipe = load_pipeline(args.model)
    combos = all_attributes()
    wanted = [combos[i % len(combos)] for i in range(args.prompts)]
    prompts = [a.caption() for a in wanted]
    seeds = [HELD_OUT_SEED + i for i in range(args.prompts)]
    per_guidance = {}
    images_at = {}
    for g in args.guidance:
        t0 = time.perf_counter()
        images = generate(pipe, prompts, seeds, args.steps, g)
        seconds = time.perf_counter() - t0
        per_guidance[str(g)] = {**score(images, wanted), "seconds": round(seconds, 1)}
        images_at[g] = images
        print(f"guidance {g}: {per_guidance[str(g)]}")
    best = max(args.guidance, key=lambda g: (per_guidance[str(g)]["all_four"], -g))
    # per attribute value at the best guidance: what it draws well and badly
    breakdown = {}
    for k in ATTRIBUTES:
        values = sorted({getattr(a, k) for a in wanted})
        breakdown[k] = {}
        for v in values:
            idx = [i for i, a in enumerate(wanted) if getattr(a, k) == v]
            breakdown[k][v] = score(images_at[best][idx], [wanted[i] for i in idx])[k]
    psnr = vae_psnr(pipe, args.vae_images)
    print(f"vae psnr: {psnr}")
    args.out.mkdir(parents=True, exist_ok=True)
    grid_path = args.out / f"{args.model.name}_samples.png"
    spread = np.linspace(0, min(len(combos), len(wanted)) - 1, 48).round().astype(int)  # every shape, colour, ...
    save_grid(images_at[best][spread], grid_path, cols=12)
    result = {
        "benchmark": "bench_shapes_model",
        "model": str(args.model),
        "sampler": f"diffusers DDIMScheduler, {args.steps} steps",
        "prompts": args.prompts,
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "by_guidance": per_guidance,
        "best_guidance": best,
        "by_value_at_best_guidance": breakdown,
        "vae_reconstruction_psnr": psnr,
        "grid": grid_path.name,
        "machine": describe(),
    }
    (args.out / f"{args.model.name}_model.json").write_text(json.dumps(result, indent=2) + "\n")
    title = "The embedded shapes model" if args.model.name == "shapes" else f"models/{args.model.name}"
    lines = [f"# {title}: does it draw what it is asked?", "",
             f"{args.prompts} held-out prompts (every attribute combination, cycled; seeds {result['seeds']}), "
             f"{result['sampler']}, attributes read by `models/shapes_data.read_attributes`. "
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. "
             f"Command: `{' '.join(['python -m benchmarks.quality.bench_shapes_model'] + sys.argv[1:])}`.", "",
             "| guidance | shape | colour | size | position | all four | seconds |", "|---|---|---|---|---|---|---|"]
    for g, r in per_guidance.items():
        lines.append(f"| {g} | {r['shape']:.1%} | {r['colour']:.1%} | {r['size']:.1%} | {r['position']:.1%} | "
                     f"{r['all_four']:.1%} | {r['seconds']} |")
    lines += ["", f"At guidance {best}, by attribute value:", ""]
    for k, vals in breakdown.items():
        lines.append(f"- {k}: " + ", ".join(f"{v} {s:.0%}" for v, s in vals.items()))
    lines += ["", f"VAE reconstruction PSNR on {psnr['n']} held-out renders: mean {psnr['mean_db']:.2f} dB, "
                  f"min {psnr['min_db']:.2f} dB.", "", f"![samples]({grid_path.name})", ""]
    (args.out / f"{args.model.name}_model.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
