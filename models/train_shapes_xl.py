"""Train ``models/shapes_xl/``: the SDXL architecture, sized like the embedded model, on the same shapes world,
so that AVI's edit quality on SDXL can be measured with the exact attribute reader (no trained SDXL model
can be fetched here; benchmarks/quality/bench_family_quality.py compares it with models/shapes).

    python -m models.train_shapes_xl                # the committed model: seeded, ~52 min on 2 CPU cores
    python -m models.train_shapes_xl --quick -o /tmp/shapes-xl-smoke   # a 2-minute smoke run

What SDXL changes against models/train_shapes.py, and only that (the data, the schedule, the loss, the EMA and
the optimiser are the same):
- two text encoders, trained with the UNet: CLIPTextModel (32 wide, quick_gelu, padded with the end token) and
  CLIPTextModelWithProjection (48 wide, gelu, padded with "!"); the UNet's context is the concatenation of both
  encoders' penultimate hidden states (32 + 48 = 80 channels), its pooled vector the second one's projection;
- the UNet takes SDXL's added conditioning (`addition_embed_type="text_time"`): the pooled vector and six size
  numbers (original size, crop top-left, target size), here always (64, 64, 0, 0, 64, 64), as every image of
  the world is drawn whole at 64x64; linear projections in its transformers, as SDXL's;
- a dropped caption is zeros (the context and the pooled vector), as SDXL's conditioner drops it, so the
  pipeline is saved with `force_zeros_for_empty_prompt=True` and guidance runs against zeros;
- the VAE is the embedded model's (models/shapes/vae, the same AutoencoderKL architecture as SDXL's), so that
  the two models differ in the denoiser and its conditioning alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models.train_shapes import (SCHEDULER_CONFIG, UNET_CONFIG, DenoiserTrainer, Pool, TrainConfig,
                                 count_parameters, latent_statistics, render_pool)

ROOT = Path(__file__).resolve().parent
SIZE = 64
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)  # original (h, w), crop (top, left), target (h, w)
TEXT_WIDTH, TEXT_2_WIDTH, TIME_EMBED = 32, 48, 16
#: four layers each: SDXL reads the penultimate layer, so three of them shape the context (as the SD model's three)
TEXT_CONFIG = dict(hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
TEXT_2_CONFIG = dict(hidden_size=TEXT_2_WIDTH, intermediate_size=4 * TEXT_2_WIDTH, num_hidden_layers=4,
                     num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=TEXT_2_WIDTH)
XL_UNET_CONFIG = {**UNET_CONFIG, "cross_attention_dim": TEXT_WIDTH + TEXT_2_WIDTH, "use_linear_projection": True,
                  "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED,
                  "projection_class_embeddings_input_dim": len(TIME_IDS) * TIME_EMBED + TEXT_2_WIDTH}
XL_STEPS = 4500  # 0.65 s a step on the 2-core Xeon (the SD model: 6000 at 0.48 s): ~52 min in all (the issue allows 90)
QUICK = TrainConfig(pool_images=512, unet_steps=40, warmup_steps=5)


def train(cfg: TrainConfig, out_dir: Path, vae_dir: Path, log=print) -> dict:
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()
    data = render_pool(cfg, log)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    lat_mean, lat_std, scaling = latent_statistics(vae, data, log)
    encoders, unet, history, seconds = _train_unet(cfg, data, lat_mean, lat_std, scaling, rng, log)
    report = {
        "config": asdict(cfg),
        "vae": f"{vae_dir.name} (not retrained)",
        "parameters": {"unet": count_parameters(unet), "vae": count_parameters(vae),
                       "text_encoder": count_parameters(encoders[0]), "text_encoder_2": count_parameters(encoders[1])},
        "vae_scaling_factor": scaling,
        "time_ids": list(TIME_IDS),
        "seconds": {"unet_and_text": round(seconds, 1), "total": round(time.perf_counter() - t_start, 1)},
        "final_losses": {"unet_min_snr_loss": history[-1]["loss"]},
        "history": {"unet": history},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": cfg.threads},
        "versions": {"torch": torch.__version__},
    }
    _save(out_dir, vae, encoders, unet, data.tokenizer, report)
    log(f"saved {out_dir} after {report['seconds']['total'] / 60:.1f} min")
    return report


def _encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from svdedit.export.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return (CLIPTextModel(CLIPTextConfig(pad_token_id=EOS_ID, **common, **TEXT_CONFIG)),
            CLIPTextModelWithProjection(CLIPTextConfig(pad_token_id=0, **common, **TEXT_2_CONFIG)))


def context(encoders, ids, ids_2):
    """SDXL's conditioning: (both encoders' penultimate hidden states concatenated, the second one's projection)."""
    import torch

    first = encoders[0](ids, output_hidden_states=True)
    second = encoders[1](ids_2, output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def _train_unet(cfg: TrainConfig, data: Pool, lat_mean, lat_std, scaling: float, rng: np.random.Generator, log):
    """The UNet and both text encoders together (models/train_shapes.py's objective), dropped captions as zeros.
    Returns ((text_encoder, text_encoder_2), unet) holding the EMA weights, the loss history and the seconds."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from svdedit.export.clip_tokenizer import build_clip_tokenizer

    ids_2_all = torch.tensor(build_clip_tokenizer(pad_token="!")(
        data.captions, padding="max_length", max_length=77, truncation=True).input_ids)
    encoders = _encoders()
    unet = UNet2DConditionModel(**XL_UNET_CONFIG)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)})
    alphas_cumprod = noise_sched.alphas_cumprod
    trainer = DenoiserTrainer(cfg, list(unet.parameters()), [p for e in encoders for p in e.parameters()], log)
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(cfg.unet_batch, 1)
    for step in range(cfg.unet_steps):
        trainer.set_lr(step)
        idx = torch.from_numpy(rng.integers(0, len(data.x), cfg.unet_batch))
        eps_latent = torch.from_numpy(rng.standard_normal((cfg.unet_batch, 4, 16, 16)).astype(np.float32))
        z0 = (lat_mean[idx] + lat_std[idx] * eps_latent) * scaling
        keep = torch.from_numpy(rng.random(cfg.unet_batch) >= cfg.caption_dropout).float()
        t = torch.from_numpy(rng.integers(0, 1000, cfg.unet_batch))
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond, pooled = context(encoders, data.ids[idx], ids_2_all[idx])
        cond, pooled = cond * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
        pred = unet(zt, t, cond, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        trainer.step(step, pred, noise, a)
    history, seconds = trainer.finish()
    return encoders, unet, history, seconds


def _save(out_dir: Path, vae, encoders, unet, tokenizer, report: dict) -> None:
    """An ordinary diffusers StableDiffusionXLPipeline folder (safetensors) and training_log.json, atomically."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from svdedit.export.clip_tokenizer import build_clip_tokenizer
    from svdedit.runtime.files import atomic_dir

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0].eval(), text_encoder_2=encoders[1].eval(),
                                     tokenizer=tokenizer, tokenizer_2=build_clip_tokenizer(pad_token="!"),
                                     unet=unet.eval(), scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
                                     force_zeros_for_empty_prompt=True)
    with atomic_dir(out_dir, replace=True) as work:
        pipe.save_pretrained(work, safe_serialization=True)
        (work / "training_log.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "shapes_xl", help="pipeline folder to write")
    ap.add_argument("--vae", type=Path, default=ROOT / "shapes" / "vae", help="the VAE to reuse (default: the "
                    "embedded model's)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few steps (not a usable model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cfg = QUICK if args.quick else TrainConfig(unet_steps=XL_STEPS)
    cfg = TrainConfig(**{**asdict(cfg), "seed": args.seed})
    train(cfg, args.output, args.vae)


if __name__ == "__main__":
    main()
