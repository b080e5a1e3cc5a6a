"""The SDXL family through the commands a user runs (check, generate, reconstruct, learn, edit) on the tiny SDXL
engine, and the method's SDXL-specific parts: an image's size conditioning (time ids from what fit() did to it)
reaches the UNet and the edit cache's keys, and attribute files are bound to their family's model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch
SOURCE, TARGET = "a large red circle in the middle", "a large blue circle in the middle"


@pytest.fixture(scope="module")
def xl_attr(xl_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("xl-attr") / "red2blue.safetensors"
    proc = run_cli("learn", "--engine", xl_engine, "--source", SOURCE, "--target", TARGET, "--iters", "60", "--steps", "10",
                   "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_commands_run_on_an_sdxl_engine(xl_engine, xl_attr, engine_dirs, tmp_path):
    from PIL import Image

    proc = run_cli("check", xl_engine)
    assert proc.returncode == 0, proc.stderr
    checked = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {c["network"] for c in checked} == {"text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"}
    assert all(c["ok"] for c in checked)
    proc = run_cli("generate", "--engine", xl_engine, "--prompt", SOURCE, "--steps", "8", "-o", tmp_path / "g.png")
    assert proc.returncode == 0, proc.stderr
    Image.open(tmp_path / "g.png").resize((96, 64)).save(tmp_path / "wide.png")  # fit() crops it: time ids say so
    proc = run_cli("reconstruct", "--engine", xl_engine, "--image", tmp_path / "wide.png", "--prompt", SOURCE,
                   "--steps", "8", "-o", tmp_path / "r.png")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("edit", "--engine", xl_engine, "--attr", xl_attr, "--prompt", "a small red square on the left",
                   "--seeds", "0-1", "-o", tmp_path / "edits")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "edits").glob("seed?.png")) == ["seed0.png", "seed1.png"]
    # at another size than the model's (and than the attribute was learned at): the singular values it takes are
    # per channel, top k, so the attribute applies; a size the engine dir does not take is refused, saying which do
    proc = run_cli("edit", "--engine", xl_engine, "--attr", xl_attr, "--prompt", SOURCE, "--seeds", "0", "--size", "96",
                   "-o", tmp_path / "at96")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "at96" / "seed0.png").size == (96, 96)
    proc = run_cli("generate", "--engine", xl_engine, "--prompt", SOURCE, "--size", "72", "-o", tmp_path / "72.png")
    assert_clear_error(proc, "generate", "image size 72", "a multiple of 16")
    assert not (tmp_path / "72.png").exists()
    proc = run_cli("edit", "--engine", xl_engine, "--attr", xl_attr, "--image", tmp_path / "wide.png", "--prompt",
                   SOURCE, "-o", tmp_path / "edited.png")
    assert proc.returncode == 0, proc.stderr
    # an attribute learned on the SDXL model is refused on an SD 1.x engine, before any network runs
    proc = run_cli("edit", "--engine", engine_dirs["sd1"], "--attr", xl_attr, "--prompt", SOURCE, "--seeds", "0",
                   "-o", tmp_path / "x.png")
    assert_clear_error(proc, "edit", str(xl_attr))
    assert not (tmp_path / "x.png").exists()


def test_an_images_size_conditioning_reaches_the_unet_and_the_cache_keys(xl_engine, xl_attr):
    from svdedit.runtime.editing import Attribute, EditCache, Editor
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(xl_engine) as pipe:
        attr = Attribute.load(xl_attr, engine=pipe.manifest.identities())
        image = pipe.decode(pipe.generate(SOURCE, seed=1, steps=8))
        cache = EditCache()
        editor = Editor(pipe, cache=cache)
        square = editor.edit_images([attr], image, [SOURCE], originals=[(64, 64)]).edited
        assert len(cache) == 2  # its inversion, its z
        wide = editor.edit_images([attr], image, [SOURCE], originals=[(96, 64)]).edited
        assert len(cache) == 4  # other time ids: other keys, computed anew
        assert np.abs(square.astype(int) - wide.astype(int)).max() > 0
        again = editor.edit_images([attr], image, [SOURCE], originals=[(64, 64)]).edited
        assert len(cache) == 4 and np.array_equal(again, square)
        # an uncropped square original is the default size conditioning: the same edit as without originals
        assert np.array_equal(Editor(pipe).edit_images([attr], image, [SOURCE]).edited, square)
