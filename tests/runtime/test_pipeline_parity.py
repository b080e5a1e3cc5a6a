"""The runtime against diffusers (torch) on the tiny fixtures, from the same initial noise.

Generation: StableDiffusionPipeline + DDIMScheduler, 10 steps, guidance 7.5, latents within 1e-3.
Inversion: the torch UNet driven by DDIMInverseScheduler at guidance 1, every latent within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch
PROMPT = "a large red circle on the left"


def _diffusers_pipeline(folder):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_generation_matches_diffusers(engine_dirs, tiny_pipelines, flavour):
    import torch

    from svdedit.runtime.pipeline import Pipeline

    ref = _diffusers_pipeline(tiny_pipelines[flavour])
    with Pipeline(engine_dirs[flavour]) as pipe:
        noise = pipe.noise(seed=3, batch=2)
        ours = pipe.generate([PROMPT, ""], steps=10, guidance=7.5, init_noise=noise)
    want = ref([PROMPT, ""], num_inference_steps=10, guidance_scale=7.5, latents=torch.from_numpy(noise),
               output_type="latent").images.numpy()
    assert np.abs(want).max() > 0.5  # a real signal, not an all-zero agreement
    np.testing.assert_allclose(ours, want, atol=1e-3)


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_inversion_matches_ddim_inverse_scheduler(engine_dirs, tiny_pipelines, flavour):
    import torch
    from diffusers import DDIMInverseScheduler

    from svdedit.runtime.pipeline import Pipeline

    ref = _diffusers_pipeline(tiny_pipelines[flavour])
    inverse = DDIMInverseScheduler.from_config(ref.scheduler.config)
    with Pipeline(engine_dirs[flavour]) as pipe:
        x0 = pipe.noise(seed=4, batch=1) * np.float32(0.8)
        ours = pipe.invert(x0, PROMPT, steps=10)
    with torch.no_grad():
        embeds, _ = ref.encode_prompt(PROMPT, "cpu", 1, do_classifier_free_guidance=False)
        inverse.set_timesteps(10)
        x = torch.from_numpy(x0)
        want = [x0]
        for t in inverse.timesteps:
            x = inverse.step(ref.unet(x, t, embeds).sample, t, x).prev_sample
            want.append(x.numpy())
    assert len(ours) == len(want) == 11
    for k, (a, b) in enumerate(zip(ours, want)):
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"inversion step {k}")


def test_vae_round_trip_matches_diffusers(engine_dirs, tiny_pipelines):
    import torch

    from svdedit.runtime.pipeline import Pipeline

    ref = _diffusers_pipeline(tiny_pipelines["sd1"])
    img = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    with Pipeline(engine_dirs["sd1"]) as pipe:
        z = pipe.encode(img)
        back = pipe.decode(z)
    with torch.no_grad():
        zr = ref.vae.encode(torch.from_numpy(img)).latent_dist.mean * ref.vae.config.scaling_factor
        br = ref.vae.decode(zr / ref.vae.config.scaling_factor).sample
    np.testing.assert_allclose(z, zr.numpy(), atol=1e-4)
    np.testing.assert_allclose(back, br.numpy(), atol=1e-4)
