"""The UNet split for step caching (DeepCache, Ma et al. 2024): `svdedit export --step-cache`.

Adjacent denoising steps change a UNet's deep features little. DeepCache computes them every N steps and,
in between, runs only the shallow branch at full resolution with the cached deep feature. The export cuts
a diffusers UNet2DConditionModel into three graphs whose weights are disjoint (nothing is loaded twice):

    unet_in    timestep embedding, conv_in, down_blocks[0] without its downsampler
               -> hidden (the last full-resolution feature), skips (conv_in's and each layer's, concatenated), emb
    unet_deep  down_blocks[0]'s downsampler, down_blocks[1:], the mid block, up_blocks[:-1]   (hidden, emb, text)
               -> deep (up_blocks[-2]'s output, upsampled to full resolution)
    unet_out   up_blocks[-1] fed with deep and the skips, conv_norm_out, conv_act, conv_out -> model_output

A full step runs the three in turn and equals the whole UNet (the export checks the composition against
torch); a cached step runs unet_in and unet_out with the last step's `deep`. On SD 1.5 the full-resolution
blocks are 38.6% of a UNet call on this CPU (measured with torch, 64x64 latent), so a cached step costs
about 0.39 of a full one. The interval N is a run-time setting (runtime/svdedit/runtime/pipeline.py), not part of the export.
"""

from __future__ import annotations

from svdedit.runtime.engines.contract import ModelDims
from svdedit.runtime.errors import SvdeditError


def check_splittable(unet, xl: bool = False) -> None:
    """Refuse UNets whose forward() does more than the split reproduces (class or added embeddings other than
    SDXL's text_time, ...)."""
    cfg = unet.config
    added = cfg.get("addition_embed_type")
    extras = {
        "class_embed_type": cfg.get("class_embed_type"),
        "addition_embed_type": None if xl and added == "text_time" else added,
        "encoder_hid_dim": cfg.get("encoder_hid_dim"), "center_input_sample": cfg.get("center_input_sample") or None,
        "num_class_embeds": cfg.get("num_class_embeds"),
    }
    used = {k: v for k, v in extras.items() if v}
    if used:
        raise SvdeditError(f"--step-cache splits SD 1.x/2.x and SDXL UNets; this one uses {used}, which the split does not "
                           f"reproduce. Export it without --step-cache.")
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2 or not unet.down_blocks[0].downsamplers:
        raise SvdeditError("--step-cache needs a UNet with at least two resolutions (a downsampler in its first "
                           "block); export this one without --step-cache.")


def split_dims(unet, dims: ModelDims) -> ModelDims:
    """The model's sizes with those of the split filled in."""
    from dataclasses import replace

    c0 = int(unet.config.block_out_channels[0])
    layers = len(unet.down_blocks[0].resnets)
    deep = int(unet.up_blocks[-1].resnets[0].conv1.in_channels) - c0  # the last up block's first input = deep + skip
    return replace(dims, time_embed_dim=int(unet.time_embedding.linear_2.out_features), block_channels=c0,
                   skip_channels=c0 * (1 + layers), deep_channels=deep)


def modules(unet, xl: bool = False) -> dict:
    """{"unet_in", "unet_deep", "unet_out"}: torch modules with the contract's inputs and outputs (`xl`: unet_in also
    takes SDXL's text_embeds and time_ids, which enter the time embedding only)."""
    import torch

    check_splittable(unet, xl)

    def call(block, text, *args, **kwargs):
        """A diffusers block, given the text embedding only where it has cross-attention (as UNet2DConditionModel
        calls them)."""
        if getattr(block, "has_cross_attention", False):
            kwargs["encoder_hidden_states"] = text
        return block(*args, **kwargs)

    class Part(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

    class UnetIn(Part):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
            m = self.m
            emb = m.time_embedding(m.get_time_embed(sample=sample, timestep=timestep), None)
            if text_embeds is not None:  # SDXL: as UNet2DConditionModel.forward adds get_aug_embed's "text_time"
                emb = emb + m.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})
            h = m.conv_in(sample)
            skips = [h]
            block = m.down_blocks[0]
            attentions = block.attentions if getattr(block, "has_cross_attention", False) else [None] * len(block.resnets)
            for resnet, attention in zip(block.resnets, attentions):
                h = resnet(h, emb)
                if attention is not None:
                    h = attention(h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
                skips.append(h)
            return h, torch.cat(skips, dim=1), emb

    class UnetDeep(Part):
        def forward(self, hidden, emb, encoder_hidden_states):
            m, text = self.m, encoder_hidden_states
            h = hidden
            for down in m.down_blocks[0].downsamplers:
                h = down(h)
            res = (h,)
            for block in m.down_blocks[1:]:
                h, r = call(block, text, hidden_states=h, temb=emb)
                res += r
            if m.mid_block is not None:
                h = call(m.mid_block, text, h, emb)
            for block in m.up_blocks[:-1]:
                n = len(block.resnets)
                r, res = res[-n:], res[:-n]
                h = call(block, text, hidden_states=h, temb=emb, res_hidden_states_tuple=r)
            return h

    class UnetOut(Part):
        def forward(self, deep, skips, emb, encoder_hidden_states):
            m = self.m
            block = m.up_blocks[-1]
            r = tuple(torch.chunk(skips, len(block.resnets), dim=1))
            h = call(block, encoder_hidden_states, hidden_states=deep, temb=emb, res_hidden_states_tuple=r)
            if m.conv_norm_out is not None:
                h = m.conv_act(m.conv_norm_out(h))
            return m.conv_out(h)

    if xl:
        class XlUnetIn(UnetIn):
            def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
                return super().forward(sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        first = XlUnetIn(unet)
    else:
        class SdUnetIn(UnetIn):
            def forward(self, sample, timestep, encoder_hidden_states):
                return super().forward(sample, timestep, encoder_hidden_states)
        first = SdUnetIn(unet)
    return {"unet_in": first, "unet_deep": UnetDeep(unet), "unet_out": UnetOut(unet)}
