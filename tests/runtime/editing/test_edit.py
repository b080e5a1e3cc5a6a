"""Editing end to end on the embedded model (models/shapes), read by the exact attribute reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.shapes_data import Attributes, read_attributes, render, score_edit
from svdedit.runtime.editing.avi import Attribute
from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch
from tests.fixtures.faults import unet_returns_at_call

pytestmark = requires_torch  # the engine fixture exports models/shapes once

SOURCE, TARGET = "a large red circle in the middle", "a large blue circle in the middle"
HELD_OUT = ["a small red square on the left", "a large red triangle on the right", "a small red circle in the middle",
            "a large red square on the left", "a small red triangle in the middle", "a large red circle on the right"]


@pytest.fixture(scope="module")
def learned(shapes_engine, tmp_path_factory):
    path = tmp_path_factory.mktemp("attr") / "red2blue.safetensors"
    proc = run_cli("learn", "--engine", shapes_engine, "--source", SOURCE, "--target", TARGET, "-o", path)
    assert proc.returncode == 0, proc.stderr
    return path


def test_edit_changes_the_colour_and_keeps_the_rest(shapes_engine, learned):
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        attr = Attribute.load(learned, engine=editor.engine_ids)
        seeds = list(range(500, 500 + len(HELD_OUT)))
        r = editor.edit_seeds([attr], HELD_OUT, seeds)
        again = editor.edit_seeds([attr], HELD_OUT[:2], seeds[:2])
        unchanged = editor.edit_seeds([attr], HELD_OUT[:2], seeds[:2], strength=0.0)
    scores = [score_edit(s, e, "colour", "blue") for s, e in zip(r.source, r.edited)]
    assert all(read_attributes(s)["colour"] == "red" for s in r.source)
    assert sum(s["success"] for s in scores) >= len(scores) - 1, scores
    assert sum(s["identity"] for s in scores) >= len(scores) - 1, scores
    assert r.target_prompts[0] == "a small blue square on the left"
    assert np.array_equal(again.edited, r.edited[:2])        # same seed, same bytes
    assert np.array_equal(unchanged.edited, unchanged.source)  # strength 0 = unchanged


def test_edit_a_real_image(shapes_engine, learned):
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    rng = np.random.default_rng(77)
    attrs = [Attributes("square", "red", "large", "left"), Attributes("circle", "red", "small", "right")]
    renders = np.stack([render(a, rng) for a in attrs])
    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        r = editor.edit_images([Attribute.load(learned)], (renders / 127.5 - 1).astype(np.float32).transpose(0, 3, 1, 2),
                               [a.caption() for a in attrs])
    for s, e in zip(renders, r.edited):
        got = score_edit(s, e, "colour", "blue")
        assert got["success"] and got["identity"], got


def test_cli_edit_seeds_images_and_strips(shapes_engine, learned, tmp_path):
    out = tmp_path / "edits"
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", learned, "--prompt", HELD_OUT[0], "--seeds", "3-4",
                   "--strength", "1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["seed3.png", "seed3_strip.png", "seed4.png", "seed4_strip.png"]
    from PIL import Image

    strip = np.asarray(Image.open(out / "seed3_strip.png"))
    assert strip.shape == (256, (64 * 2 + 2) * 4, 3)
    # a folder of real images
    from svdedit.runtime.images import save_png

    imgs = tmp_path / "imgs"
    save_png(render(Attributes("circle", "red", "large", "middle"), np.random.default_rng(1)), imgs / "a.png")
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", learned, "--prompt", "a large red circle in the middle",
                   "--image", imgs, "-o", tmp_path / "real", "--timings")
    assert proc.returncode == 0, proc.stderr
    assert read_attributes(np.asarray(Image.open(tmp_path / "real" / "a.png")))["colour"] == "blue"
    timings = json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_stage"]
    assert set(timings) == {"text", "vae_encode", "invert", "sample_to_edit", "svd_avi", "sample_rest", "vae_decode"}
    assert all(v > 0 for v in timings.values())


def test_cli_edit_refusals(shapes_engine, engine_dirs, learned, tmp_path):
    base = ["edit", "--engine", shapes_engine, "--prompt", HELD_OUT[0], "--seed", "1", "-o", tmp_path / "x.png"]
    proc = run_cli(*base, "--attr", learned, "--strength", "strong")  # argparse's own error: usage, then the message
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "svdedit edit: error: argument --strength: 'strong' is not a number" in proc.stderr
    assert_clear_error(run_cli(*base, "--attr", tmp_path / "none.safetensors"), "edit", "does not exist")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    assert_clear_error(run_cli(*base, "--attr", tmp_path / "junk.safetensors"), "edit", "not a readable")
    other = tmp_path / "other.safetensors"  # learned on the tiny sd1 fixture: another model
    proc = run_cli("learn", "--engine", engine_dirs["sd1"], "--source", "a red cat", "--target", "a blue cat",
                   "--iters", "5", "--steps", "10", "-o", other)
    assert proc.returncode == 0, proc.stderr
    assert_clear_error(run_cli(*base, "--attr", other), "edit", "another model")
    img_base = ["edit", "--engine", shapes_engine, "--attr", learned, "--prompt", HELD_OUT[0], "-o", tmp_path / "y.png"]
    assert_clear_error(run_cli(*img_base, "--image", tmp_path / "missing.png"), "edit", "does not exist")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()


def test_cli_learn_refusals(shapes_engine, tmp_path):
    base = ["learn", "--engine", shapes_engine, "--source", SOURCE, "--target", TARGET]
    assert_clear_error(run_cli(*base, "--t-edit", "1.5", "-o", tmp_path / "a.safetensors"), "learn", "--t-edit")
    assert_clear_error(run_cli(*base, "-o", tmp_path), "learn", "is a folder")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # 23 s; the knobs reach learn() in make test through the API tests
def test_learning_ablation_from_the_command_line(shapes_engine, tmp_path):
    proc = run_cli("learn", "--engine", shapes_engine, "--source", SOURCE, "--target", TARGET, "--w-target", "0",
                   "--iters", "30", "-o", tmp_path / "no_target.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert Attribute.load(tmp_path / "no_target.safetensors").knobs.w_target == 0.0


@pytest.mark.parametrize("probe, extra", [("sweep", ["--index", "0,1", "--factors", "0,1,2", "--steps", "10"]),
                                          ("subspace", ["--steps", "10"]),
                                          ("rank", ["--target-prompt", TARGET, "--steps", "10"])])
def test_probes_write_a_png_and_json(shapes_engine, tmp_path, probe, extra):

    out = tmp_path / f"{probe}.png"
    proc = run_cli("probe", probe, "--engine", shapes_engine, "--prompt", SOURCE, "-o", out, *extra)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(out).size[0] > 100
    info = json.loads(out.with_suffix(".json").read_text())
    if probe == "subspace":
        d = np.array(info["distance"])
        assert d.shape == (10, 10) and np.allclose(np.diag(d), 0, atol=1e-3) and np.allclose(d, d.T, atol=1e-3)
        assert 0 < info["adjacent_mean"] < info["max_possible"]


def test_nan_during_the_inversion_of_an_edit_stops_it_and_names_the_step(shapes_engine, learned):
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.errors import NonFiniteLatentError
    from svdedit.runtime.pipeline import Pipeline

    image = render(Attributes("square", "red", "large", "left"), np.random.default_rng(3))
    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        unet_returns_at_call(pipe, 2)  # the second step of the DDIM inversion
        with pytest.raises(NonFiniteLatentError, match=r"at step 2 \(timestep \d+\)"):
            editor.edit_images([Attribute.load(learned)], (image[None] / 127.5 - 1).astype(np.float32).transpose(0, 3, 1, 2),
                               ["a large red square on the left"])


@pytest.mark.parametrize("probe", ["sweep", "subspace", "rank"])
def test_nan_during_a_probe_stops_it_and_names_the_step(shapes_engine, tmp_path, probe):
    from svdedit.runtime.editing import probe as probes
    from svdedit.runtime.errors import NonFiniteLatentError
    from svdedit.runtime.pipeline import Pipeline

    run = {"sweep": lambda p: probes.sweep(p, SOURCE, tmp_path / "s.png", steps=10, index=[0], factors=[1.0]),
           "subspace": lambda p: probes.subspace(p, SOURCE, tmp_path / "s.png", steps=10),
           "rank": lambda p: probes.rank(p, SOURCE, TARGET, tmp_path / "s.png", steps=10)}[probe]
    with Pipeline(shapes_engine) as pipe:
        unet_returns_at_call(pipe, 3)
        with pytest.raises(NonFiniteLatentError, match=r"at step 3 \(timestep \d+\)"):  # not the SVD's LatentShapeError
            run(pipe)
    assert not list(tmp_path.iterdir())  # nothing written


def test_one_batch_may_mix_recipes_and_each_image_is_edited_as_alone(shapes_engine, learned):
    """What the server's dynamic batching relies on: images with other attributes and strengths in one batch."""
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.editing.edit import Recipe
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        red2blue = Attribute.load(learned)
        small2large = learn(editor, "a small green square in the middle", "a large green square in the middle",
                                   knobs=Knobs(iters=60))
        recipes = [Recipe((red2blue,), 1.0), Recipe((small2large,), 0.7), Recipe((red2blue, small2large), 0.4)]
        prompts = ["a small red square on the left", "a small green circle on the right", "a small red circle in the middle"]
        mixed = editor.edit_seeds_with(recipes, prompts, [21, 22, 23])
        for i, r in enumerate(recipes):
            alone = editor.edit_seeds(list(r.attributes), prompts[i:i + 1], [21 + i], strength=r.strength)
            assert np.abs(mixed.edited[i].astype(int) - alone.edited[0]).max() <= 2, i
            assert mixed.target_prompts[i] == alone.target_prompts[0]
    assert mixed.target_prompts == ["a small blue square on the left", "a large green circle on the right",
                                    "a large blue circle in the middle"]


