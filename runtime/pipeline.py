"""The runtime's pipeline: an engine dir, opened, turned into images. No torch.

    with Pipeline("engines/shapes") as pipe:
        latent = pipe.generate("a large red circle on the left", seed=0, steps=50, guidance=5.0)
        image = pipe.decode(latent)                              # uint8 (1, H, W, 3)
        trajectory = pipe.invert(pipe.encode(pixels), "a large red circle on the left", steps=50)
        again = pipe.sample(trajectory[-1], "a large red circle on the left", steps=50, guidance=1.0)

Latents are in the UNet's space (the VAE mean times the scaling factor), float32 (B, 4, h, w).
The story of one call, top to bottom: tokenize -> text_encoder -> (for guidance, one batched UNet
call on [uncond, cond]) -> DDIM (runtime/ddim.py) -> vae_decoder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np

from svdedit.runtime import ddim
from svdedit.runtime.contract import read_manifest
from svdedit.runtime.engine import open_engines
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.text import Tokenizer

Progress = Callable[[int, int], None]  # (steps done, steps in all)


class NonFiniteLatentError(SvdeditError):
    pass


# NumPy's own overflow warnings would precede NonFiniteLatentError, which already names the step.
def _non_finite_is_our_error():
    return np.errstate(over="ignore", invalid="ignore")


class Pipeline:
    def __init__(self, engine_dir: str | Path, provider: str = "auto"):
        self.engine_dir = Path(engine_dir)
        self.manifest = read_manifest(self.engine_dir)
        m = self.manifest
        self.schedule = ddim.Schedule.from_json(self.engine_dir / m["schedule"]["file"])
        self.tokenizer = Tokenizer(self.engine_dir / m["text"]["file"], m["text"]["sequence_length"], m["text"]["pad_id"])
        self.scaling = float(m["latent"]["vae_scaling_factor"])
        self.vae_factor = int(m["latent"]["vae_scale_factor"])
        self.channels = int(m["latent"]["channels"])
        self.size = int(m["image_size"]["default"])
        self.engines = open_engines(self.engine_dir, m, provider)

    def __enter__(self) -> "Pipeline":
        for e in self.engines.values():
            e.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for e in self.engines.values():
            e.__exit__(*exc)

    @property
    def providers(self) -> dict[str, str]:
        """The onnxruntime provider each network's session really got (after any silent fallback)."""
        return {name: getattr(e, "provider", None) for name, e in self.engines.items()}

    # ---- text ----
    def encode_prompt(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        return self.engines["text_encoder"](input_ids=ids)["last_hidden_state"]

    @functools.cached_property
    def unconditional_embedding(self) -> np.ndarray:
        """The empty prompt's embedding (1, L, D): encoded once, reused by every guided eps_fn."""
        return self.encode_prompt([""])

    def eps_fn(self, prompts: list[str], guidance: float) -> ddim.EpsFn:
        """The model as the sampler sees it. With guidance != 1, uncond and cond go in one UNet call."""
        return self.eps_fn_from_embeddings(self.encode_prompt(prompts), guidance)

    def eps_fn_from_embeddings(self, cond: np.ndarray, guidance: float) -> ddim.EpsFn:
        """eps_fn for text embeddings (B, L, D) given directly (e.g. a blend of two prompts' embeddings)."""
        unet = self.engines["unet"]
        if guidance == 1.0:
            def eps(x, t):
                ts = np.full((x.shape[0],), t, np.float32)
                return unet(sample=x, timestep=ts, encoder_hidden_states=cond)["model_output"]
            return eps
        n = len(cond)
        uncond = np.broadcast_to(self.unconditional_embedding, cond.shape)
        both = np.ascontiguousarray(np.concatenate([uncond, cond]), dtype=np.float32)
        g = np.float32(guidance)

        def eps_guided(x, t):
            x2 = np.concatenate([x, x])
            ts = np.full((2 * n,), t, np.float32)
            out = unet(sample=x2, timestep=ts, encoder_hidden_states=both)["model_output"]
            out_uncond, out_cond = out[:n], out[n:]
            return out_uncond + g * (out_cond - out_uncond)  # classifier-free guidance (Ho & Salimans 2022)
        return eps_guided

    # ---- latents ----
    def noise(self, seed: int, batch: int = 1, size: int | None = None) -> np.ndarray:
        side = (size or self.size) // self.vae_factor
        return np.random.default_rng(seed).standard_normal((batch, self.channels, side, side)).astype(np.float32)

    def _watch(self, steps: int, progress: Progress | None, offset: int = 0) -> ddim.Callback:
        def callback(i, t, x):
            if isinstance(x, np.ndarray) and not np.all(np.isfinite(x)):
                raise NonFiniteLatentError(
                    f"NaN or inf appeared in the latents at step {i + 1} (timestep {t}). With an fp16 engine this is "
                    f"usually an overflow: re-export with --precision fp32, or use a smaller guidance scale.")
            if progress is not None:
                progress(i + 1 - offset, steps)
        return callback

    def generate(self, prompt: str | list[str], seed: int = 0, steps: int = 50, guidance: float = 7.5,
                 init_noise: np.ndarray | None = None, progress: Progress | None = None) -> np.ndarray:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        x = self.noise(seed, len(prompts)) if init_noise is None else self.check_latent(init_noise, len(prompts))
        return self.sample(x, prompts, steps=steps, guidance=guidance, progress=progress)

    def sample(self, latent: np.ndarray, prompt: str | list[str], steps: int = 50, guidance: float = 7.5,
               start: int = 0, progress: Progress | None = None) -> np.ndarray:
        """Continue denoising `latent`, which sits at the noise level of sampling step index `start`."""
        prompts = [prompt] * len(latent) if isinstance(prompt, str) else list(prompt)
        with _non_finite_is_our_error():
            return ddim.sample(self.eps_fn(prompts, guidance), latent, self.schedule, steps, start=start,
                               callback=self._watch(steps - start, progress, offset=start))

    def invert(self, latent0: np.ndarray, prompt: str | list[str], steps: int = 50, guidance: float = 1.0,
               progress: Progress | None = None) -> list[np.ndarray]:
        prompts = [prompt] * len(latent0) if isinstance(prompt, str) else list(prompt)
        with _non_finite_is_our_error():
            return ddim.invert(self.eps_fn(prompts, guidance), latent0, self.schedule, steps,
                               callback=self._watch(steps, progress))

    def check_latent(self, x: np.ndarray, batch: int) -> np.ndarray:
        """A user-supplied latent (e.g. --init-noise) as float32 (batch, C, h, w), or a clear error."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        step = self.manifest["image_size"]["multiple_of"] // self.vae_factor  # latent sides must be multiples
        shape_ok = x.ndim == 4 and x.shape[0] in (1, batch) and x.shape[1] == self.channels
        if not shape_ok or x.shape[2] % step or x.shape[3] % step:
            side = self.size // self.vae_factor
            raise SvdeditError(f"initial noise has shape {x.shape}; this model wants ({batch}, {self.channels}, h, w) "
                               f"with h and w multiples of {step} (e.g. {side}x{side}).")
        if not np.all(np.isfinite(x)):
            raise SvdeditError("initial noise contains NaN or inf.")
        return np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape[1:])), dtype=np.float32)

    # ---- pixels ----
    def encode(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, 3, H, W) in [-1, 1] -> latents (the VAE's posterior mean times the scaling factor)."""
        return self.engines["vae_encoder"](image=np.ascontiguousarray(images, np.float32))["latent_mean"] * np.float32(self.scaling)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """latents -> float32 images (B, 3, H, W), about [-1, 1]."""
        return self.engines["vae_decoder"](latent=np.ascontiguousarray(latent / np.float32(self.scaling)))["image"]
