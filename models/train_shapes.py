"""Train the embedded default model, ``models/shapes/``: a small text-to-image latent diffusion model
of the same family as Stable Diffusion, on the procedural shapes world (models/shapes_data.py).

    python -m models.train_shapes                # the committed model: seeded, ~52 min on 2 CPU cores
    python -m models.train_shapes --quick -o /tmp/shapes-smoke   # a 2-minute smoke run

The stages:
1. render a pool of captioned 64x64 images from the seed (on the fly; never stored);
2. train an AutoencoderKL 64x64x3 <-> 16x16x4 (L1 + MSE reconstruction, a small KL term), then set
   its scaling_factor to 1 / std of the latents, as SD does;
3. encode the pool once; train the UNet2DConditionModel (cross-attention) and the CLIPTextModel
   (real CLIP BPE tokenizer, 77 tokens) together on the epsilon objective with scaled-linear DDPM
   betas, dropping 10% of captions so that classifier-free guidance works; keep an EMA of both;
4. save an ordinary diffusers StableDiffusionPipeline folder (EMA weights, safetensors) plus
   training_log.json, written under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.shapes_data import dataset


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    pool_images: int = 24000
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): faster convergence
    threads: int = 2


QUICK = TrainConfig(pool_images=512, vae_steps=30, unet_steps=40, warmup_steps=5)

# ---- the model: SD's architecture, sized for 64x64 images and a 2-core CPU ----
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=16, sample_size=64)
# attention at 8x8 and 4x4 only: at 16x16 it tripled the step time (1.26 s vs 0.41 s, batch 64, 2 cores)
UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128),
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   layers_per_block=1, cross_attention_dim=48, attention_head_dim=8, norm_num_groups=16)
# 48 wide: the 49408-token embedding alone is 9.5 MB in fp32 (weights must stay under 30 MB in all)
TEXT_CONFIG = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                   max_position_embeddings=77, hidden_act="quick_gelu")
SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def lr_schedule(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train(cfg: TrainConfig, out_dir: Path, log=print) -> dict:
    """The stages of the module docstring, in order (the order matters: they draw from the same seeded RNGs)."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t_start = time.perf_counter()
    data = render_pool(cfg, log)                                                    # 1.
    vae, vae_history, t_vae = _train_vae(cfg, data, rng, log)                       # 2.
    lat_mean, lat_std, scaling = latent_statistics(vae, data, log)                  # 3.
    text_encoder, unet, unet_history, t_unet = _train_unet(cfg, data, lat_mean, lat_std, scaling, rng, log)
    report = {                                                                      # 4.
        "config": asdict(cfg),
        "parameters": {"unet": count_parameters(unet), "vae": count_parameters(vae),
                       "text_encoder": count_parameters(text_encoder)},
        "vae_scaling_factor": scaling,
        "seconds": {"vae": round(t_vae, 1), "unet_and_text": round(t_unet, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "final_losses": {"vae_reconstruction": vae_history[-1]["rec"], "unet_min_snr_loss": unet_history[-1]["loss"]},
        "history": {"vae": vae_history, "unet": unet_history},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": cfg.threads},
        "versions": {"torch": torch.__version__},
    }
    _save(out_dir, vae, text_encoder, unet, data.tokenizer, report)
    log(f"saved {out_dir} after {report['seconds']['total'] / 60:.1f} min")
    return report


@dataclass
class Pool:
    x: object          # torch float (N, 3, 64, 64) in [-1, 1]
    ids: object        # torch int64 (N, 77): the captions' token ids
    empty_ids: object  # torch int64 (1, 77): the empty caption (classifier-free guidance dropout)
    tokenizer: object
    captions: list     # the captions of x, as text


def render_pool(cfg: TrainConfig, log) -> Pool:
    """1. The pool of captioned images, rendered from the seed, and their token ids."""
    import torch

    from svdedit.export.clip_tokenizer import build_clip_tokenizer

    t0 = time.perf_counter()
    images, attrs = dataset(cfg.pool_images, seed=cfg.seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    tokenizer = build_clip_tokenizer()
    captions = [a.caption() for a in attrs]
    ids_all = torch.tensor(tokenizer(captions, padding="max_length", max_length=77, truncation=True).input_ids)
    empty_ids = torch.tensor(tokenizer([""], padding="max_length", max_length=77).input_ids)
    log(f"data: {len(images)} images rendered in {time.perf_counter() - t0:.1f} s")
    return Pool(x_all, ids_all, empty_ids, tokenizer, captions)


def _train_vae(cfg: TrainConfig, data: Pool, rng: np.random.Generator, log):
    """2. The AutoencoderKL: L1 + MSE reconstruction and a small KL term. Returns (vae, history, seconds)."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    history = []
    t0 = time.perf_counter()
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps)
        x = data.x[rng.integers(0, len(data.x), cfg.vae_batch)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        kl = post.kl().mean()
        loss = rec_loss + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            history.append({"step": step, "rec": rec_loss.item(), "kl": kl.item()})
            log(f"vae {step:5d}/{cfg.vae_steps}  rec {rec_loss.item():.4f}  kl {kl.item():.1f}  "
                f"{time.perf_counter() - t0:.0f} s")
    vae.eval().requires_grad_(False)
    return vae, history, time.perf_counter() - t0


def latent_statistics(vae, data: Pool, log):
    """3. The posterior mean and std of the whole pool, and SD's scaling factor 1 / std (set in the VAE's config)."""
    import torch

    with torch.no_grad():
        means, stds = [], []
        for i in range(0, len(data.x), 256):
            post = vae.encode(data.x[i : i + 256]).latent_dist
            means.append(post.mean)
            stds.append(post.std)
        lat_mean, lat_std = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / lat_mean.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae scaling_factor {scaling:.4f}")
    return lat_mean, lat_std, scaling


def _train_unet(cfg: TrainConfig, data: Pool, lat_mean, lat_std, scaling: float, rng: np.random.Generator, log):
    """3. The UNet and the text encoder together, epsilon objective with min-SNR weighting, caption dropout, EMA.
    Returns (text_encoder, unet) holding the EMA weights, the loss history and the seconds spent."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from svdedit.export.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                                                pad_token_id=EOS_ID, **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)})
    alphas_cumprod = noise_sched.alphas_cumprod
    trainer = DenoiserTrainer(cfg, list(unet.parameters()), list(text_encoder.parameters()), log)
    for step in range(cfg.unet_steps):
        trainer.set_lr(step)
        idx = torch.from_numpy(rng.integers(0, len(data.x), cfg.unet_batch))
        eps_latent = torch.from_numpy(rng.standard_normal((cfg.unet_batch, 4, 16, 16)).astype(np.float32))
        z0 = (lat_mean[idx] + lat_std[idx] * eps_latent) * scaling
        ids = data.ids[idx].clone()
        drop = torch.from_numpy(rng.random(cfg.unet_batch) < cfg.caption_dropout)
        ids[drop] = data.empty_ids
        t = torch.from_numpy(rng.integers(0, 1000, cfg.unet_batch))
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32))
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids).last_hidden_state
        trainer.step(step, unet(zt, t, cond).sample, noise, a)
    history, seconds = trainer.finish()
    return text_encoder, unet, history, seconds


