"""`svdedit generate` and `svdedit reconstruct` through a subprocess, and the runtime's bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch


def test_generate_writes_the_image_the_api_makes(engine_dirs, tmp_path):
    from svdedit.runtime.images import to_uint8
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(engine_dirs["sd1"]) as pipe:
        noise = pipe.noise(seed=11)
        want = to_uint8(pipe.decode(pipe.generate("a red circle", steps=5, guidance=3.0, init_noise=noise)))[0]
    np.save(tmp_path / "noise.npy", noise)
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "a red circle", "--steps", 5,
                   "--guidance", 3, "--init-noise", tmp_path / "noise.npy", "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), want)
    assert json.loads(proc.stdout)["output"] == str(tmp_path / "out.png")


def test_seeded_generation_is_reproducible_and_empty_prompt_is_valid(engine_dirs, tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        proc = run_cli("generate", "--engine", engine_dirs["sd2-v"], "--prompt", "", "--seed", 7, "--steps", 4,
                       "-o", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert Image.open(tmp_path / "a.png").size == (32, 32)


def test_reconstruct_reports_psnr(engine_dirs, tmp_path):
    Image.new("RGB", (100, 80), (200, 40, 40)).save(tmp_path / "in.png")
    proc = run_cli("reconstruct", "--engine", engine_dirs["sd1"], "--image", tmp_path / "in.png", "--prompt",
                   "a red square", "--steps", 5, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert np.isfinite(line["psnr"]) and np.isfinite(line["vae_round_trip_psnr"])
    assert Image.open(tmp_path / "out.png").size == (64, 64)


def test_runtime_bad_inputs_are_clear_errors(engine_dirs, tmp_path):
    eng = engine_dirs["sd1"]
    proc = run_cli("generate", "--engine", tmp_path / "nope", "--prompt", "x", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "generate", "does not exist", "svdedit export")
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    proc = run_cli("generate", "--engine", eng, "--prompt", "x", "--init-noise", tmp_path / "bad.npy", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "generate", "initial noise has shape (1, 3, 8, 8)")
    (tmp_path / "junk.npy").write_text("not numpy")
    proc = run_cli("generate", "--engine", eng, "--prompt", "x", "--init-noise", tmp_path / "junk.npy", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "generate", "not a readable .npy")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:40])
    proc = run_cli("reconstruct", "--engine", eng, "--image", tmp_path / "cut.png", "--prompt", "x", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "reconstruct", "cannot be read")
    proc = run_cli("reconstruct", "--engine", eng, "--image", tmp_path / "missing.png", "--prompt", "x", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "reconstruct", "does not exist")
    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")
    proc = run_cli("reconstruct", "--engine", eng, "--image", tmp_path / "huge.png", "--prompt", "x", "-o", tmp_path / "o.png")
    assert_clear_error(proc, "reconstruct", "megapixels", "Downscale")
    proc = run_cli("generate", "--engine", eng, "--prompt", "x", "--steps", 0, "-o", tmp_path / "o.png")
    assert proc.returncode == 2 and "--steps: 0 is out of range; give 1 to" in proc.stderr
    assert not (tmp_path / "o.png").exists()


def test_nan_in_the_latents_stops_and_names_the_step(engine_dirs):
    from svdedit.runtime.errors import NonFiniteLatentError
    from svdedit.runtime.pipeline import Pipeline
    from tests.fixtures.faults import unet_returns_at_call

    with Pipeline(engine_dirs["sd1"]) as pipe:
        unet_returns_at_call(pipe, 3, np.inf)
        with pytest.raises(NonFiniteLatentError, match=r"at step 3 \(timestep \d+\).*fp16"):
            pipe.generate("x", steps=10, guidance=1.0)
