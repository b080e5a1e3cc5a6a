"""The four networks as the export traces them: torch modules with exactly the contract's inputs and outputs
(``wrappers``), and the model's sizes read from its configs (``geometry``), which shape the seeded inputs of
the trace and of the parity check (``Geometry.feeds``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from svdedit.export.source import Components
from svdedit.runtime.engines.contract import TIME_IDS, ModelDims, NetworkSpec, axis_sizes, resolve_shape


def wrappers(c: Components, step_cache: bool = False) -> dict:
    """Each network as a torch module whose forward() has exactly the contract's inputs and outputs; with
    `step_cache`, the UNet as the three parts of export/svdedit/export/step_cache.py instead of one."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, return_dict=False)[0]  # last_hidden_state

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    # ---- SDXL (as StableDiffusionXLPipeline.encode_prompt and its UNet call) ----
    class PenultimateTextEncoder(torch.nn.Module):
        def __init__(self, m, pooled: bool):
            super().__init__()
            self.m, self.pooled = m, pooled

        def forward(self, input_ids):
            out = self.m(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            hidden = out.hidden_states[-2]
            return (hidden, out.text_embeds) if self.pooled else hidden

    class XlUNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            added = {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.m(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            # the posterior mean: inversion needs a deterministic encoding, never latent_dist.sample()
            return self.m.encode(image, return_dict=False)[0].mean

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent):
            return self.m.decode(latent, return_dict=False)[0]

    if step_cache:
        from svdedit.export.step_cache import modules

        unet = modules(c.unet, xl=c.is_xl)
    else:
        unet = {"unet": XlUNet(c.unet) if c.is_xl else UNet(c.unet)}
    if c.is_xl:
        text = {"text_encoder": PenultimateTextEncoder(c.text_encoder, pooled=False),
                "text_encoder_2": PenultimateTextEncoder(c.text_encoder_2, pooled=True)}
    else:
        text = {"text_encoder": TextEncoder(c.text_encoder)}
    return {**text, **unet, "vae_encoder": VaeEncoder(c.vae), "vae_decoder": VaeDecoder(c.vae)}


@dataclass(frozen=True)
class Geometry:
    """Sizes of one model, read from its configs."""

    dims: ModelDims
    vae_scale_factor: int  # image pixels per latent pixel (8 for SD)
    multiple_of: int  # image sides must be multiples of this (VAE factor x UNet downsampling)
    default_size: int  # the image side the model was trained at
    vocab_size: int

    def feeds(self, spec: NetworkSpec, batch: int, image_side: int, rng: np.random.Generator) -> dict:
        """Seeded random inputs for one network, shaped by the contract."""
        sizes = axis_sizes(batch, image_side, self.vae_scale_factor)
        feeds = {}
        for t in spec.inputs:
            shape = resolve_shape(self.dims.resolve(t.dims), sizes)
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(0, self.vocab_size, size=shape, dtype=np.int64)
            elif t.name == "timestep":
                feeds[t.name] = rng.integers(0, 1000, size=shape).astype(np.float32)
            elif t.name == "image":
                feeds[t.name] = rng.uniform(-1, 1, size=shape).astype(np.float32)
            elif t.name == "time_ids":  # sizes and crop offsets in pixels, as SDXL is conditioned on
                feeds[t.name] = rng.integers(0, 2 * self.default_size, size=shape).astype(np.float32)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def geometry(c: Components, step_cache: bool = False) -> Geometry:
    """The sizes of the model, from its configs (with those of the split UNet, `step_cache`)."""
    vae_factor = 2 ** (len(c.vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(c.unet.config.down_block_types) - 1)
    dims = ModelDims(
        sequence_length=int(c.tokenizer.model_max_length),
        hidden_size=int(c.text_encoder.config.hidden_size),
        latent_channels=int(c.vae.config.latent_channels),
    )
    if c.is_xl:
        from dataclasses import replace

        h1, h2 = int(c.text_encoder.config.hidden_size), int(c.text_encoder_2.config.hidden_size)
        dims = replace(dims, hidden_size=h1 + h2, hidden_size_1=h1, hidden_size_2=h2,
                       pooled_size=int(c.text_encoder_2.config.projection_dim), time_ids_size=TIME_IDS)
    if step_cache:
        from svdedit.export.step_cache import split_dims

        dims = split_dims(c.unet, dims)
    return Geometry(
        dims=dims,
        vae_scale_factor=vae_factor,
        multiple_of=vae_factor * unet_factor,
        default_size=int(c.unet.config.sample_size) * vae_factor,
        vocab_size=int(c.text_encoder.config.vocab_size),
    )
