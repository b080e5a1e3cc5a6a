"""Where TensorRT plans live (runtime/svdedit/runtime/engines/plans.py): the user cache, keyed by the engine's model and graphs;
the build record checked like a manifest; svdedit 0.1's plans in the engine dir still found. On CPU: the plans
here are files with known hashes, recorded as `svdedit build` records them (its TensorRT part runs only with
TensorRT: tests/runtime/engines/test_tensorrt.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from svdedit.export.build import BuildOptions, record_build
from svdedit.runtime.engines import plans as plans_mod
from svdedit.runtime.engines.manifest import Manifest, read_manifest
from svdedit.runtime.engines.plans import device_key
from svdedit.runtime.engines.tensorrt import find_plans
from svdedit.runtime.errors import SvdeditError, TensorrtError
from svdedit.runtime.files import sha256_file
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixture exports models/shapes
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.14.1"}
A100 = {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "tensorrt": "10.14.1"}


@pytest.fixture
def engine(shapes_engine_plain, tmp_path, monkeypatch):
    """A private copy of the plain engine dir, and a private user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = tmp_path / "engine"
    shutil.copytree(shapes_engine_plain, d)
    return d


def fake_build(manifest: Manifest, device: dict, content: bytes = b"plan") -> object:
    """Files where `svdedit build` puts plans, recorded as it records them."""
    key = device_key(device)
    folder = plans_mod.writable_plans_dir(manifest) / key
    folder.mkdir()
    networks = {}
    for name in manifest.networks:
        (folder / f"{name}.plan").write_bytes(content + name.encode())
        networks[name] = {"file": f"{key}/{name}.plan", "sha256": sha256_file(folder / f"{name}.plan"),
                          "precision": "fp32", "profiles": []}
    return record_build(manifest, device, BuildOptions("fp32", (64,)), networks)


def test_build_records_plans_in_the_user_cache_and_leaves_the_engine_dir_alone(engine, tmp_path):
    before = {p.name: p.read_bytes() for p in engine.iterdir()}
    m = read_manifest(engine)
    plans = fake_build(m, H100)
    assert plans.root == tmp_path / "xdg" / "svdedit" / "engines" / f"{m.identity()[:16]}-{m.graphs_key()[:8]}" / "tensorrt"
    assert {p.name: p.read_bytes() for p in engine.iterdir()} == before  # nothing written into the engine dir
    found = find_plans(read_manifest(engine), H100, engine)
    assert found.where == plans_mod.IN_CACHE and found.build == plans.build
    assert found.path("unet").read_bytes() == b"planunet"
    fake_build(m, A100)                                     # a second GPU sharing the cache keeps the first
    assert set(plans_mod.all_plans(m, engine)) == {device_key(H100), device_key(A100)}
    shutil.rmtree(plans.root / device_key(A100))
    fake_build(m, A100, b"again")                           # a rebuild replaces its own record only
    assert find_plans(m, A100, engine).path("unet").read_bytes() == b"againunet"
    assert not [p for p in plans.root.iterdir() if ".tmp-" in p.name]


def test_copies_share_plans_other_graphs_do_not(engine, tmp_path):
    m = read_manifest(engine)
    fake_build(m, H100)
    copy = tmp_path / "copy"
    shutil.copytree(engine, copy)
    assert find_plans(read_manifest(copy), H100, copy).where == plans_mod.IN_CACHE    # same graphs: same plans
    raw = m.to_dict()
    raw["networks"]["unet"]["sha256"] = "f" * 64                                     # another export of the model
    other = Manifest.from_dict(raw)
    assert other.identity() == m.identity() and plans_mod.plans_dir(other) != plans_mod.plans_dir(m)
    with pytest.raises(TensorrtError, match="no TensorRT plans for this machine; build them with `svdedit build"):
        find_plans(other, H100, engine)


def test_plans_of_svdedit_0_1_in_the_engine_dir_are_still_found_and_the_cache_wins(engine):
    m = read_manifest(engine)
    key = device_key(H100)
    legacy = m.with_tensorrt_build(key, {**H100, "directory": f"tensorrt/{key}", "precision": "fp32", "shapes": [64],
                                         "max_batch": 4, "static": False, "networks": {}})
    found = find_plans(legacy, H100, engine)
    assert found.where == plans_mod.IN_ENGINE_DIR and found.root == engine
    fake_build(legacy, H100)
    assert find_plans(legacy, H100, engine).where == plans_mod.IN_CACHE


def _record(m: Manifest) -> dict:
    return json.loads((plans_mod.plans_dir(m) / plans_mod.BUILDS_FILE).read_text())


@pytest.mark.parametrize("damage, message", [
    (lambda r: "{not json", "is corrupt"),
    (lambda r: {**r, "format_version": 7}, "not a build record of this svdedit"),
    (lambda r: {**r, "graphs": "0" * 64}, "other ONNX graphs"),
    (lambda r: {**r, "builds": []}, "builds should be an object"),
    (lambda r: {**r, "builds": {k: {**b, "networks": {"unet": {**b["networks"]["unet"], "file": "../../x.plan"}}}
                                for k, b in r["builds"].items()}}, r"'\.\./\.\./x\.plan' is not a plain relative"),
    (lambda r: {**r, "builds": {k: {**b, "max_batch": "four"}for k, b in r["builds"].items()}},
     "max_batch should be a whole number"),
    (lambda r: {**r, "builds": {"another-gpu": b for b in r["builds"].values()}}, "not under its key"),
])
def test_a_damaged_build_record_is_a_clear_error_and_the_next_build_replaces_it(engine, damage, message):
    m = read_manifest(engine)
    fake_build(m, H100)
    path = plans_mod.plans_dir(m) / plans_mod.BUILDS_FILE
    new = damage(_record(m))
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(TensorrtError, match=message) as err:
        find_plans(m, H100, engine)
    assert "svdedit build" in str(err.value) and str(plans_mod.plans_dir(m)) in str(err.value)
    shutil.rmtree(plans_mod.plans_dir(m) / device_key(H100))
    fake_build(m, H100)                                      # a build over a damaged record writes a sound one
    assert find_plans(m, H100, engine).where == plans_mod.IN_CACHE


def test_an_unwritable_cache_is_named_with_the_fix(engine, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    with pytest.raises(SvdeditError, match=r"cannot write TensorRT plans into .*a-file/svdedit.*XDG_CACHE_HOME"):
        plans_mod.writable_plans_dir(read_manifest(engine))


def test_check_reports_each_build_and_fails_on_a_changed_plan(engine):
    from tests.cli import run_cli

    m = read_manifest(engine)
    plans = fake_build(m, H100)
    proc = run_cli("check", engine)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr
    (build_line,) = [line for line in lines if "tensorrt" in line]
    assert build_line["tensorrt"] == device_key(H100) and build_line["ok"] and build_line["where"] == plans_mod.IN_CACHE
    plans.path("unet").write_bytes(b"changed")
    proc = run_cli("check", engine)
    (build_line,) = [json.loads(line) for line in proc.stdout.splitlines() if '"tensorrt"' in line]
    assert proc.returncode == 1 and not build_line["ok"] and "unet" in build_line["error"]
    assert "svdedit build" in build_line["error"] and "Traceback" not in proc.stderr