def test_strength_moves_the_colour_steadily_on_a_fixed_seed(shapes_engine, learned):
    from models.shapes_data import measure
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.pipeline import Pipeline

    attr = Attribute.load(learned)
    strengths, blends = zip(*attr.strength_map)
    assert strengths[0] == 0 and strengths[-1] == 1 and list(blends) == sorted(blends)  # calibrated when learned
    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        hues = [measure(editor.edit_seeds([attr], [HELD_OUT[0]], [31], strength=s).edited[0])["hue"]
                for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    steps = np.diff(hues)
    assert np.all(steps <= 2.0), hues                           # red (0) towards blue (-126): monotone
    assert hues[-1] < -100 and np.abs(steps).max() < 0.6 * abs(hues[-1] - hues[0]), hues  # no single jump


def test_an_image_without_a_caption_is_edited_along_the_attribute(shapes_engine, learned, tmp_path):
    from svdedit.runtime.editing.edit import UNCAPTIONED
    from svdedit.runtime.images import save_png

    save_png(render(Attributes("square", "red", "large", "middle"), np.random.default_rng(4)), tmp_path / "red.png")
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", learned, "--image", tmp_path / "red.png",
                   "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[0])
    assert line["source_prompt"] == "" and line["target_prompt"] == UNCAPTIONED
    from PIL import Image

    assert read_attributes(np.asarray(Image.open(tmp_path / "out.png")))["colour"] == "blue"
    assert_clear_error(run_cli("edit", "--engine", shapes_engine, "--attr", learned, "--seeds", "1",
                               "-o", tmp_path / "s.png"), "edit", "seeds are generated from the prompt; give one in --prompt")
