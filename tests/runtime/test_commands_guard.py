"""Every command against the mistakes of issue 18 (items 5, 7, 8): output paths checked before any work, sizes
bounded before they cost anything, values refused with the argument named; exit status 2, no traceback."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixtures are exported with torch


def _argparse_error(proc, command: str, *phrases: str) -> None:
    """argparse's own refusal: usage, then `svdedit COMMAND: error: argument ...`, exit 2."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"svdedit {command}: error: argument" in proc.stderr, proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr


@pytest.mark.parametrize("output, phrase", [
    ("/proc/x.png", "cannot be written"),
    ("FILE/x.png", "which is a file, not a folder"),
    ("DIR", "is a folder; give a file name"),
    ("", "-o is empty"),
    ("x.gif", "the file's suffix says its format"),
])
def test_generate_checks_its_output_before_loading_anything(engine_dirs, tmp_path, output, phrase):
    (tmp_path / "FILE").write_text("a file")
    (tmp_path / "DIR").mkdir()
    out = output if output.startswith("/") or output == "" else str(tmp_path / output)
    t0 = time.perf_counter()
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", "--steps", 2, "-o", out)
    assert_clear_error(proc, "generate", phrase)
    assert time.perf_counter() - t0 < 20  # refused before the engines were opened and sampled


def test_edit_and_probe_and_learn_check_their_outputs(engine_dirs, tmp_path):
    (tmp_path / "FILE").write_text("a file")
    proc = run_cli("edit", "--engine", engine_dirs["sd1"], "--attr", tmp_path / "none.safetensors", "--prompt", "x",
                   "--seeds", "1-2", "-o", tmp_path / "FILE")
    assert_clear_error(proc, "edit", "is a file; give a folder")
    proc = run_cli("probe", "subspace", "--engine", engine_dirs["sd1"], "--prompt", "x", "-o", tmp_path / "plots")
    assert_clear_error(proc, "probe", "the file's suffix says its format")
    proc = run_cli("learn", "--engine", engine_dirs["sd1"], "--source", "a red cat", "--target", "a blue cat",
                   "-o", tmp_path / "attr.bin")
    assert_clear_error(proc, "learn", ".safetensors")


