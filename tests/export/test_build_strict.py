"""`svdedit build` driven through a strict stand-in for TensorRT 11 (tests/fixtures/strict_tensorrt.py): what the
build asks of TensorRT's API, and what it does where TensorRT returns None or refuses a timing cache. No GPU and no
TensorRT needed; what the stand-in cannot prove (that real kernels build and agree) is tests/runtime/engines/
test_tensorrt.py's integration test, on a GPU."""

from __future__ import annotations

import json

import pytest

from svdedit.export import build
from svdedit.export.build import BuildOptions
from svdedit.runtime.engines import plans as plans_mod
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.engines.plans import device_key
from svdedit.runtime.errors import TensorrtError
from tests.conftest import requires_torch
from tests.fixtures.strict_tensorrt import install

pytestmark = requires_torch  # the engine fixture exports models/shapes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def _key(version="11.4.0"):
    return device_key({"gpu": "Strict Fake GPU", "compute_capability": "9.0", "tensorrt": version})


def test_a_build_on_tensorrt_11_writes_plans_and_its_own_timing_cache(shapes_engine_plain, cache, monkeypatch):
    trt, seen = install(monkeypatch, version="11.4.0")
    messages = []
    plans = build.build_plans(shapes_engine_plain, BuildOptions(), log=messages.append)
    manifest = read_manifest(shapes_engine_plain)
    assert plans.key == _key() and set(plans.build.networks) == set(manifest.networks)
    for name in manifest.networks:
        assert plans.intact(name)
    root = plans_mod.plans_dir(manifest)
    timing = json.loads((root / f"timing-{_key()}.cache").read_bytes())
    assert timing["builds"] == len(manifest.networks)  # one cache, carried from network to network
    assert [c[1] for c in seen.calls if c[0] == "create_network"] == [0] * len(manifest.networks)  # no STRONGLY_TYPED
    assert all(flags == [] for what, _, flags in (c for c in seen.calls if c[0] == "build"))        # no precision flag


def test_tensorrt_10_gets_the_strongly_typed_flag_and_another_timing_cache(shapes_engine_plain, cache, monkeypatch):
    _, seen = install(monkeypatch, version="10.13.2")
    build.build_plans(shapes_engine_plain, BuildOptions())
    assert {c[1] for c in seen.calls if c[0] == "create_network"} == {1 << 1}
    install(monkeypatch, version="11.4.0")
    build.build_plans(shapes_engine_plain, BuildOptions())
    root = plans_mod.plans_dir(read_manifest(shapes_engine_plain))
    assert sorted(p.name for p in root.glob("timing-*.cache")) == sorted(
        [f"timing-{_key('10.13.2')}.cache", f"timing-{_key()}.cache"])
    assert set(plans_mod.cached_builds(read_manifest(shapes_engine_plain))) == {_key("10.13.2"), _key()}


@pytest.mark.parametrize("blob", [b"not a timing cache", json.dumps({"device": "another-gpu", "builds": 7}).encode()])
def test_a_rejected_timing_cache_is_set_aside_and_the_plans_are_kept(shapes_engine_plain, cache, monkeypatch, blob):
    install(monkeypatch)
    manifest = read_manifest(shapes_engine_plain)
    root = plans_mod.writable_plans_dir(manifest)
    stale = root / f"timing-{_key()}.cache"
    stale.write_bytes(blob)
    messages = []
    plans = build.build_plans(shapes_engine_plain, BuildOptions(), log=messages.append)
    assert all(plans.intact(n) for n in manifest.networks)
    assert any("rejected the timing cache" in m for m in messages)
    assert (root / f"timing-{_key()}.cache.rejected").read_bytes() == blob
    assert json.loads(stale.read_bytes())["device"] == "strict-fake-gpu"   # a fresh cache in its place


def test_a_failed_network_build_keeps_the_previous_plans(shapes_engine_plain, cache, monkeypatch):
    install(monkeypatch)
    first = build.build_plans(shapes_engine_plain, BuildOptions())
    before = {n: first.path(n).read_bytes() for n in first.build.networks}
    _, seen = install(monkeypatch, fail_build={"unet"})
    with pytest.raises(TensorrtError, match="failed to build unet"):
        build.build_plans(shapes_engine_plain, BuildOptions(max_batch=2))
    again = plans_mod.all_plans(read_manifest(shapes_engine_plain), shapes_engine_plain)[_key()]
    assert again.build.max_batch == first.build.max_batch
    assert {n: again.path(n).read_bytes() for n in again.build.networks} == before


def test_no_builder_is_a_clear_error(shapes_engine_plain, cache, monkeypatch):
    install(monkeypatch, builder_is_none=True)
    with pytest.raises(TensorrtError, match="could not create a builder"):
        build.build_plans(shapes_engine_plain, BuildOptions())


