"""Opening an engine dir hashes only what changed since this user last hashed it, and still refuses every damaged or
swapped file (runtime/svdedit/runtime/engines/verified.py)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from svdedit.runtime.engines import manifest as manifest_module
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.engines.verified import record_path
from svdedit.runtime.errors import EngineDirError


@pytest.fixture
def engine(engine_dirs, tmp_path, monkeypatch):
    """A copy of the sd1 engine dir, a fresh record, and a list that collects the names of the files hashed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = tmp_path / "engine"
    shutil.copytree(engine_dirs["sd1"], d)
    hashed = []
    real = manifest_module.sha256_file

    def counting(path):
        hashed.append(os.path.basename(path))
        return real(path)
    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return d, hashed


def _largest(d):
    m = read_manifest(d, verify="none")
    return max((rel for rel, _ in m.files()), key=lambda rel: (d / rel).stat().st_size)


def test_the_first_open_hashes_every_file_and_the_next_none(engine):
    d, hashed = engine
    files = sorted(rel for rel, _ in read_manifest(d, verify="none").files())
    read_manifest(d)
    assert sorted(hashed) == files and record_path().is_file()
    hashed.clear()
    read_manifest(d)
    assert hashed == []
    read_manifest(d, verify="all")  # `svdedit check`, export, build: everything, always
    assert sorted(hashed) == files


def test_a_changed_file_alone_is_hashed_again(engine):
    d, hashed = engine
    read_manifest(d)
    hashed.clear()
    (d / "schedule.json").touch()
    read_manifest(d)
    assert hashed == ["schedule.json"]


def _damaged_copy(target, into, at: int):
    """Write `target`'s bytes with the byte at `at` flipped into `into`, with `target`'s size and times (ctime excepted:
    nothing can set it back); return `target`'s stat from before."""
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[at] ^= 0xFF
    into.write_bytes(bytes(data))
    os.utime(into, ns=(st.st_atime_ns, st.st_mtime_ns))
    return st


def test_a_same_size_rewrite_with_its_mtime_set_back_is_refused(engine):
    d, hashed = engine
    read_manifest(d)
    target = d / _largest(d)
    st = _damaged_copy(target, target, target.stat().st_size // 2)
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(EngineDirError, match="does not match the manifest"):
        read_manifest(d)
    with pytest.raises(EngineDirError, match="does not match the manifest"):  # and it stays refused
        read_manifest(d)


def test_a_file_swapped_in_by_a_rename_is_refused(engine):
    d, hashed = engine
    read_manifest(d)
    target = d / _largest(d)
    swapped = d / "swapped.tmp"
    _damaged_copy(target, swapped, 0)
    os.replace(swapped, target)  # another inode, the same size and mtime
    with pytest.raises(EngineDirError, match="does not match the manifest"):
        read_manifest(d)


def test_a_damaged_or_foreign_record_only_costs_a_hash(engine):
    d, hashed = engine
    read_manifest(d)
    key = str(d.resolve())
    for text in ("{not json", json.dumps({"version": 99, "dirs": {}}), json.dumps([1, 2]),
                 json.dumps({"version": 1, "dirs": {key: [1, 2]}})):
        record_path().write_text(text)
        hashed.clear()
        read_manifest(d)
        assert hashed, text
    # a record that vouches for other bytes (another sha256) vouches for nothing
    data = json.loads(record_path().read_text())
    for entry in next(iter(data["dirs"].values())).values():
        entry[-1] = "0" * 64
    record_path().write_text(json.dumps(data))
    hashed.clear()
    read_manifest(d)
    assert len(hashed) == len(read_manifest(d, verify="none").files())


def test_an_unwritable_cache_hashes_every_time(engine, tmp_path, monkeypatch):
    d, hashed = engine
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    read_manifest(d)
    first = len(hashed)
    read_manifest(d)
    assert first and len(hashed) == 2 * first
