"""The runtime against diffusers' StableDiffusionXLPipeline (torch) on the tiny SDXL fixture, from the same noise.

Generation with DDIM and guidance (the unconditional embedding zeros, force_zeros_for_empty_prompt), with the
default size conditioning and with an image's own (original size and crop); DDIM inversion; both encoders' hidden
states and the pooled embedding. The packed conditioning array is runtime/svdedit/runtime/conditioning.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch
PROMPT = "a large red circle on the left"
L = 77


@pytest.fixture(scope="module")
def reference(xl_pipeline):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(xl_pipeline, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(xl_engine):
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(xl_engine) as p:
        yield p


def test_the_engine_dir_is_sdxl(pipe):
    m = pipe.manifest
    assert (m.family, m.raw["format_version"], m.latent.vae_scaling_factor) == ("sdxl", 2, pytest.approx(0.13025))
    assert set(m.networks) == {"text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"}
    assert [t.name for t in m.networks["unet"].inputs] == ["sample", "timestep", "encoder_hidden_states",
                                                          "text_embeds", "time_ids"]
    assert m.added_conditioning.hidden_sizes == (32, 48) and m.added_conditioning.force_zeros_for_empty_prompt
    assert (m.text.pad_id, m.text_2.pad_id) == (m.text.eos_id, 0)  # the second tokenizer pads with "!"


def test_text_embeddings_match_diffusers(pipe, reference):
    import torch

    with torch.no_grad():
        hidden, negative, pooled, negative_pooled = reference.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    cond = pipe.encode_prompt([PROMPT])
    assert cond.shape == (1, L + 1, 80)
    np.testing.assert_allclose(cond[:, :L], hidden.numpy(), atol=1e-4)
    np.testing.assert_allclose(cond[:, L, :48], pooled.numpy(), atol=1e-4)
    assert not cond[:, L, 48:].any()  # time ids unset: the latent's own size
    assert float(pooled.abs().max()) > 0.1 and float(hidden.abs().max()) > 0.1
    # force_zeros_for_empty_prompt: the unconditional embedding is zeros, not the empty prompt's
    assert not negative.any() and not negative_pooled.any() and not pipe.unconditional_embedding.any()
    assert np.abs(pipe.encode_prompt([""])).max() > 0.1


def test_generation_matches_diffusers(pipe, reference):
    import torch

    noise = pipe.noise(seed=3, batch=2)
    ours = pipe.generate([PROMPT, "a small blue square"], steps=10, guidance=7.5, init_noise=noise)
    want = reference([PROMPT, "a small blue square"], num_inference_steps=10, guidance_scale=7.5,
                     latents=torch.from_numpy(noise), output_type="latent").images.numpy()
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(ours, want, atol=1e-3)


def test_size_conditioning_matches_diffusers(pipe, reference):
    """An image's own time ids (original 96x128, cropped at top 0, left 16): the same in the unconditional half."""
    import torch

    noise = pipe.noise(seed=5, batch=1)
    cond = pipe.conditioning.with_time_ids(pipe.encode_prompt([PROMPT]), (96, 128, 0, 16, 64, 64))
    ours = pipe.denoise(noise, cond, 8, 5.0).latent
    plain = pipe.denoise(noise, pipe.encode_prompt([PROMPT]), 8, 5.0).latent
    want = reference(PROMPT, num_inference_steps=8, guidance_scale=5.0, latents=torch.from_numpy(noise),
                     original_size=(96, 128), crops_coords_top_left=(0, 16), output_type="latent").images.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-3)
    assert np.abs(ours - plain).max() > 1e-3  # the time ids are not ignored


def test_another_size_matches_diffusers_at_that_size(xl_engine, reference):
    """Pipeline(size=96): noise at 96 px, its own size conditioning (96, 96, 0, 0, 96, 96), as diffusers' height=96."""
    import torch

    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(xl_engine, size=96) as p:
        noise = p.noise(seed=6, batch=1)
        assert noise.shape == (1, 4, 12, 12)
        ours = p.generate([PROMPT], steps=8, guidance=5.0, init_noise=noise)
    want = reference(PROMPT, num_inference_steps=8, guidance_scale=5.0, latents=torch.from_numpy(noise),
                     height=96, width=96, output_type="latent").images.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-3)


@pytest.mark.parametrize("size", [72, 0, 1 << 20, "512"])
def test_a_size_the_engine_dir_does_not_take_is_refused(xl_engine, size):
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.pipeline import Pipeline

    with pytest.raises(SvdeditError, match=r"a multiple of 16 from 16 to \d+ \(its default is 64\)"):
        Pipeline(xl_engine, size=size)


def test_inversion_matches_ddim_inverse_scheduler(pipe, reference):
    import torch
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(reference.scheduler.config)
    x0 = pipe.noise(seed=4, batch=1) * np.float32(0.8)
    ours = pipe.invert(x0, PROMPT, steps=10)
    with torch.no_grad():
        hidden, _, pooled, _ = reference.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
        inverse.set_timesteps(10)
        x = torch.from_numpy(x0)
        want = [x0]
        for t in inverse.timesteps:
            x = inverse.step(reference.unet(x, t, hidden, added_cond_kwargs=added).sample, t, x).prev_sample
            want.append(x.numpy())
    assert len(ours) == len(want) == 11
    for k, (a, b) in enumerate(zip(ours, want)):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"inversion step {k}")