def test_fused_attention_is_what_the_parser_refuses(shapes_engine, cache, monkeypatch):
    install(monkeypatch)  # the options check refuses it first; without that check the parser names the op
    manifest = read_manifest(shapes_engine)
    monkeypatch.setattr(BuildOptions, "check", lambda self, m: BuildOptions("fp32", (m.image_size.default,)))
    with pytest.raises(TensorrtError, match="cannot parse .*MultiHeadAttention"):
        build.build_plans(shapes_engine, BuildOptions())
    assert not (plans_mod.plans_dir(manifest) / _key()).exists()  # nothing half-written


def test_weak_typing_on_tensorrt_11_names_the_export_to_make(shapes_engine_plain, cache, monkeypatch):
    install(monkeypatch)
    with pytest.raises(TensorrtError, match=r"strong typing.*--precision fp16 --no-fuse"):
        build.build_plans(shapes_engine_plain, BuildOptions(precision="fp16"))


def test_a_tensorrt_int8_engine_dir_builds_strongly_typed_from_its_qdq(shapes_engine_plain, cache, monkeypatch,
                                                                        tmp_path):
    from svdedit.export.quantize import QuantizeOptions, quantize_engine

    int8 = tmp_path / "int8"
    quantize_engine(shapes_engine_plain, int8, QuantizeOptions(mode="tensorrt", prompts=1, steps=4))
    _, seen = install(monkeypatch, version="11.4.0")
    plans = build.build_plans(int8, BuildOptions())
    assert plans.build.networks["unet"].precision == "int8" and plans.build.networks["vae_decoder"].precision == "fp32"
    assert all(flags == [] for what, _, flags in (c for c in seen.calls if c[0] == "build"))   # no INT8 flag in 11
    _, seen = install(monkeypatch, version="10.13.2")
    build.build_plans(int8, BuildOptions())
    assert {c[1] for c in seen.calls if c[0] == "create_network"} == {1 << 1}  # strongly typed on 10 too


# ---- refit (the LoRA issue swaps weights this way) ----
def _a_weight(engine):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(engine / "unet.onnx"))
    init = next(i for i in model.graph.initializer if len(i.dims) >= 2)
    return init.name, numpy_helper.to_array(init)


def test_a_refittable_build_takes_new_weights_without_a_rebuild(shapes_engine_plain, cache, monkeypatch):
    import numpy as np

    _, seen = install(monkeypatch)
    plans = build.build_plans(shapes_engine_plain, BuildOptions(refittable=True))
    assert plans.build.refittable and all("REFIT" in flags for what, _, flags in (c for c in seen.calls
                                                                                   if c[0] == "build"))
    old = plans.path("unet")
    name, value = _a_weight(shapes_engine_plain)
    messages = []
    after = build.refit_plan(shapes_engine_plain, "unet", {name: value * 2}, log=messages.append)
    assert after.intact("unet") and after.path("unet") != old and not old.exists()
    assert json.loads(after.path("unet").read_bytes()[len(b"STRICT-TRT-PLAN\n"):])["refitted"] == {
        name: pytest.approx(float(np.asarray(value, np.float64).sum() * 2))}
    assert all(after.intact(n) for n in after.build.networks) and "refitted" in messages[0]
    from svdedit.runtime.engines.tensorrt import TensorrtRunner

    with TensorrtRunner(shapes_engine_plain, "unet", read_manifest(shapes_engine_plain)) as unet:
        assert unet.provider == "TensorRT"


def test_refit_refusals_keep_the_plan_in_use(shapes_engine_plain, cache, monkeypatch):
    install(monkeypatch)
    build.build_plans(shapes_engine_plain, BuildOptions())
    name, value = _a_weight(shapes_engine_plain)
    with pytest.raises(TensorrtError, match="built without --refittable.*svdedit build .*--refittable"):
        build.refit_plan(shapes_engine_plain, "unet", {name: value})
    plans = build.build_plans(shapes_engine_plain, BuildOptions(refittable=True))
    before = plans.path("unet").read_bytes()
    with pytest.raises(TensorrtError, match="no weights named not.a.weight.*ONNX initializer names"):
        build.refit_plan(shapes_engine_plain, "unet", {"not.a.weight": value})
    with pytest.raises(TensorrtError, match=f"refused the weights {name}.*shape"):
        build.refit_plan(shapes_engine_plain, "unet", {name: value.ravel()[:-1]})
    install(monkeypatch, fail_refit=True)
    with pytest.raises(TensorrtError, match="could not refit unet's plan.*old plan stays"):
        build.refit_plan(shapes_engine_plain, "unet", {name: value})
    again = plans_mod.all_plans(read_manifest(shapes_engine_plain), shapes_engine_plain)[_key()]
    assert again.path("unet").read_bytes() == before and again.intact("unet")
