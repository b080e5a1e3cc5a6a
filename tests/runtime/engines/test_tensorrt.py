"""The TensorRT runner (runtime/svdedit/runtime/engines/tensorrt.py): which plans this machine can run and the refusals, on CPU;
the builds and the runner against onnxruntime where both exist (markers gpu + tensorrt)."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from svdedit.runtime.engines import tensorrt as trt_mod
from svdedit.runtime.engines.contract import resolve_shape
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.engines.plans import IN_CACHE
from svdedit.runtime.errors import TensorrtError
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixtures export models/shapes
HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.14.1"}


@pytest.fixture(scope="module")
def manifest(shapes_engine_plain):
    return read_manifest(shapes_engine_plain)


def test_device_key_names_gpu_capability_and_version():
    assert trt_mod.device_key(H100) == "nvidia-h100-80gb-hbm3_sm90_trt10.14.1"
    assert trt_mod.device_key(H100) != trt_mod.device_key({**H100, "tensorrt": "10.13.0"})


def test_plans_for_another_gpu_or_version_are_refused_with_rebuild(manifest, tmp_path):
    with pytest.raises(TensorrtError, match="no TensorRT plans for this machine; build them with `svdedit build"):
        trt_mod.find_plans(manifest, H100, tmp_path)
    m = manifest.with_tensorrt_build("k", {**H100, "directory": "tensorrt/k", "precision": "fp16", "shapes": [64],
                                           "max_batch": 4, "static": False, "networks": {}})
    a100 = {"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "tensorrt": "10.14.1"}
    with pytest.raises(TensorrtError, match=r"built for NVIDIA H100.*this machine has NVIDIA A100.*svdedit build"):
        trt_mod.find_plans(m, a100, tmp_path)
    newer = {**H100, "tensorrt": "10.15.0"}
    with pytest.raises(TensorrtError, match="TensorRT 10.14.1.*TensorRT 10.15.0"):
        trt_mod.find_plans(m, newer, tmp_path)


def test_choose_profile_picks_the_range_or_names_it():
    profs = [{"sample": ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8))}, {"sample": ((2, 4, 8, 8), (4, 4, 8, 8), (8, 4, 8, 8))}]
    assert trt_mod.choose_profile(profs, {"sample": (1, 4, 8, 8)}, "unet") == 0
    assert trt_mod.choose_profile(profs, {"sample": (6, 4, 8, 8)}, "unet") == 1
    with pytest.raises(TensorrtError, match=r"outside the TensorRT plan's profiles.*svdedit build --help"):
        trt_mod.choose_profile(profs, {"sample": (9, 4, 8, 8)}, "unet")


def test_ort_tensorrt_provider_keeps_its_caches_in_the_users_cache(tmp_path, monkeypatch):
    from svdedit.runtime.engines.names import engine_cache_dir
    from svdedit.runtime.engines.onnxrt import provider_entry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = engine_cache_dir("ab" * 32, "cd" * 32)  # the model's identity, its graphs
    assert folder == tmp_path / "xdg" / "svdedit" / "engines" / f"{'ab' * 8}-{'cd' * 4}"
    name, opts = provider_entry("TensorrtExecutionProvider", folder, "fp16")
    assert opts["trt_engine_cache_path"] == str(folder / "ort-tensorrt") and (folder / "ort-tensorrt").is_dir()
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_fp16_enable"] == "True"
    assert provider_entry("CPUExecutionProvider", tmp_path, "fp32") == "CPUExecutionProvider"


def test_auto_uses_onnxruntime_without_plans(manifest, shapes_engine_plain, shapes_engine):
    from svdedit.runtime.engines import OrtRunner, open_engines

    assert not trt_mod.plans_for_this_device(manifest, shapes_engine_plain)
    assert all(isinstance(e, OrtRunner) for e in open_engines(shapes_engine, manifest, "auto").values())


@pytest.mark.skipif(HAVE_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_build_says_how_to_install(shapes_engine_plain, tmp_path):
    from tests.cli import run_cli

    d = tmp_path / "engine"
    shutil.copytree(shapes_engine_plain, d)
    before = (d / "manifest.json").read_bytes()
    r = run_cli("build", str(d), "--shapes", "64x64")
    assert r.returncode == 2 and "pypi.nvidia.com" in r.stderr and "Traceback" not in r.stderr
    assert (d / "manifest.json").read_bytes() == before and not (d / "tensorrt").exists()
    r = run_cli("build", str(d), "--shapes", "65x65")
    assert r.returncode == 2 and "multiple of 16" in r.stderr
    r = run_cli("generate", "--engine", str(d), "--provider", "tensorrt", "--prompt", "x", "-o", str(tmp_path / "a.png"))
    assert r.returncode == 2 and "pypi.nvidia.com" in r.stderr and "Traceback" not in r.stderr


# ---- where TensorRT and a GPU exist ----
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TENSORRT, reason="needs TensorRT")
def test_plans_match_onnxruntime_per_network_and_end_to_end(shapes_engine_plain, tmp_path):
    from svdedit.export.build import BuildOptions, build_plans
    from svdedit.runtime.engines import OrtRunner, TensorrtRunner
    from svdedit.runtime.pipeline import Pipeline

    d = tmp_path / "engine"
    shutil.copytree(shapes_engine_plain, d)
    plans = build_plans(d, BuildOptions("fp32", (64,), max_batch=2))
    assert plans.where == IN_CACHE and not (d / "tensorrt").exists()   # the engine dir is only read
    m = read_manifest(d)
    rng = np.random.default_rng(0)
    shared = trt_mod.SharedActivations()
    sizes = m.axis_sizes(batch=2, size=64)
    for name, net in m.networks.items():
        feeds = {t.name: (np.full(resolve_shape(t.shape, sizes), 320, np.int64) if t.dtype == "int64"
                          else rng.standard_normal(resolve_shape(t.shape, sizes)).astype(np.float32))
                 for t in net.inputs}
        with OrtRunner(d, name, m, "cpu") as ort_run, TensorrtRunner(d, name, m, shared) as trt_run:
            a, b = ort_run(**feeds), trt_run(**feeds)
        for k in a:
            assert np.abs(a[k] - b[k]).max() <= 10 * net.parity["tolerance"], name
    with Pipeline(d, "cpu") as p_ort, Pipeline(d, "tensorrt") as p_trt:
        assert p_trt.providers["unet"] == "TensorRT"
        x = p_ort.generate("a large red circle in the middle", seed=0, steps=10, guidance=3.0)
        y = p_trt.generate("a large red circle in the middle", seed=0, steps=10, guidance=3.0)
    assert np.abs(x - y).max() < 2e-2
