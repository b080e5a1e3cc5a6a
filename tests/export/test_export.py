"""The export stage on the tiny fixtures: manifest, graphs, parity, tokenizer, schedule, caching.

The oracles are the torch modules themselves (loaded fresh from the pipeline folder), diffusers'
own DDIMScheduler, and transformers' CLIPTokenizer. The parity checked here uses shapes the export
never saw, so it also proves the dynamic axes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch


def _load_torch_parts(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval(),
        AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval(),
    )


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_manifest_describes_the_engine_dir(engine_dirs, flavour):
    from svdedit.runtime.engines.contract import FORMAT_VERSION, NETWORKS
    from svdedit.runtime.engines.manifest import read_manifest
    from svdedit.runtime.files import sha256_file

    d = engine_dirs[flavour]
    m = read_manifest(d)  # verifies every sha256
    assert m.format_version == FORMAT_VERSION
    assert m.family == flavour
    assert m.prediction_type == ("v_prediction" if flavour == "sd2-v" else "epsilon")
    assert m.latent.vae_scale_factor == (4 if flavour == "sd2-v" else 8)
    assert m.image_size.default == 8 * m.latent.vae_scale_factor
    assert set(m.networks) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}  # the whole UNet by default
    for name, net in m.networks.items():
        assert net.sha256 == sha256_file(d / net.file)
        assert net.parity["passed"] is True
        assert 0 <= net.parity["max_abs"] <= net.parity["tolerance"] < 0.1
        assert [i.name for i in net.inputs] == [t.name for t in NETWORKS[name].inputs]
        assert net.inputs[0].shape[0] == "batch"
    assert m.networks["unet"].inputs[2].shape == ("batch", 77, 32)
    assert m.networks["unet"].dynamic_axes["sample"] == {"0": "batch", "2": "latent_height", "3": "latent_width"}
    for key in ("torch", "diffusers", "onnx", "onnxruntime"):
        assert m.versions[key]


def test_graphs_carry_no_path_of_the_machine_that_exported_them(engine_dirs):
    """torch's exporter records each node's Python stack with absolute paths; the export drops it, so an engine
    dir's graphs are the same bytes wherever the checkout and its venv live (and the int8 copy's size bound in
    test_quantize does not move with the length of the checkout's path)."""
    import sys

    machine = [str(Path(__file__).resolve().parents[2]).encode(), sys.prefix.encode(), b"site-packages"]
    for graph in sorted(engine_dirs["sd1"].glob("*.onnx")):
        data = graph.read_bytes()
        assert not [m for m in machine if m in data], graph.name


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_graphs_pass_the_onnx_checker(engine_dirs, flavour):
    import onnx

    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        onnx.checker.check_model(str(engine_dirs[flavour] / f"{name}.onnx"))


def test_unet_matches_torch_at_unseen_batch_and_size(engine_dirs, tiny_pipelines):
    import torch

    unet, _, _ = _load_torch_parts(tiny_pipelines["sd1"])
    rng = np.random.default_rng(7)
    sess = _ort(engine_dirs["sd1"] / "unet.onnx")
    for batch, h, w in ((3, 16, 8), (1, 8, 24)):
        x = rng.standard_normal((batch, 4, h, w)).astype(np.float32)
        t = np.full((batch,), 417.0, np.float32)
        e = rng.standard_normal((batch, 77, 32)).astype(np.float32)
        with torch.no_grad():
            ref = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(e)).sample.numpy()
        out = sess.run(None, {"sample": x, "timestep": t, "encoder_hidden_states": e})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_vae_encoder_exports_the_posterior_mean(engine_dirs, tiny_pipelines):
    import torch

    _, vae, _ = _load_torch_parts(tiny_pipelines["sd1"])
    image = np.random.default_rng(3).uniform(-1, 1, (2, 3, 64, 128)).astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(image)).latent_dist
    sess = _ort(engine_dirs["sd1"] / "vae_encoder.onnx")
    a = sess.run(None, {"image": image})[0]
    b = sess.run(None, {"image": image})[0]
    np.testing.assert_array_equal(a, b)  # deterministic
    np.testing.assert_allclose(a, dist.mean.numpy(), atol=1e-4)
    assert a.shape == (2, 4, 8, 16)
    assert np.abs(dist.std.numpy()).min() > 1e-3  # so a random sample would have differed