class DenoiserTrainer:
    """What both training scripts do each step once the UNet has predicted the noise: the min-SNR weighted epsilon
    loss, AdamW (the UNet's learning rate and the text encoders'), gradient clipping, the EMA and the log line; at
    the end the EMA weights are copied into the models."""

    def __init__(self, cfg: TrainConfig, unet_params: list, text_params: list, log):
        import torch

        self.cfg, self.log, self.torch = cfg, log, torch
        self.opt = torch.optim.AdamW([{"params": unet_params, "lr": cfg.unet_lr},
                                      {"params": text_params, "lr": cfg.text_lr}], betas=(0.9, 0.99), weight_decay=1e-2)
        self.live = unet_params + text_params
        self.ema = [p.detach().clone() for p in self.live]
        self.history: list[dict] = []
        self.t0 = time.perf_counter()

    def set_lr(self, step: int) -> None:
        for g, base in zip(self.opt.param_groups, (self.cfg.unet_lr, self.cfg.text_lr)):
            g["lr"] = lr_schedule(step, self.cfg.unet_steps, base, self.cfg.warmup_steps)

    def step(self, step: int, pred, noise, a) -> None:
        torch, cfg = self.torch, self.cfg
        snr = a.view(-1) / (1 - a.view(-1))
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.live, 1.0)
        self.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.live], 1 - decay)
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            self.history.append({"step": step, "loss": loss.item()})
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / (step + 1) * (cfg.unet_steps - step - 1)
            self.log(f"unet {step:5d}/{cfg.unet_steps}  loss {loss.item():.4f}  {elapsed:.0f} s  (eta {eta / 60:.1f} min)")

    def finish(self) -> tuple[list[dict], float]:
        """Copy the EMA weights into the models; (the loss history, the seconds since the start)."""
        seconds = time.perf_counter() - self.t0
        with self.torch.no_grad():
            for p, e in zip(self.live, self.ema):
                p.copy_(e)
        return self.history, seconds


def _save(out_dir: Path, vae, text_encoder, unet, tokenizer, report: dict) -> None:
    """4. An ordinary diffusers StableDiffusionPipeline folder (safetensors) and training_log.json, atomically."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from svdedit.runtime.files import atomic_dir

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with atomic_dir(out_dir, replace=True) as work:
        pipe.save_pretrained(work, safe_serialization=True)
        (work / "training_log.json").write_text(json.dumps(report, indent=1) + "\n")


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "shapes", help="pipeline folder to write")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few steps (not a usable model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cfg = QUICK if args.quick else TrainConfig()
    cfg = TrainConfig(**{**asdict(cfg), "seed": args.seed})
    train(cfg, args.output)


if __name__ == "__main__":
    main()