def test_an_unwritable_folder_is_refused(engine_dirs, tmp_path):
    """A folder nobody may write in. Sessions and CI run as root, who may write anywhere, and the interpreter lives
    under /root, which an unprivileged user cannot read; so the folder is made immutable (chattr +i), which
    refuses even root, instead of dropping privileges."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (no immutable folders to test with)")
    try:
        proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", "--steps", 2, "-o", locked / "x.png")
        assert_clear_error(proc, "generate", "cannot be written", "Operation not permitted")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


@pytest.mark.parametrize("args, phrase", [
    (["--guidance", "nan"], "argument --guidance: 'nan' must be a finite number"),
    (["--guidance", "inf"], "must be a finite number"),
    (["--seed", "-1"], "argument --seed: -1 is out of range"),
    (["--steps", "100000"], "argument --steps: 100000 is out of range"),
])
def test_generate_refuses_values_it_cannot_take(engine_dirs, tmp_path, args, phrase):
    _argparse_error(run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", *args, "-o",
                            tmp_path / "x.png"), "generate", phrase)


@pytest.mark.parametrize("command, args, phrase", [
    ("edit", ["--attr", "a.safetensors", "--prompt", "x", "--seed", "1", "--strength", "1e300"], "--strength"),
    ("edit", ["--attr", "a.safetensors", "--prompt", "x", "--seeds", "0-9999999999"], "one run takes at most"),
    ("edit", ["--attr", "a.safetensors", "--prompt", "x", "--seeds", "-5"], "is not a seed list"),
    ("learn", ["--source", "a", "--target", "b", "--tail", "maybe"], "'maybe' is not a yes or no"),
    ("learn", ["--source", "a", "--target", "b", "--hidden", "1000000000"], "--hidden = 1000000000"),
    ("probe", ["subspace", "--prompt", "x", "--k", "-2"], "argument --k: -2 is out of range"),
    ("probe", ["subspace", "--prompt", "x", "--steps", "1"], "argument --steps: 1 is out of range"),
    ("probe", ["sweep", "--prompt", "x", "--factors", ","], "names no numbers"),
    ("probe", ["sweep", "--prompt", "x", "--index", "0,1,2,3,4,5,6,7", "--factors", ",".join(["1"] * 200)],
     "a grid of 1600 images"),
])
def test_sizes_and_values_are_bounded_before_work(engine_dirs, tmp_path, command, args, phrase):
    sub = args[:1] if command == "probe" else []
    rest = args[1:] if command == "probe" else args
    proc = run_cli(command, *sub, "--engine", engine_dirs["sd1"], *rest, "-o",
                   tmp_path / ("a.safetensors" if command == "learn" else "x.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and phrase in proc.stderr, proc.stderr


def test_learn_refuses_prompts_that_define_no_attribute(engine_dirs, tmp_path):
    for source, target in (("a red cat", "a red cat"), ("", "a blue cat"), ("a red  cat", "a red cat")):
        proc = run_cli("learn", "--engine", engine_dirs["sd1"], "--source", source, "--target", target,
                       "-o", tmp_path / "a.safetensors")
        assert_clear_error(proc, "learn", "must be two different, non-empty prompts")
    assert not (tmp_path / "a.safetensors").exists()


def test_a_prompt_that_is_not_utf8_is_refused(engine_dirs, tmp_path):
    proc = subprocess.run([sys.executable.encode(), b"-m", b"svdedit.cli", b"generate", b"--engine",
                           str(engine_dirs["sd1"]).encode(), b"--prompt", b"a \xff cat", b"-o",
                           str(tmp_path / "x.png").encode()], capture_output=True, timeout=120)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2 and "Traceback" not in err and "not valid UTF-8" in err, err


def test_images_by_their_header_formats_and_bit_depth(engine_dirs, tmp_path):
    from svdedit.runtime.images import decode_image

    Image.new("L", (1, 200_000)).save(tmp_path / "strip.png")
    t0 = time.perf_counter()
    proc = run_cli("reconstruct", "--engine", engine_dirs["sd1"], "--image", tmp_path / "strip.png", "--prompt", "x",
                   "--steps", 2, "-o", tmp_path / "r.png")
    assert_clear_error(proc, "reconstruct", "aspect ratio beyond 20:1")
    assert time.perf_counter() - t0 < 20
    (tmp_path / "evil.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    proc = run_cli("reconstruct", "--engine", engine_dirs["sd1"], "--image", tmp_path / "evil.png", "--prompt", "x",
                   "-o", tmp_path / "r.png")
    assert_clear_error(proc, "reconstruct", "cannot be read")
    ramp16 = (np.tile(np.linspace(0, 65535, 64), (64, 1))).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    rgb = np.asarray(decode_image(tmp_path / "ramp16.png"))
    assert rgb[0, 0, 0] < 10 and rgb[0, -1, 0] > 245 and 100 < rgb[0, 32, 0] < 160   # scaled by its range
    ramp_f = np.tile(np.linspace(-1.0, 1.0, 64, dtype=np.float32), (64, 1))
    Image.fromarray(ramp_f, mode="F").save(tmp_path / "ramp.tiff")
    rgb = np.asarray(decode_image(tmp_path / "ramp.tiff"))
    assert rgb[0, 0, 0] < 10 and rgb[0, -1, 0] > 245


def test_the_output_suffix_names_the_format(engine_dirs, tmp_path):
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", "--steps", 2, "-o", tmp_path / "x.jpg")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_init_noise_of_another_kind_is_refused(engine_dirs, tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((1, 4, 8, 8), np.complex64))
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", "--init-noise", tmp_path / "c.npy",
                   "-o", tmp_path / "x.png")
    assert_clear_error(proc, "generate", "complex64", "real-valued")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "o.npy").write_bytes(buffer.getvalue())
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", "x", "--init-noise", tmp_path / "o.npy",
                   "-o", tmp_path / "x.png")
    assert_clear_error(proc, "generate", "not a readable .npy")
