"""The sdist and the wheel as a user gets them (built by `make dist`, which `make test` runs first).

The wheel is installed with `[cpu]` into a fresh virtual environment (tests/conftest.py's wheel_venv: under make test pip
takes the lock as constraints) and run from a temporary folder outside the checkout with PYTHONPATH unset:
svdedit is imported from that environment's site-packages, torch is not there, `svdedit env` and `svdedit demo`
run, and an edit through the built-in engine svdedit:shapes equals the same edit through the checkout's export.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run_cli
from tests.conftest import dist_artifact, requires_torch, user_env

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a small red square on the left"


@pytest.fixture(scope="module")
def user(wheel_venv, tmp_path_factory):
    """(venv with the wheel installed, a working folder outside the checkout)."""
    return wheel_venv, tmp_path_factory.mktemp("work")


def _run(user, *args: str) -> subprocess.CompletedProcess:
    venv, work = user
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=user_env(venv), cwd=work,
                          timeout=600)


def test_the_installed_package_is_the_wheels_and_torch_free(user):
    venv, _ = user
    proc = _run(user, venv / "bin" / "python", "-c", "import svdedit.runtime, svdedit.cli; print(svdedit.runtime.__file__)")
    assert proc.returncode == 0, proc.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert Path(proc.stdout.strip()).resolve().is_relative_to(site.resolve()), proc.stdout
    proc = _run(user, venv / "bin" / "python", "-c", "import torch")
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    proc = _run(user, venv / "bin" / "svdedit", "env", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["built_in_engines"] == {"svdedit:shapes": True} and info["torch"] is None
    assert "CPUExecutionProvider" in info["onnxruntime_providers"] and info["onnxruntime"].endswith("(onnxruntime)")
    proc = _run(user, venv / "bin" / "svdedit", "env")
    assert proc.returncode == 0 and "- onnxruntime:" in proc.stdout and "- tensorrt: not installed" in proc.stdout


@requires_torch  # the comparison exports the checkout's own engine dir
def test_demo_and_an_edit_through_the_built_in_engine(user, shapes_engine, tmp_path):
    from PIL import Image

    from models.shapes_data import read_attributes

    venv, work = user
    proc = _run(user, venv / "bin" / "svdedit", "demo", "-o", "demo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "grid.png" in proc.stderr and said["engine"] == "svdedit:shapes"
    grid = np.asarray(Image.open(work / "demo" / "grid.png").convert("RGB"))
    cells = [grid[:192, i * 192:(i + 1) * 192][::3, ::3] for i in range(6)] + \
            [grid[204:, i * 192:(i + 1) * 192][::3, ::3] for i in range(6)]
    colours = [read_attributes(c)["colour"] for c in cells]
    assert colours[:6].count("red") >= 5 and colours[6:].count("blue") >= 5, colours
    attr = work / "demo" / "red2blue.safetensors"
    proc = _run(user, venv / "bin" / "svdedit", "edit", "--engine", "svdedit:shapes", "--attr", attr, "--prompt", PROMPT,
                "--seed", "7", "-o", "installed.png")
    assert proc.returncode == 0, proc.stderr
    checkout = run_cli("edit", "--engine", shapes_engine, "--attr", attr, "--prompt", PROMPT, "--seed", "7",
                       "-o", tmp_path / "checkout.png")
    assert checkout.returncode == 0, checkout.stderr
    a = np.asarray(Image.open(work / "installed.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "checkout.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # the same export, the same onnxruntime: measured 0


def test_the_sdist_carries_the_engine_and_the_torch_free_tests():
    sdist = dist_artifact("svdedit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        manifest = json.load(tar.extractfile(next(m for m in tar.getmembers()
                                                  if m.name.endswith("runtime/svdedit/runtime/packaged/shapes/manifest.json"))))
    for needed in ("runtime/svdedit/runtime/packaged/shapes/unet.onnx", "runtime/svdedit/runtime/packaged/shapes/tokenizer.json", "pyproject.toml",
                   "tests/conftest.py", "tests/runtime/test_ddim.py", "tests/kernels/test_svd.py",
                   "models/shapes_data.py", "CHANGELOG.md"):
        assert needed in names, needed
    assert "path" not in manifest["source"] and "/" not in manifest["source"]["name"]  # no machine path


def test_the_wheel_holds_the_engine_and_nothing_of_the_checkout():
    wheel = dist_artifact("svdedit-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"svdedit/runtime/packaged/shapes/manifest.json", "svdedit/runtime/packaged/shapes/unet.onnx",
            "svdedit/export/data/bpe_simple_vocab_16e6.txt.gz", "svdedit/serve/static/index.html"} <= names
    assert not any(n.startswith(("tests/", "models/", "benchmarks/")) for n in names)
    assert wheel.stat().st_size < 100 * 2**20  # the public index's limit
