"""runtime/svdedit/runtime/files.py: atomic directory writes and safetensors header validation (no torch needed)."""

import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.files import atomic_dir, check_safetensors


def test_atomic_dir_appears_only_when_complete(tmp_path):
    final = tmp_path / "eng"
    with atomic_dir(final) as work:
        (work / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]


def test_atomic_dir_failure_leaves_nothing_and_keeps_the_old_dir(tmp_path):
    final = tmp_path / "eng"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as work:
            (work / "half.onnx").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final, replace=True) as work:
            (work / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["eng"] and (final / "old.txt").exists()
    with atomic_dir(final, replace=True) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["eng"]


def test_atomic_dir_removes_what_a_killed_writer_left(tmp_path):
    # a real process that exits (as if killed) in the middle of its write
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".eng.tmp-{pid}-0123abcd"
    stale.mkdir()
    mine = tmp_path / f".eng.tmp-{os.getpid()}-deadbeef"  # a live writer's folder is left alone
    mine.mkdir()
    with atomic_dir(tmp_path / "eng"):
        pass
    assert not stale.exists() and mine.exists()


def _write(tmp_path, name="w.safetensors"):
    path = tmp_path / name
    save_file({"a": np.arange(1000, dtype=np.float32), "b": np.ones((3, 3), np.float32)}, str(path))
    return path


def test_check_safetensors_accepts_a_good_file(tmp_path):
    header = check_safetensors(_write(tmp_path))
    assert set(header) - {"__metadata__"} == {"a", "b"}


@pytest.mark.parametrize("damage, phrase", [
    (lambda b: b[: len(b) - 100], "truncated"),
    (lambda b: b[:5], "only 5 bytes"),
    (lambda b: struct.pack("<Q", 10**12) + b[8:], "header claims"),
    (lambda b: b[:8] + b"{" * 20 + b[28:], "header is corrupt"),
    (lambda b: b"\x89PNG\r\n\x1a\n" + b[8:], "header claims"),
])
def test_check_safetensors_names_the_damage(tmp_path, damage, phrase):
    path = _write(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SvdeditError, match=phrase) as info:
        check_safetensors(path)
    assert str(path) in str(info.value)
