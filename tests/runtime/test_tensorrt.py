"""TensorRT plans: everything that needs neither TensorRT nor a GPU (profiles, keys, the manifest record,
refusals) on CPU; the builds and the runner against onnxruntime where both exist (markers gpu + tensorrt)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from svdedit.runtime import tensorrt as trt_mod
from svdedit.runtime.contract import engine_identity, read_manifest
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.tensorrt import BuildOptions, TensorrtError

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.14.1"}


@pytest.fixture(scope="module")
def manifest(shapes_engine_plain):
    return read_manifest(shapes_engine_plain)


def test_profiles_follow_the_manifest_and_the_editor(manifest):
    opts = BuildOptions("fp16", (64, 128), max_batch=4).check(manifest)
    inversion, guided = trt_mod.profiles(manifest, "unet", opts)
    lo, opt, hi = inversion["sample"]
    assert (lo, opt, hi) == ((1, 4, 16, 16), (4, 4, 16, 16), (4, 4, 32, 32))  # latent = image / vae factor 4
    lo, opt, hi = guided["sample"]
    assert lo[0] == 2 and opt[0] == 8 and hi[0] == 16  # two trajectories, each guided: 4 x max_batch
    assert guided["encoder_hidden_states"][2] == (16, 77, manifest["text"]["hidden_size"])
    assert guided["timestep"] == ((2,), (8,), (16,))
    (text,) = trt_mod.profiles(manifest, "text_encoder", opts)
    assert text["input_ids"] == ((1, 77), (8, 77), (9, 77))
    (dec,) = trt_mod.profiles(manifest, "vae_decoder", opts)
    assert dec["latent"][2] == (8, 4, 32, 32)


def test_static_profiles_fix_the_size_not_the_batch(manifest):
    opts = BuildOptions("fp16", (64,), max_batch=2, static=True).check(manifest)
    for prof in trt_mod.profiles(manifest, "unet", opts):
        lo, opt, hi = prof["sample"]
        assert lo[1:] == opt[1:] == hi[1:] == (4, 16, 16) and lo[0] < hi[0]
    with pytest.raises(SvdeditError, match="exactly one"):
        BuildOptions("fp16", (64, 128), static=True).check(manifest)


@pytest.mark.parametrize("options, message", [
    (BuildOptions("int8"), "not supported"),
    (BuildOptions("fp16", (72,)), "multiple of 16"),
    (BuildOptions("fp16", (4096,)), "outside this model's sizes"),
    (BuildOptions("fp16", max_batch=0), "--max-batch 0"),
])
def test_bad_build_options_are_refused_with_the_fix(manifest, options, message):
    with pytest.raises(SvdeditError, match=message):
        options.check(manifest)


def test_fused_graphs_are_refused(shapes_engine):
    with pytest.raises(SvdeditError, match="--no-fuse"):
        BuildOptions().check(read_manifest(shapes_engine))  # the default export fuses attention


@pytest.mark.parametrize("text, sizes", [("512x512", (512,)), ("512x512, 768x768", (512, 768))])
def test_parse_shapes(text, sizes):
    assert trt_mod.parse_shapes(text) == sizes


@pytest.mark.parametrize("text, message", [("512", "HxW"), ("512x768", "square"), ("ax b", "HxW")])
def test_parse_shapes_refusals(text, message):
    with pytest.raises(SvdeditError, match=message):
        trt_mod.parse_shapes(text)


def test_vae_stays_fp32_under_fp16_only():
    assert trt_mod.network_precision("vae_decoder", "fp16") == "fp32"
    assert trt_mod.network_precision("vae_decoder", "bf16") == "bf16"
    assert trt_mod.network_precision("unet", "fp16") == "fp16"


def test_typing_follows_the_graph_and_the_tensorrt_version():
    assert trt_mod.typing("unet", "fp16", "fp16", "11.4.0") == (True, None)          # fp16 export: strongly typed
    assert trt_mod.typing("vae_decoder", "fp32", "fp16", "11.4.0") == (True, None)   # the VAE stays fp32
    assert trt_mod.typing("unet", "fp32", "fp16", "10.14.1") == (False, "FP16")      # TensorRT 10: weak typing
    assert trt_mod.typing("unet", "fp32", "bf16", "10.14.1") == (False, "BF16")
    with pytest.raises(TensorrtError, match=r"strong typing.*--precision fp16 --no-fuse"):
        trt_mod.typing("unet", "fp32", "fp16", "11.4.0")


def test_device_key_names_gpu_capability_and_version():
    assert trt_mod.device_key(H100) == "nvidia-h100-80gb-hbm3_sm90_trt10.14.1"
    assert trt_mod.device_key(H100) != trt_mod.device_key({**H100, "tensorrt": "10.13.0"})


def test_record_build_is_atomic_and_keeps_the_engine_identity(shapes_engine_plain, tmp_path, manifest):
    d = tmp_path / "engine"
    shutil.copytree(shapes_engine_plain, d)
    before = engine_identity(read_manifest(d))
    plans = {"unet": {"file": "tensorrt/x/unet.plan", "sha256": "0" * 64, "precision": "fp16", "profiles": []}}
    new = trt_mod.record_build(d, read_manifest(d), H100, BuildOptions("fp16", (64,)), plans)
    assert read_manifest(d, verify_hashes=True)["tensorrt"] == new["tensorrt"]
    assert engine_identity(read_manifest(d)) == before  # attribute files learned before the build still load
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    key = trt_mod.device_key(H100)
    assert trt_mod.find_plans(new, H100, d) is new["tensorrt"][key]


def test_plans_for_another_gpu_or_version_are_refused_with_rebuild(manifest, tmp_path):
    m = json.loads(json.dumps(manifest))
    with pytest.raises(TensorrtError, match="no TensorRT plans; build them with `svdedit build"):
        trt_mod.find_plans(m, H100, tmp_path)
    m["tensorrt"] = {"k": {**H100, "networks": {}}}
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
    with pytest.raises(TensorrtError, match=r"outside the TensorRT plan's profiles.*--max-batch"):
        trt_mod.choose_profile(profs, {"sample": (9, 4, 8, 8)}, "unet")


def test_ort_tensorrt_provider_keeps_its_caches_in_the_engine_dir(tmp_path):
    from svdedit.runtime.engine import provider_entry

    name, opts = provider_entry("TensorrtExecutionProvider", tmp_path, "fp16")
    assert opts["trt_engine_cache_path"] == str(tmp_path / "tensorrt" / "ort-cache")
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_fp16_enable"] == "True"
    assert provider_entry("CPUExecutionProvider", tmp_path, "fp32") == "CPUExecutionProvider"


def test_auto_uses_onnxruntime_without_plans(manifest, shapes_engine):
    from svdedit.runtime.engine import Engine, open_engines

    assert not trt_mod.plans_for_this_device(manifest)
    assert all(isinstance(e, Engine) for e in open_engines(shapes_engine, manifest, "auto").values())


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
    from svdedit.runtime.engine import Engine
    from svdedit.runtime.pipeline import Pipeline

    d = tmp_path / "engine"
    shutil.copytree(shapes_engine_plain, d)
    m = trt_mod.build_plans(d, BuildOptions("fp32", (64,), max_batch=2), log_fn=lambda s: None)
    rng = np.random.default_rng(0)
    shared = trt_mod.SharedActivations()
    sizes = {"batch": 2, "height": 64, "width": 64, "latent_height": 16, "latent_width": 16}
    for name, net in m["networks"].items():
        feeds = {}
        for i in net["inputs"]:
            shape = [sizes.get(s, s) for s in i["shape"]]
            feeds[i["name"]] = (np.full(shape, 320, np.int64) if i["dtype"] == "int64"
                                else rng.standard_normal(shape).astype(np.float32))
        with Engine(d, name, "cpu", m) as ort_run, trt_mod.TensorrtEngine(d, name, m, shared) as trt_run:
            a, b = ort_run(**feeds), trt_run(**feeds)
        for k in a:
            assert np.abs(a[k] - b[k]).max() <= 10 * net["parity"]["tolerance"], name
    with Pipeline(d, "cpu") as p_ort, Pipeline(d, "tensorrt") as p_trt:
        assert p_trt.providers["unet"] == "TensorRT"
        x = p_ort.generate("a large red circle in the middle", seed=0, steps=10, guidance=3.0)
        y = p_trt.generate("a large red circle in the middle", seed=0, steps=10, guidance=3.0)
    assert np.abs(x - y).max() < 2e-2
