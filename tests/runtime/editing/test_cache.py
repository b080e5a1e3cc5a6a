"""Invert once, edit many (runtime/svdedit/runtime/editing/cache.py): the LRU itself, and re-edits that equal full edits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdedit.runtime.editing.cache import EditCache, digest
from tests.cli import run_cli
from tests.conftest import requires_torch

SOURCE, TARGET = "a large red circle in the middle", "a large blue circle in the middle"
PROMPT = "a large red square on the left"


# ---- the LRU (no engine) ----
def test_the_cache_is_an_lru_bounded_in_bytes():
    cache = EditCache(max_bytes=3 * 400)
    a = np.zeros(100, np.float32)                      # 400 bytes
    for k in "abc":
        cache.put(k, (a,))
    assert len(cache) == 3 and cache.bytes == 1200
    assert cache.get("a") is not None                  # a is now the most recent
    cache.put("d", (a,))                               # evicts b, the least recent
    assert cache.get("b") is None and cache.get("a") is not None and cache.stats.evictions == 1
    cache.put("huge", (np.zeros(1000, np.float32),))   # larger than the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 3
    assert cache.get_all(["a", "c"]) is not None and cache.get_all(["a", "b"]) is None
    cache.put("a", (a, a))                             # replacing a key counts its bytes once
    assert cache.bytes <= cache.max_bytes
    with pytest.raises(ValueError):
        EditCache(-1)


def test_the_cache_keeps_copies_and_keys_by_content():
    cache = EditCache()
    x = np.ones((2, 3), np.float32)
    cache.put("k", (x,))
    x[:] = 7                                           # the caller's batch array may be reused
    assert cache.get("k")[0].max() == 1
    assert digest("a", x) == digest("a", x.copy())
    assert digest("a", x) != digest("a", x.astype(np.float64)) != digest("b", x)
    assert digest("a", np.zeros((2, 3))) != digest("a", np.zeros((3, 2)))


# ---- re-edits on the embedded model ----
@pytest.fixture(scope="module")
def attrs(shapes_engine, tmp_path_factory):
    from svdedit.runtime.editing.avi import Attribute

    folder = tmp_path_factory.mktemp("attrs")
    out = []
    for target, name in ((TARGET, "blue"), ("a small red circle in the middle", "small")):
        proc = run_cli("learn", "--engine", shapes_engine, "--source", SOURCE, "--target", target,
                       "--iters", "150", "-o", folder / f"{name}.safetensors")
        assert proc.returncode == 0, proc.stderr
        out.append(Attribute.load(folder / f"{name}.safetensors"))
    return out


@requires_torch
def test_a_re_edit_equals_a_full_edit_and_skips_the_inversion(shapes_engine, attrs):
    from models.shapes_data import Attributes, render
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline
    from svdedit.runtime.timing import Stages

    rng = np.random.default_rng(3)
    images = np.stack([render(Attributes("square", "red", "large", "left"), rng),
                       render(Attributes("circle", "red", "small", "right"), rng)])
    images = (images / 127.5 - 1).astype(np.float32).transpose(0, 3, 1, 2)
    prompts = [PROMPT, "a small red circle on the right"]
    blue = attrs[0]
    with Pipeline(shapes_engine) as pipe:
        stages = Stages()
        cached, plain = Editor(pipe, stages=stages, cache=EditCache()), Editor(pipe)
        cached.edit_images([blue], images, prompts, strength=1.0)
        for strength in (0.5, 0.0, 1.5):
            before = dict(stages.seconds)
            again = cached.edit_images([blue], images, prompts, strength=strength)
            assert stages.seconds.get("invert") == before.get("invert")            # not inverted again
            assert stages.seconds.get("vae_encode") == before.get("vae_encode")
            assert stages.seconds.get("sample_to_edit") == before.get("sample_to_edit")
            full = plain.edit_images([blue], images, prompts, strength=strength)
            assert np.array_equal(again.edited, full.edited), strength       # the same calls: the same bytes
        # another attribute: the inversion is reused, z is sampled for its own target prompt
        hits, misses = cached.cache.stats.hits, cached.cache.stats.misses
        other = cached.edit_images([attrs[1]], images, prompts)
        assert cached.cache.stats.hits == hits + 2 and cached.cache.stats.misses == misses + 2
        assert np.array_equal(other.edited, plain.edit_images([attrs[1]], images, prompts).edited)
        # another image is not mistaken for a cached one
        moved = cached.edit_images([blue], images[::-1].copy(), prompts[::-1])
        assert np.array_equal(moved.edited, plain.edit_images([blue], images[::-1].copy(), prompts[::-1]).edited)


@requires_torch
def test_a_re_edit_of_seeds_matches_a_full_edit_within_one_level(shapes_engine, attrs):
    """A re-edit denoises y alone where the full edit denoises the source beside it (batch 1 against 2):
    onnxruntime's CPU kernels may round differently; measured 0 levels on this model, 1 is allowed."""
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(shapes_engine) as pipe:
        cached, plain = Editor(pipe, cache=EditCache()), Editor(pipe)
        first = cached.edit_seeds([attrs[0]], [PROMPT] * 2, [4, 5], strength=1.0)
        for strength in (0.0, 0.5):
            again = cached.edit_seeds([attrs[0]], [PROMPT] * 2, [4, 5], strength=strength)
            full = plain.edit_seeds([attrs[0]], [PROMPT] * 2, [4, 5], strength=strength)
            assert np.array_equal(again.source, first.source)
            assert np.abs(again.edited.astype(int) - full.edited).max() <= 1, strength
        assert np.abs(again.edited.astype(int) - again.source).max() > 0   # strength 0.5 did change the image


@requires_torch
def test_cli_several_strengths_write_a_strip(shapes_engine, attrs, tmp_path):
    from PIL import Image

    attr = tmp_path / "a.safetensors"
    attrs[0].save(attr)
    out = tmp_path / "out"
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", attr, "--prompt", PROMPT, "--seed", "3",
                   "--strength", "0,0.5,1", "-o", out, "--timings")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seed3_s0.5.png", "seed3_s0.png", "seed3_s1.png",
                                                      "seed3_strip.png"]
    strip = np.asarray(Image.open(out / "seed3_strip.png"))
    assert strip.shape == (256, (64 * 4 + 3 * 2) * 4, 3)                  # source | 0 | 0.5 | 1
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["strength"] for line in lines[:3]] == [0.0, 0.5, 1.0]
    assert lines[-1]["cache"] == {"hits": 2, "misses": 1, "evictions": 0}  # sampled once, re-edited twice
    # one image, one file: the file is the strip
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", attr, "--prompt", PROMPT, "--seed", "3",
                   "--strength", "0,1", "-o", tmp_path / "one.png")
    assert proc.returncode == 0, proc.stderr
    assert np.asarray(Image.open(tmp_path / "one.png")).shape == (256, (64 * 3 + 2 * 2) * 4, 3)
    bad = run_cli("edit", "--engine", shapes_engine, "--attr", attr, "--prompt", PROMPT, "--seed", "3",
                  "--strength", ",".join(["1"] * 17), "-o", tmp_path / "x.png")
    assert bad.returncode == 2 and "at most 16" in bad.stderr
