"""The lock (locks/, issue 26): the committed one is pyproject.toml's, and make refuses, in one line and before
installing anything, a lock that pyproject.toml has moved away from, a Python outside requires-python and a
Python without a lock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK_PY = ROOT / "locks" / "lock.py"


def _lock_check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "locks" / "lock.py"), "check"], capture_output=True, text=True,
                          cwd=root, timeout=60)


@pytest.fixture
def copy(tmp_path) -> Path:
    """What make reads before it installs: the Makefile, pyproject.toml and locks/, in a folder of their own."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "locks", tmp_path / "locks")
    return tmp_path


def _edit_pyproject(root: Path, old: str, new: str) -> None:
    path = root / "pyproject.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _make_dry_run(root: Path) -> subprocess.CompletedProcess:
    """`make -n demo`: what make would do (nothing is installed, whatever it says), as a user's own make (not one
    nested in the make that runs these tests, e.g. make test-oldest: no MAKEFLAGS, no "Entering directory", and
    its RESOLVE and VENV, which make exports to the tests' environment, set back)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run(["make", "-n", "demo", f"PYTHON={sys.executable}", "RESOLVE=locked", "VENV=.venv"],
                          capture_output=True, text=True, cwd=root, env=env, timeout=120)


def _make_refuses(root: Path, *said: str) -> None:
    """make stops with one line that says `said`, before any command of a recipe."""
    proc = _make_dry_run(root)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Makefile:") and "***" in lines[0], proc.stderr
    for words in said:
        assert words in lines[0], (words, lines[0])
    assert not proc.stdout.strip()


def test_the_committed_lock_is_pyproject_tomls():
    proc = _lock_check(ROOT)
    assert proc.returncode == 0, proc.stderr
    lock = subprocess.run([sys.executable, str(LOCK_PY), "path"], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / lock).read_text(), re.M))
    assert pins["torch"].endswith("+cpu")  # the CPU build, not PyPI's CUDA one
    assert {"numpy", "onnxruntime", "tokenizers", "diffusers", "transformers", "fastapi", "ray", "pytest",
            "setuptools"} <= set(pins)  # every extra make installs, and the build backend


def test_make_stops_on_a_lock_that_pyproject_toml_has_moved_away_from(copy):
    proc = _make_dry_run(copy)
    assert proc.returncode == 0 and "uv pip sync" in proc.stdout, proc.stderr  # as committed: it would install
    _edit_pyproject(copy, '"numpy>=1.26"', '"numpy>=1.26", "rich>=13"')
    _make_refuses(copy, "was made from another pyproject.toml", "make lock")


def test_an_edit_that_does_not_change_what_is_installed_keeps_the_lock(copy):
    _edit_pyproject(copy, 'version = "0.2.0"', 'version = "0.2.1"')
    assert _lock_check(copy).returncode == 0


def test_make_stops_on_a_python_outside_requires_python(copy):
    here = "%d.%d" % sys.version_info[:2]
    _edit_pyproject(copy, 'requires-python = ">=3.11,<3.12"', f'requires-python = ">={here},<{here}"')
    _make_refuses(copy, "svdedit needs Python", f"is {here}", "PYTHON=")


def test_make_stops_on_a_python_without_a_lock(copy):
    for lock in (copy / "locks").glob("*.txt"):
        lock.unlink()
    _make_refuses(copy, "no lock for Python", "make lock PYTHON=")
