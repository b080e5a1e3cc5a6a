"""The runtime on the embedded model (CPU): reconstruction quality, per-step overhead, and speed
against diffusers-torch doing the same work, in the same run.

    python -m benchmarks.quality.bench_runtime [--engine DIR] [--images 24] [--steps 50] [--repeats 5]

1. Reconstruction: held-out renders (never seen in training) are encoded, inverted with DDIM at
   guidance 1 (50 steps), resampled (50 steps, guidance 1) and decoded; PSNR against the input,
   next to the VAE round trip alone (the ceiling). Target: within 1 dB of the VAE.
2. Overhead: the time of a 50-step guided sampling loop (the runtime's own DDIM loop, manifest
   checks, guidance arithmetic and NaN watch) minus the time spent inside onnxruntime's UNet
   `session.run`, as a fraction of the loop (target < 5%). Text encoding, once per call, is outside.
3. End to end, invert + resample of one image (encode, 50 + 50 UNet steps, decode): the runtime vs
   diffusers (torch, same model folder, DDIMInverseScheduler + DDIMScheduler, same steps). Warm-up
   first, then the median of --repeats runs of each, interleaved. Reported as a ratio.

Writes benchmarks/results/runtime_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.engines import ensure_engine
from benchmarks.machine import describe
from models.shapes_data import dataset

RESULTS = Path(__file__).resolve().parents[1] / "results"
HELD_OUT_SEED = 20_000


def reconstruction(pipe, n: int, steps: int) -> dict:
    from svdedit.runtime.images import psnr, to_uint8

    images, attrs = dataset(n, seed=HELD_OUT_SEED)
    rows = []
    for img, a in zip(images, attrs):
        x = (img.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
        z0 = pipe.encode(x)
        vae = to_uint8(pipe.decode(z0))[0]
        zt = pipe.invert(z0, a.caption(), steps=steps)[-1]
        rec = to_uint8(pipe.decode(pipe.sample(zt, a.caption(), steps=steps, guidance=1.0)))[0]
        rows.append((psnr(rec, img), psnr(vae, img)))
    rec, vae = np.array(rows).T
    return {"images": n, "steps": steps, "psnr_reconstruction_mean_db": float(rec.mean()),
            "psnr_vae_round_trip_mean_db": float(vae.mean()), "gap_db": float(vae.mean() - rec.mean()),
            "worst_gap_db": float((vae - rec).max()), "within_1db": bool(vae.mean() - rec.mean() <= 1.0)}


def overhead(pipe, steps: int, repeats: int) -> dict:
    unet = pipe.engines["unet"]
    real_run = unet.session.run
    spent = [0.0]

    def timed_run(*a, **k):
        t0 = time.perf_counter()
        out = real_run(*a, **k)
        spent[0] += time.perf_counter() - t0
        return out

    # the step loop alone: text encoding happens once, before the loop, and is not per-step work
    cond = pipe.encode_prompt(["a large red circle on the left"])
    unet.session.run = timed_run
    try:
        x = pipe.noise(0)
        pipe.denoise(x, cond, steps, 5.0)  # warm-up
        fractions, per_step = [], []
        for _ in range(repeats):
            spent[0] = 0.0
            t0 = time.perf_counter()
            pipe.denoise(x, cond, steps, 5.0)
            total = time.perf_counter() - t0
            fractions.append((total - spent[0]) / total)
            per_step.append(total / steps)
    finally:
        unet.session.run = real_run
    return {"steps": steps, "guidance": 5.0, "overhead_fraction_median": statistics.median(fractions),
            "ms_per_step_median": 1e3 * statistics.median(per_step), "target": "< 0.05"}


def end_to_end(pipe, model: Path, steps: int, repeats: int) -> dict:
    import torch
    from diffusers import DDIMInverseScheduler, DDIMScheduler, StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                                                  requires_safety_checker=False, local_files_only=True)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config)
    inverse = DDIMInverseScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    images, attrs = dataset(1, seed=HELD_OUT_SEED)
    x = (images[0].astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    prompt = attrs[0].caption()

    def ours():
        z0 = pipe.encode(x)
        zt = pipe.invert(z0, prompt, steps=steps)[-1]
        return pipe.decode(pipe.sample(zt, prompt, steps=steps, guidance=1.0))

    def theirs():
        with torch.no_grad():
            z = ref.vae.encode(torch.from_numpy(x)).latent_dist.mean * ref.vae.config.scaling_factor
            embeds, _ = ref.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)
            inverse.set_timesteps(steps)
            for t in inverse.timesteps:
                z = inverse.step(ref.unet(z, t, embeds).sample, t, z).prev_sample
            out = ref(prompt_embeds=embeds, latents=z, num_inference_steps=steps, guidance_scale=1.0,
                      output_type="latent").images
            return ref.vae.decode(out / ref.vae.config.scaling_factor).sample.numpy()

    a, b = ours(), theirs()  # warm-up, and the two must agree
    agree = float(np.abs(a - b).max())
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        t_theirs.append(time.perf_counter() - t0)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    return {"steps": f"{steps} inversion + {steps} sampling, guidance 1", "svdedit_s_median": mo,
            "diffusers_torch_s_median": mt, "speedup_vs_diffusers": mt / mo, "max_abs_image_difference": agree,
            "repeats": repeats, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/shapes"))
    ap.add_argument("--engine", type=Path, help="an engine dir of --model (default: export one to a temp dir)")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from svdedit.runtime.pipeline import Pipeline

    engine = ensure_engine(args.model, args.engine)
    with Pipeline(engine, "cpu") as pipe:
        result = {
            "benchmark": "bench_runtime",
            "model": str(args.model),
            "provider": pipe.providers["unet"],
            "machine": describe(),
            "reconstruction": reconstruction(pipe, args.images, args.steps),
            "overhead": overhead(pipe, args.steps, args.repeats),
            "end_to_end": end_to_end(pipe, args.model, args.steps, args.repeats),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    r, o, e = result["reconstruction"], result["overhead"], result["end_to_end"]
    md = [
        "# The runtime on the embedded model (CPU)", "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; onnxruntime "
        f"{result['provider']}. Command: `python -m benchmarks.quality.bench_runtime`.", "",
        "| measure | value | target |", "|---|---|---|",
        f"| reconstruction PSNR ({r['images']} held-out renders, {r['steps']}+{r['steps']} steps, guidance 1) | "
        f"{r['psnr_reconstruction_mean_db']:.2f} dB | within 1 dB of the VAE |",
        f"| VAE round-trip PSNR (ceiling) | {r['psnr_vae_round_trip_mean_db']:.2f} dB | |",
        f"| gap (mean / worst image) | {r['gap_db']:.2f} / {r['worst_gap_db']:.2f} dB | <= 1 dB |",
        f"| runtime overhead per sampling step beyond the UNet call | {o['overhead_fraction_median']:.1%} "
        f"({o['ms_per_step_median']:.2f} ms per guided step) | < 5% |",
        f"| invert + resample, svdedit (ONNX Runtime) | {e['svdedit_s_median']:.3f} s | |",
        f"| invert + resample, diffusers (torch, {e['torch_threads']} threads) | {e['diffusers_torch_s_median']:.3f} s | |",
        f"| speed-up vs diffusers | {e['speedup_vs_diffusers']:.2f}x | |", "",
        f"Both produce the same image within {e['max_abs_image_difference']:.1e} (max abs, [-1, 1] scale).", "",
    ]
    (RESULTS / "runtime_cpu.md").write_text("\n".join(md))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