def test_vae_uses_the_sdxl_scaling_factor(pipe, reference):
    import torch

    img = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    z = pipe.encode(img)
    with torch.no_grad():
        zr = reference.vae.encode(torch.from_numpy(img)).latent_dist.mean * 0.13025
    np.testing.assert_allclose(z, zr.numpy(), atol=1e-4)


def test_an_sdxl_lora_on_the_unet_and_both_text_encoders_swaps_in_as_diffusers_loads_it(xl_pipeline, xl_engine,
                                                                                        tmp_path):
    """A peft LoRA with UNet, text_encoder and text_encoder_2 layers, swapped into the --lora-ready engine at 0.7
    (runtime/svdedit/runtime/engines/lora.py, no torch), against diffusers' load_lora_weights + set_adapters."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from svdedit.runtime.engines import read_manifest
    from svdedit.runtime.engines.lora import read_adapter
    from svdedit.runtime.pipeline import Pipeline
    from tests.fixtures.lora import save_kohya_lora, save_peft_lora

    reference = StableDiffusionXLPipeline.from_pretrained(xl_pipeline, torch_dtype=torch.float32)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    path = save_peft_lora(reference, tmp_path / "xl.safetensors", seed=5, text_encoder=True, text_encoder_2=True)
    adapter = read_adapter(path, 0.7)
    assert {layer.component for layer in adapter.layers} == {"unet", "text_encoder", "text_encoder_2"}
    # the first encoder ends at its penultimate layer (of 3): the export records the last one's modules as unused,
    # and the swap skips the adapter's layers there (they change nothing, in diffusers too) rather than refuse them
    unused = read_manifest(xl_engine).networks["text_encoder"].lora_unused
    assert unused and all(m.startswith("encoder.layers.2.") for m in unused), unused
    assert any(layer.component == "text_encoder" and layer.module in unused for layer in adapter.layers)
    with Pipeline(xl_engine) as plain:
        noise = plain.noise(seed=3, batch=1)
        before = plain.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise)
        before_cond = plain.encode_prompt([PROMPT])
    with Pipeline(xl_engine, lora=[adapter]) as p:
        assert set(p.providers) == set(plain.providers)
        ours = p.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise)
        cond = p.encode_prompt([PROMPT])
    # the same adapter under kohya's SDXL names (lora_te1_, lora_te2_, the encoders' text_model_ level), the UNet's
    # in diffusers' module names and in the original checkpoint's, as sd-scripts writes them (lora_unet_input_blocks_)
    config = json.loads((Path(xl_pipeline) / "unet" / "config.json").read_text())
    for unet_config in (None, config):
        kohya_file = save_kohya_lora(path, tmp_path / "xl-kohya.safetensors", xl=True, unet_config=unet_config)
        kohya = read_adapter(kohya_file, 0.7)
        assert {layer.component for layer in kohya.layers} == {"unet", "text_encoder", "text_encoder_2"} and all(
            layer.kohya for layer in kohya.layers)
        assert (unet_config is not None) == any("input_blocks" in layer.module for layer in kohya.layers)
        with Pipeline(xl_engine, lora=[kohya]) as k:
            np.testing.assert_allclose(k.encode_prompt([PROMPT]), cond, atol=1e-6)
            np.testing.assert_allclose(k.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise), ours, atol=1e-5)
    # ... and diffusers reads that file's UNet layers as the peft file's: the names are the ones sd-scripts writes
    outs = []
    for file in (path, kohya_file):
        pipe = StableDiffusionXLPipeline.from_pretrained(xl_pipeline, torch_dtype=torch.float32)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(file), adapter_name="xl")
        outs.append(pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, latents=torch.from_numpy(noise),
                         output_type="latent").images.numpy())
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)
    reference.load_lora_weights(str(path), adapter_name="xl")
    reference.set_adapters(["xl"], adapter_weights=[0.7])
    with torch.no_grad():
        hidden, _, pooled, _ = reference.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                       do_classifier_free_guidance=True)
    want = reference(PROMPT, num_inference_steps=6, guidance_scale=5.0, latents=torch.from_numpy(noise),
                     output_type="latent").images.numpy()
    for part in (np.s_[:, :L, :32], np.s_[:, :L, 32:], np.s_[:, L, :48]):  # each encoder's hidden states, the pooled
        assert np.abs(cond[part] - before_cond[part]).max() > 0.05, part  # the adapter changes all three
    np.testing.assert_allclose(cond[:, :L], hidden.numpy(), atol=1e-4)
    np.testing.assert_allclose(cond[:, L, :48], pooled.numpy(), atol=1e-4)  # text_encoder_2's pooled embedding
    assert np.abs(ours - before).max() > 0.1  # the adapter visibly changes the generation ...
    np.testing.assert_allclose(ours, want, atol=1e-3)  # ... as it changes diffusers'
