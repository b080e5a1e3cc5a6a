"""SDXL's fast variants: the UNet split for step caching (its first part takes the added conditioning) and the int8
UNet of `svdedit quantize` on it; and a LoRA fused at export. Under `make test-slow` (one more tiny SDXL export, ~75 s here); the whole-UNet
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


def test_an_sdxl_lora_in_kohya_names_fused_at_export_generates_as_its_run_time_swap(xl_pipeline, xl_engine, tmp_path):
    """An SDXL LoRA (UNet and both text encoders) fused at export from a kohya file in sd-scripts' SDXL naming
    (lora_unet_input_blocks_..., lora_te1_/lora_te2_text_model_...): diffusers' loader for the UNet, the NumPy merge
    for the encoders. It generates what the run-time swap of the same adapter, in peft's format, generates (which
    tests/runtime/test_sdxl_parity.py holds to diffusers)."""
    from diffusers import StableDiffusionXLPipeline

    from svdedit.runtime.engines import read_manifest
    from svdedit.runtime.engines.lora import read_adapter
    from svdedit.runtime.pipeline import Pipeline
    from tests.fixtures.lora import save_kohya_lora, save_peft_lora

    peft = save_peft_lora(StableDiffusionXLPipeline.from_pretrained(xl_pipeline), tmp_path / "xl.safetensors", seed=5,
                          text_encoder=True, text_encoder_2=True)
    config = json.loads((xl_pipeline / "unet" / "config.json").read_text())
    kohya = save_kohya_lora(peft, tmp_path / "xl-kohya.safetensors", xl=True, unet_config=config)
    out = tmp_path / "fused"
    proc = run_cli("export", xl_pipeline, "-o", out, "--lora", kohya, "--lora-scale", "0.7")
    assert proc.returncode == 0, proc.stderr
    (record,) = read_manifest(out).raw["lora"]["fused"]
    assert record["components"] == ["text_encoder", "text_encoder_2", "unet"] and record["scale"] == 0.7
    with Pipeline(out) as fused:
        noise = fused.noise(seed=3, batch=1)
        got = fused.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise)
    with Pipeline(xl_engine, lora=[read_adapter(peft, 0.7)]) as swapped:
        want = swapped.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise)
    with Pipeline(xl_engine) as plain:
        base = plain.generate([PROMPT], steps=6, guidance=5.0, init_noise=noise)
    assert np.abs(want - base).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-3)