def test_vae_decoder_and_text_encoder_match_torch(engine_dirs, tiny_pipelines):
    import torch

    _, vae, te = _load_torch_parts(tiny_pipelines["sd2-v"])
    z = np.random.default_rng(5).standard_normal((2, 4, 6, 10)).astype(np.float32)
    with torch.no_grad():
        ref = vae.decode(torch.from_numpy(z)).sample.numpy()
    out = _ort(engine_dirs["sd2-v"] / "vae_decoder.onnx").run(None, {"latent": z})[0]
    assert out.shape == (2, 3, 24, 40)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    ids = np.random.default_rng(6).integers(0, 49408, (3, 77), dtype=np.int64)
    with torch.no_grad():
        ref = te(torch.from_numpy(ids)).last_hidden_state.numpy()
    out = _ort(engine_dirs["sd2-v"] / "text_encoder.onnx").run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)
    out16 = _ort(engine_dirs["sd2-v-fp16"] / "text_encoder.onnx").run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(out16, ref, atol=5e-2)


def test_fp16_export_converts_only_the_text_encoder_and_unet(engine_dirs):
    import onnx

    m = json.loads((engine_dirs["sd2-v-fp16"] / "manifest.json").read_text())
    assert m["precision"] == "fp16"
    for name in ("text_encoder", "unet"):
        net = m["networks"][name]
        assert net["precision"] == "fp16"
        assert net["parity_fp16"]["measured"] is True and net["parity_fp16"]["passed"] is True
        g = onnx.load(str(engine_dirs["sd2-v-fp16"] / net["file"])).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in g.input)  # fp32 I/O
        assert len({n.name for n in g.node if n.name}) == len([n for n in g.node if n.name])
    for name in ("vae_encoder", "vae_decoder"):
        assert m["networks"][name]["precision"] == "fp32"
        g = onnx.load(str(engine_dirs["sd2-v-fp16"] / f"{name}.onnx")).graph
        assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer)


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_tokenizer_json_loads_without_transformers_and_matches(engine_dirs, tiny_pipelines, flavour):
    from tokenizers import Tokenizer
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(tiny_pipelines[flavour], subfolder="tokenizer")
    tok = Tokenizer.from_file(str(engine_dirs[flavour] / "tokenizer.json"))
    for prompt in ("a photo of a cat", "A large RED circle, on the left!", ""):
        assert tok.encode(prompt).ids == ref(prompt).input_ids
    assert tok.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    m = json.loads((engine_dirs[flavour] / "manifest.json").read_text())
    assert m["text"]["pad_id"] == (0 if flavour == "sd2-v" else 49407)  # SD2 pads with "!"
    assert (m["text"]["bos_id"], m["text"]["eos_id"], m["text"]["model_max_length"]) == (49406, 49407, 77)


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_schedule_json_matches_diffusers_ddim(engine_dirs, tiny_pipelines, flavour):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler.from_pretrained(tiny_pipelines[flavour], subfolder="scheduler")
    s = json.loads((engine_dirs[flavour] / "schedule.json").read_text())
    np.testing.assert_array_equal(np.float32(s["alphas_cumprod"]), ref.alphas_cumprod.numpy())
    np.testing.assert_array_equal(np.float32(s["betas"]), ref.betas.numpy())
    assert s["prediction_type"] == ref.config.prediction_type
    assert (s["timestep_spacing"], s["steps_offset"], s["set_alpha_to_one"]) == ("leading", 1, False)
    assert s["vae_scaling_factor"] == pytest.approx(0.18215)
    assert s["num_train_timesteps"] == 1000


@pytest.mark.slow  # 49 s: a second full export with --force; make dist exercises the no-op in make test
def test_same_export_again_is_a_no_op_and_force_redoes_it(engine_dirs, tiny_pipelines, tmp_path):
    import shutil

    from svdedit.export.exporter import ExportOptions, export_model

    d = tmp_path / "eng"
    shutil.copytree(engine_dirs["sd1"], d)
    stamp = (d / "unet.onnx").stat().st_mtime_ns
    messages = []
    t0 = time.perf_counter()
    export_model(tiny_pipelines["sd1"], d, ExportOptions(), log=messages.append)
    assert time.perf_counter() - t0 < 10
    assert any("up to date" in m for m in messages)
    assert (d / "unet.onnx").stat().st_mtime_ns == stamp
    export_model(tiny_pipelines["sd1"], d, ExportOptions(force=True), log=lambda m: None)
    assert (d / "unet.onnx").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eng"]  # no temporary dirs left behind
