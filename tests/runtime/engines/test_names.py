"""Built-in engine names (runtime/svdedit/runtime/engines/names.py): svdedit:shapes, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from svdedit.runtime.engines import names
from svdedit.runtime.errors import EngineDirError, SvdeditError
from tests.cli import assert_clear_error, run_cli


def test_a_path_stays_a_path_and_a_builtin_name_resolves_inside_the_package(tmp_path, monkeypatch):
    assert names.resolve_engine(tmp_path / "x") == tmp_path / "x"
    assert names.resolve_engine("shapes") == Path("shapes")          # a bare word is a folder name
    monkeypatch.setattr(names, "packaged_root", lambda: tmp_path)
    (tmp_path / "shapes").mkdir()
    with pytest.raises(EngineDirError, match="carries no engine dir for svdedit:shapes.*make dist"):
        names.resolve_engine("svdedit:shapes")
    (tmp_path / "shapes" / "manifest.json").write_text("{}")
    assert names.resolve_engine("svdedit:shapes") == tmp_path / "shapes"


def test_unknown_builtin_names_are_refused():
    with pytest.raises(EngineDirError, match="'svdedit:nope' is not a built-in engine; the built-in ones are svdedit:shapes"):
        names.resolve_engine("svdedit:nope")
    assert_clear_error(run_cli("check", "svdedit:nope"), "check", "not a built-in engine")
    from svdedit.export.build import BuildOptions, build_plans

    with pytest.raises(EngineDirError, match="not a built-in engine"):
        build_plans("svdedit:nope", BuildOptions())


def test_building_plans_for_the_builtin_engine_says_how_to_get_a_plain_export():
    """svdedit:shapes is read-only, which plans no longer mind (they go to the user cache), but its attention is
    fused for onnxruntime, which TensorRT cannot parse: the refusal says how to get an engine dir it can."""
    from svdedit.export.build import BuildOptions
    from svdedit.runtime.engines.manifest import read_manifest

    try:
        manifest = read_manifest("svdedit:shapes", verify="none")
    except EngineDirError:
        pytest.skip("this checkout has no packaged engine (make dist exports it)")
    with pytest.raises(SvdeditError, match=r"--no-fuse.*svdedit:shapes is such an engine dir.*models/shapes"):
        BuildOptions().check(manifest)


def test_the_user_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert names.user_cache_root() == tmp_path / "svdedit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert names.user_cache_root() == Path.home() / ".cache" / "svdedit"
