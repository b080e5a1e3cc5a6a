"""SDXL's fast variants: the UNet split for step caching (its first part takes the added conditioning) and the int8
UNet of `svdedit quantize` on it. Under `make test-slow` (one more tiny SDXL export, ~75 s here); the whole-UNet
SDXL engine is in `make test` (tests/runtime/test_sdxl_parity.py, tests/runtime/editing/test_sdxl_editing.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli import run_cli
from tests.conftest import requires_torch

pytestmark = [requires_torch, pytest.mark.slow]
PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def xl_split(xl_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("xl-step-cache") / "engine"
    proc = run_cli("export", xl_pipeline, "-o", out, "--step-cache")
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_split_sdxl_unet_matches_diffusers_and_caches_steps(xl_split, xl_pipeline):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from svdedit.runtime.pipeline import Intervals, Pipeline

    m = json.loads((xl_split / "manifest.json").read_text())
    assert [t["name"] for t in m["networks"]["unet_in"]["inputs"]][-2:] == ["text_embeds", "time_ids"]
    assert m["step_cache"]["composed_parity"]["passed"]
    ref = StableDiffusionXLPipeline.from_pretrained(xl_pipeline, torch_dtype=torch.float32)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    with Pipeline(xl_split, intervals=Intervals(1, 1)) as exact:
        noise = exact.noise(seed=3, batch=1)
        ours = exact.generate(PROMPT, steps=10, guidance=7.5, init_noise=noise)
    want = ref(PROMPT, num_inference_steps=10, guidance_scale=7.5, latents=torch.from_numpy(noise),
               output_type="latent").images.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-3)
    with Pipeline(xl_split) as cached:  # the engine's own intervals: every 2nd step reuses the deep feature
        assert cached.intervals == Intervals(2, 1)
        fast = cached.generate(PROMPT, steps=10, guidance=7.5, init_noise=noise)
    assert 0 < np.abs(fast - want).max() < 0.5 * np.abs(want).max()


def test_an_int8_sdxl_engine_generates_and_edits(xl_split, tmp_path):
    int8 = tmp_path / "int8"
    proc = run_cli("quantize", xl_split, "-o", int8)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((int8 / "manifest.json").read_text())
    assert m["family"] == "sdxl" and {m["networks"][n]["precision"] for n in ("unet_in", "unet_deep", "unet_out")} == {"int8"}
    attr = tmp_path / "a.safetensors"
    for args in (("learn", "--engine", int8, "--source", "a large red circle in the middle", "--target",
                  "a large blue circle in the middle", "--iters", "30", "--steps", "10", "-o", attr),
                 ("edit", "--engine", xl_split, "--attr", attr, "--prompt", PROMPT, "--seeds", "0", "-o",
                  tmp_path / "e.png")):  # learned on the int8 engine, applied on its fp32 source: the same model
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e.png").is_file()
