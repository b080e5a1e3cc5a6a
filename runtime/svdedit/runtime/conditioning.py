"""What the UNet is conditioned on, as one array per prompt. No torch.

SD 1.x/2.x: the conditioning of B prompts is the text encoder's last hidden state, (B, L, D).

SDXL (``XlConditioning``): (B, L + 1, D) with D = the two encoders' widths (768 + 1280 = 2048)::

    rows 0 .. L-1   both encoders' penultimate hidden states, side by side  -> the UNet's encoder_hidden_states
    row L           [ pooled (P = 1280) | time_ids (6) | zeros ]            -> text_embeds, time_ids

time_ids are SDXL's size conditioning: (original height, width, crop top, left, target height, width) in pixels.
All six zero (what ``encode`` gives) means "the latent's own size, uncropped", which is what
StableDiffusionXLPipeline uses for generation; an edit of a real image sets them from what ``fit`` did to it
(``with_time_ids``). The unconditional embedding is zeros where the pipeline's config says
force_zeros_for_empty_prompt (SDXL base does), else the empty prompt's; under guidance it takes the time_ids of
the prompt it is paired with, as diffusers' negative_add_time_ids default to add_time_ids.

Why one array: every step of the editing method that does arithmetic on text embeddings (learn.py, edit.py:
prompt blends for the continuation, caption-free edits e(caption) + e(target) - e(source), the edit cache's keys)
works on the whole unchanged. Its meaning with two encoders and a pooled vector is therefore defined here, once:
a blend (1 - a) e1 + a e2 blends the hidden states of both encoders and the pooled embedding with the same weight
(what diffusers' per-tensor interpolation of prompt_embeds and pooled_prompt_embeds does), and a direction
e(target) - e(source) moves all three; the time_ids of an image are the same on both sides of every such
sum, so the arithmetic leaves them unchanged (a direction's time_ids are zero), and they are part of every
cache key because they are part of the array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svdedit.runtime.engines import Manifest, Runner
from svdedit.runtime.text import Tokenizer


class TextConditioning:
    """SD 1.x/2.x: one text encoder, its last hidden state."""

    def __init__(self, engine_dir: Path, manifest: Manifest, engines: dict[str, Runner]):
        m = manifest
        self.engines = engines
        self.tokenizer = Tokenizer(engine_dir / m.text.file, m.text.sequence_length, m.text.pad_id)

    def encode(self, prompts: list[str]) -> np.ndarray:
        return self.engines["text_encoder"](input_ids=self.tokenizer(prompts))["last_hidden_state"]

    def unconditional(self) -> np.ndarray:
        """The empty prompt's conditioning (1, ...)."""
        return self.encode([""])

    def paired(self, uncond: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """The unconditional conditioning to run beside `cond` under guidance, as a batch of len(cond)."""
        return np.broadcast_to(uncond, cond.shape)

    def unet_inputs(self, x: np.ndarray, cond: np.ndarray) -> dict[str, np.ndarray]:
        """The UNet's inputs besides sample and timestep, for latents `x`."""
        return {"encoder_hidden_states": cond}


class XlConditioning(TextConditioning):
    """SDXL: two text encoders, a pooled embedding and the size conditioning, packed as the module docstring says."""

    def __init__(self, engine_dir: Path, manifest: Manifest, engines: dict[str, Runner]):
        super().__init__(engine_dir, manifest, engines)
        m, ac = manifest, manifest.added_conditioning
        self.tokenizer_2 = Tokenizer(engine_dir / m.text_2.file, m.text_2.sequence_length, m.text_2.pad_id)
        self.length = m.text.sequence_length
        self.width, self.width_1 = m.text.hidden_size, ac.hidden_sizes[0]
        self.pooled = ac.pooled_size
        self.time_ids = slice(ac.pooled_size, ac.pooled_size + ac.time_ids)
        self.zeros_for_empty = ac.force_zeros_for_empty_prompt
        self.vae_factor = m.latent.vae_scale_factor

    def encode(self, prompts: list[str]) -> np.ndarray:
        h1 = self.engines["text_encoder"](input_ids=self.tokenizer(prompts))["hidden_states"]
        second = self.engines["text_encoder_2"](input_ids=self.tokenizer_2(prompts))
        cond = np.zeros((len(prompts), self.length + 1, self.width), np.float32)
        cond[:, :self.length, :self.width_1] = h1
        cond[:, :self.length, self.width_1:] = second["hidden_states"]
        cond[:, self.length, :self.pooled] = second["text_embeds"]
        return cond

    def unconditional(self) -> np.ndarray:
        if self.zeros_for_empty:  # StableDiffusionXLPipeline: zeros for hidden states and pooled alike
            return np.zeros((1, self.length + 1, self.width), np.float32)
        return self.encode([""])

    def paired(self, uncond: np.ndarray, cond: np.ndarray) -> np.ndarray:
        out = np.array(np.broadcast_to(uncond, cond.shape))
        out[:, self.length, self.time_ids] = cond[:, self.length, self.time_ids]
        return out

    def with_time_ids(self, cond: np.ndarray, time_ids) -> np.ndarray:
        """`cond` with the size conditioning `time_ids` ((B, 6) or (6,): original h, w, crop top, left, target h,
        w) for every row."""
        out = np.array(cond, dtype=np.float32)
        out[:, self.length, self.time_ids] = np.asarray(time_ids, np.float32)
        return out

    def unet_inputs(self, x: np.ndarray, cond: np.ndarray) -> dict[str, np.ndarray]:
        row = cond[:, self.length]
        time_ids = np.array(row[:, self.time_ids], dtype=np.float32)
        unset = ~time_ids.any(axis=1)
        if unset.any():  # the latent's own size, uncropped
            h, w = x.shape[2] * self.vae_factor, x.shape[3] * self.vae_factor
            time_ids[unset] = (h, w, 0, 0, h, w)
        return {"encoder_hidden_states": np.ascontiguousarray(cond[:, :self.length]),
                "text_embeds": np.ascontiguousarray(row[:, :self.pooled]), "time_ids": time_ids}


def conditioning_for(engine_dir: Path, manifest: Manifest, engines: dict[str, Runner]) -> TextConditioning:
    return (XlConditioning if manifest.is_xl else TextConditioning)(engine_dir, manifest, engines)
