"""`svdedit build` (export/svdedit/export/build.py): what to build, checked on CPU without TensorRT (options, profiles, typing,
the build record); the build itself runs only where TensorRT exists (tests/runtime/engines/test_tensorrt.py)."""

from __future__ import annotations

import pytest

from svdedit.export import build
from svdedit.export.build import BuildOptions
from svdedit.runtime.engines import tensorrt as trt_runner
from svdedit.runtime.engines.contract import network_precision
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.errors import SvdeditError, TensorrtError
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixtures export models/shapes
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.14.1"}


@pytest.fixture(scope="module")
def manifest(shapes_engine_plain):
    return read_manifest(shapes_engine_plain)


def test_profiles_follow_the_manifest_and_the_editor(manifest):
    opts = BuildOptions("fp16", (64, 128), max_batch=4).check(manifest)
    inversion, guided = build.profiles(manifest, "unet", opts)
    lo, opt, hi = inversion["sample"]
    assert (lo, opt, hi) == ((1, 4, 16, 16), (4, 4, 16, 16), (4, 4, 32, 32))  # latent = image / vae factor 4
    lo, opt, hi = guided["sample"]
    assert lo[0] == 2 and opt[0] == 8 and hi[0] == 16  # two trajectories, each guided: 4 x max_batch
    assert guided["encoder_hidden_states"][2] == (16, 77, manifest.text.hidden_size)
    assert guided["timestep"] == ((2,), (8,), (16,))
    (text,) = build.profiles(manifest, "text_encoder", opts)
    assert text["input_ids"] == ((1, 77), (8, 77), (9, 77))
    (dec,) = build.profiles(manifest, "vae_decoder", opts)
    assert dec["latent"][2] == (8, 4, 32, 32)


def test_static_profiles_fix_the_size_not_the_batch(manifest):
    opts = BuildOptions("fp16", (64,), max_batch=2, static=True).check(manifest)
    for prof in build.profiles(manifest, "unet", opts):
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
    assert build.parse_shapes(text) == sizes


@pytest.mark.parametrize("text, message", [("512", "HxW"), ("512x768", "square"), ("ax b", "HxW")])
def test_parse_shapes_refusals(text, message):
    with pytest.raises(SvdeditError, match=message):
        build.parse_shapes(text)


def test_vae_stays_fp32_under_fp16_only():
    assert network_precision("vae_decoder", "fp16") == "fp32"
    assert network_precision("vae_decoder", "bf16") == "bf16"
    assert network_precision("unet", "fp16") == "fp16"


def test_typing_follows_the_graph_and_the_tensorrt_version():
    assert build.typing("unet", "fp16", "fp16", "11.4.0") == (True, None)          # fp16 export: strongly typed
    assert build.typing("vae_decoder", "fp32", "fp16", "11.4.0") == (True, None)   # the VAE stays fp32
    assert build.typing("unet", "fp32", "fp16", "10.14.1") == (False, "FP16")      # TensorRT 10: weak typing
    assert build.typing("unet", "fp32", "bf16", "10.14.1") == (False, "BF16")
    with pytest.raises(TensorrtError, match=r"strong typing.*--precision fp16 --no-fuse"):
        build.typing("unet", "fp32", "fp16", "11.4.0")


def test_the_build_record_says_what_was_built_and_keeps_the_engine_dir_as_it_was(shapes_engine_plain, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    manifest_bytes = (shapes_engine_plain / "manifest.json").read_bytes()
    m = read_manifest(shapes_engine_plain)
    key = trt_runner.device_key(H100)
    plans = {"unet": {"file": f"{key}/unet.plan", "sha256": "0" * 64, "precision": "fp16", "profiles": []}}
    rec = build.record_build(m, H100, BuildOptions("fp16", (64, 128), max_batch=2, static=False).check(m), plans)
    assert (rec.key, rec.build.directory, rec.build.shapes, rec.build.max_batch) == (key, key, (64, 128), 2)
    assert rec.build.networks["unet"].precision == "fp16" and rec.build.gpu == H100["gpu"] and rec.build.built
    assert trt_runner.find_plans(m, H100, shapes_engine_plain).build == rec.build
    assert (shapes_engine_plain / "manifest.json").read_bytes() == manifest_bytes  # the engine dir is only read
    assert read_manifest(shapes_engine_plain).identity() == m.identity()
    assert not [p for p in rec.root.iterdir() if ".tmp" in p.name]  # no temporary file left behind
