"""The embedded model, models/shapes: it loads, fits its budget, and a seeded generation is stable."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.conftest import requires_torch

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"
GOLDEN = Path(__file__).parent / "data" / "golden_shapes.png"
GOLDEN_PROMPT, GOLDEN_SEEDS, GOLDEN_STEPS, GOLDEN_GUIDANCE = "a large red circle on the left", [0, 1, 2, 3], 20, 3.0

pytestmark = requires_torch


def golden_generation() -> np.ndarray:
    """Four seeded images of GOLDEN_PROMPT side by side (uint8, 64 x 256 x 3), via diffusers + DDIM."""
    from benchmarks.quality.bench_shapes_model import generate, load_pipeline

    pipe = load_pipeline(MODEL)
    images = generate(pipe, [GOLDEN_PROMPT] * len(GOLDEN_SEEDS), GOLDEN_SEEDS, GOLDEN_STEPS, GOLDEN_GUIDANCE)
    return np.concatenate(list(images), axis=1)


def test_weights_are_safetensors_within_budget_and_load():
    from svdedit.export.source import inspect_source, load_components
    from svdedit.runtime.files import check_safetensors

    weights = sorted(MODEL.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    for w in weights:
        check_safetensors(w)
    assert sum(w.stat().st_size for w in weights) <= 30_000_000
    assert not list(MODEL.glob("**/*.bin"))
    src = inspect_source(MODEL)  # an ordinary SD 1.x pipeline folder, as export sees it
    assert (src.family, src.prediction_type) == ("sd1", "epsilon")
    c = load_components(src)
    assert c.vae.config.latent_channels == 4 and 2 ** (len(c.vae.config.block_out_channels) - 1) == 4
    assert c.unet.config.sample_size == 16 and c.tokenizer.model_max_length == 77


def test_seeded_generation_matches_the_golden_image():
    from PIL import Image

    got = golden_generation()
    want = np.asarray(Image.open(GOLDEN).convert("RGB"))
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    # the same torch build on another CPU may differ in the last bits; 20 DDIM steps keep that small
    assert diff.mean() <= 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    from models.shapes_data import ATTRIBUTES, parse_caption, read_attributes

    want_attrs = parse_caption(GOLDEN_PROMPT).__dict__
    for i in range(len(GOLDEN_SEEDS)):  # and the model draws what it was asked
        read = read_attributes(got[:, 64 * i : 64 * (i + 1)])
        assert {k: read[k] for k in ATTRIBUTES} == want_attrs


if __name__ == "__main__":  # python -m tests.models.test_shapes_model : rewrite the golden image
    from PIL import Image

    Image.fromarray(golden_generation()).save(GOLDEN)
    print(f"wrote {GOLDEN}", file=sys.stderr)
