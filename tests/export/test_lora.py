"""LoRA (export/svdedit/export/lora.py, runtime/svdedit/runtime/engines/lora.py): fused at export, and swapped at run
time torch-free, each against diffusers' own load_lora_weights on the tiny SD 1 fixture.

One export serves every test (tests/conftest.py lora_engine, which the service's LoRA tests share): the fixture with
adapter A (UNet and text-encoder layers, diffusers/peft format) fused at scale 1, exported --lora-ready. Adapter B
(UNet, converted to kohya's names) is then swapped in at run time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdedit.runtime.engines import OrtRunner, read_manifest
from svdedit.runtime.engines.lora import read_adapter, swapped_graphs
from svdedit.runtime.errors import SvdeditError
from tests.conftest import requires_torch

pytestmark = requires_torch
TOL = 1e-4  # the manifest's parity tolerances of these networks are ~1e-3 of their outputs' scale; we hold tighter


@pytest.fixture(scope="module")
def adapters(lora_adapters):
    """tests/conftest.py's lora_adapters: {'A', 'B', 'B-kohya'}."""
    return lora_adapters


@pytest.fixture(scope="module")
def feeds():
    rng = np.random.default_rng(0)
    return {"unet": {"sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
                     "timestep": np.array([500.0, 21.0], np.float32),
                     "encoder_hidden_states": rng.standard_normal((2, 77, 32)).astype(np.float32)},
            "text_encoder": {"input_ids": rng.integers(0, 1000, (2, 77)).astype(np.int64)}}


def diffusers_outputs(pipe_dir, loras: list[tuple], feeds: dict) -> dict[str, np.ndarray]:
    """The torch UNet's and text encoder's outputs with `loras` [(file, scale)] loaded by diffusers' load_lora_weights."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir)
    names = []
    for i, (file, _) in enumerate(loras):
        pipe.load_lora_weights(str(file), adapter_name=f"a{i}")
        names.append(f"a{i}")
    if names:
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    u, t = feeds["unet"], feeds["text_encoder"]
    with torch.no_grad():
        unet = pipe.unet(*(torch.from_numpy(u[k]) for k in ("sample", "timestep", "encoder_hidden_states"))).sample
        text = pipe.text_encoder(torch.from_numpy(t["input_ids"]))[0]
    return {"unet": unet.numpy(), "text_encoder": text.numpy()}


def engine_outputs(engine_dir, feeds: dict, loras: list = ()) -> dict[str, np.ndarray]:
    manifest = read_manifest(engine_dir)
    graphs = swapped_graphs(engine_dir, manifest, list(loras))
    out = {}
    for network, output in (("unet", "model_output"), ("text_encoder", "last_hidden_state")):
        with OrtRunner(engine_dir, network, manifest, "cpu", graph=graphs.get(network)) as runner:
            out[network] = runner(**feeds[network])[output]
    return out


def test_the_lora_visibly_changes_diffusers_output(tiny_pipelines, adapters, feeds):
    """Guard of the parity tests below: an adapter that changed nothing would pass them."""
    base = diffusers_outputs(tiny_pipelines["sd1"], [], feeds)
    with_a = diffusers_outputs(tiny_pipelines["sd1"], [(adapters["A"], 1.0)], feeds)
    for network in ("unet", "text_encoder"):
        assert np.abs(with_a[network] - base[network]).max() > 0.1, network


def test_fused_at_export_matches_diffusers_and_is_recorded(tiny_pipelines, adapters, lora_engine, feeds):
    ref = diffusers_outputs(tiny_pipelines["sd1"], [(adapters["A"], 1.0)], feeds)
    got = engine_outputs(lora_engine, feeds)
    for network in ("unet", "text_encoder"):
        assert np.abs(got[network] - ref[network]).max() < TOL, network
    manifest = read_manifest(lora_engine)
    (record,) = manifest.raw["lora"]["fused"]
    assert record["file"] == "A.safetensors" and record["scale"] == 1.0 and record["components"] == ["text_encoder", "unet"]
    assert record["layers"] == len(read_adapter(adapters["A"]).layers)


def test_swapped_at_run_time_matches_diffusers_in_both_formats(tiny_pipelines, adapters, lora_engine, feeds):
    """B swapped in at scale 0.5 on top of the fused A, torch-free: what diffusers gives with A at 1 and B at 0.5.
    kohya's names give the same merge."""
    ref = diffusers_outputs(tiny_pipelines["sd1"], [(adapters["A"], 1.0), (adapters["B"], 0.5)], feeds)
    for name in ("B", "B-kohya"):
        got = engine_outputs(lora_engine, feeds, [read_adapter(adapters[name], 0.5)])
        assert np.abs(got["unet"] - ref["unet"]).max() < TOL, name
        assert np.abs(got["text_encoder"] - ref["text_encoder"]).max() < TOL, name  # B has no text layers


@pytest.mark.parametrize("form", ["transformers-4", "kohya"])
def test_text_encoder_layers_named_as_most_lora_files_name_them_swap_in_as_diffusers_loads_them(
        form, tiny_pipelines, adapters, lora_engine_split, feeds, tmp_path):
    """LoRA files made under transformers 4 name CLIP's `text_model.` level, which transformers 5 dropped
    (`text_encoder.text_model.encoder.layers.0...`), and kohya's sd-scripts writes `lora_te_text_model_encoder_...`:
    A in each form, swapped in (UNet and text encoder), against diffusers, which loads both."""
    from svdedit.runtime.pipeline import Pipeline
    from tests.fixtures.lora import save_kohya_lora, with_text_model_level

    path = (with_text_model_level if form == "transformers-4" else save_kohya_lora)(adapters["A"], tmp_path / "A.safetensors")
    adapter = read_adapter(path, 1.0)
    assert all("text_model" in layer.module for layer in adapter.layers if layer.component == "text_encoder")
    ref = diffusers_outputs(tiny_pipelines["sd1"], [(path, 1.0)], feeds)
    assert np.abs(ref["text_encoder"] - diffusers_outputs(tiny_pipelines["sd1"], [], feeds)["text_encoder"]).max() > 0.1
    manifest = read_manifest(lora_engine_split)
    graphs = swapped_graphs(lora_engine_split, manifest, [adapter])
    with OrtRunner(lora_engine_split, "text_encoder", manifest, "cpu", graph=graphs["text_encoder"]) as text:
        got = text(**feeds["text_encoder"])["last_hidden_state"]
    assert np.abs(got - ref["text_encoder"]).max() < TOL
    u = feeds["unet"]
    with Pipeline(lora_engine_split, lora=[adapter]) as pipe:
        unet = pipe.unet_fn(1)(u["sample"], u["timestep"], u["encoder_hidden_states"])
    assert np.abs(unet - ref["unet"]).max() < TOL


def test_the_export_finds_a_text_encoder_module_by_any_of_its_names(tiny_pipelines):
    """What the fused export matches a LoRA layer's module with (export/svdedit/export/lora.find_module)."""
    from transformers import CLIPTextModel

    from svdedit.export.lora import find_module

    model = CLIPTextModel.from_pretrained(tiny_pipelines["sd1"] / "text_encoder")
    want = dict(model.named_modules())["encoder.layers.1.self_attn.q_proj"]
    for name, kohya in (("encoder.layers.1.self_attn.q_proj", False), ("text_model.encoder.layers.1.self_attn.q_proj", False),
                        ("text_model_encoder_layers_1_self_attn_q_proj", True), ("encoder_layers_1_self_attn_q_proj", True)):
        assert find_module(model, name, kohya) is want, name
    assert find_module(model, "text_model.encoder.layers.1.self_attn", False) is None  # not a Linear
    assert find_module(model, "text_model_encoder_layers_1_self_attn_q_proj", False) is None  # underscores: kohya only
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_pipelines["sd1"] / "unet")
    for name, want in (("input_blocks_1_1_proj_in", "down_blocks.0.attentions.0.proj_in"),  # the LDM/SGM naming
                       ("output_blocks_2_0_in_layers_2", "up_blocks.1.resnets.0.conv1"),
                       ("down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in")):
        assert find_module(unet, name, True) is dict(unet.named_modules())[want], name


def test_scale_zero_gives_the_engine_outputs_exactly_and_the_files_are_untouched(adapters, lora_engine, feeds):
    before = {p.name: p.read_bytes() for p in lora_engine.iterdir()}
    plain = engine_outputs(lora_engine, feeds)
    unloaded = engine_outputs(lora_engine, feeds, [read_adapter(adapters["B"], 0.0)])
    for network in plain:
        np.testing.assert_array_equal(unloaded[network], plain[network])
    engine_outputs(lora_engine, feeds, [read_adapter(adapters["B"], 1.0)])
    assert {p.name: p.read_bytes() for p in lora_engine.iterdir()} == before


def test_a_swap_is_merged_once_into_the_cache_beside_links_to_the_graph(adapters, lora_engine):
    manifest = read_manifest(lora_engine)
    b = read_adapter(adapters["B"], 0.25)
    (graph,) = swapped_graphs(lora_engine, manifest, [b]).values()  # B has UNet layers only
    assert graph.name == "unet.onnx" and graph.is_symlink() and graph.resolve() == (lora_engine / "unet.onnx").resolve()
    merged = graph.with_name("unet.lora.safetensors")
    assert not merged.is_symlink() and merged.stat().st_size == (lora_engine / "unet.lora.safetensors").stat().st_size
    stamp = merged.stat().st_mtime_ns
    assert swapped_graphs(lora_engine, manifest, [b]) == {"unet": graph} and merged.stat().st_mtime_ns == stamp
    assert swapped_graphs(lora_engine, manifest, [read_adapter(adapters["B"], 0.5)])["unet"].parent != graph.parent


def test_the_merged_sets_in_the_cache_keep_to_their_budget_least_recently_used_first(adapters, lora_engine, tmp_path,
                                                                                     monkeypatch):
    import os
    import time

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    manifest = read_manifest(lora_engine)
    size = (lora_engine / "unet.lora.safetensors").stat().st_size  # one merged set of B (a UNet LoRA)
    monkeypatch.setenv("SVDEDIT_LORA_CACHE_GB", str(2.5 * size / 2**30))

    def merge(scale: float):
        return swapped_graphs(lora_engine, manifest, [read_adapter(adapters["B"], scale)])["unet"].parent

    folders = {scale: merge(scale) for scale in (0.1, 0.2)}
    for hours, scale in ((3, 0.1), (2, 0.2)):
        then = time.time() - hours * 3600
        os.utime(folders[scale] / "adapters.json", (then, then))
    assert merge(0.1) == folders[0.1]  # used again (from the cache): now 0.2 is the least recently used
    folders[0.3] = merge(0.3)  # three sets are over 2.5 sets' worth: the least recently used one goes
    assert [s for s in sorted(folders) if folders[s].exists()] == [0.1, 0.3]
    monkeypatch.setenv("SVDEDIT_LORA_CACHE_GB", "0")  # a set used in the last minutes stays, over budget or not
    folders[0.4] = merge(0.4)
    assert [s for s in sorted(folders) if folders[s].exists()] == [0.1, 0.3, 0.4]
    assert merge(0.2) == folders[0.2] and (folders[0.2] / "unet.lora.safetensors").is_file()  # merged again
    assert not list((tmp_path / "xdg").glob("svdedit/engines/*/lora.evicted-*"))
    monkeypatch.setenv("SVDEDIT_LORA_CACHE_GB", "lots")
    with pytest.raises(SvdeditError, match=r"SVDEDIT_LORA_CACHE_GB is 'lots': give the gigabytes .* e\.g\. 32"):
        merge(0.6)


def test_every_linear_and_conv_weight_is_swappable(lora_engine, tiny_pipelines):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_pipelines["sd1"], subfolder="unet")
    import torch

    modules = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    manifest = json.loads((lora_engine / "manifest.json").read_text())
    assert set(manifest["networks"]["unet"]["lora_targets"]) == modules
    assert manifest["networks"]["unet"]["lora_weights"] == "unet.lora.safetensors"
    assert "lora_targets" not in manifest["networks"]["vae_decoder"]


def without_lora(manifest):
    """The manifest of the same export without its fused adapter and not --lora-ready (in memory)."""
    raw = manifest.to_dict()
    raw.pop("lora")
    for net in raw["networks"].values():
        for key in ("lora_weights", "lora_weights_sha256", "lora_targets"):
            net.pop(key, None)
    return type(manifest).from_dict(raw)


def test_the_identity_includes_the_adapters(adapters, lora_engine):
    """A fused adapter, a swapped one and its scale each give another identity; scale 0 is no adapter."""
    fused = read_manifest(lora_engine)
    assert fused.identity() != without_lora(fused).identity()
    b = read_adapter(adapters["B"], 0.5)
    swapped = fused.with_adapters([b.record()])
    assert swapped.identity() not in (fused.identity(), fused.with_adapters([read_adapter(adapters["B"]).record()]).identity())
    assert fused.with_adapters([read_adapter(adapters["B"], 0.0).record()]).identity() == fused.identity()
    assert fused.with_adapters([b.record()]).identity() == swapped.identity()
    assert fused.graphs_key() == swapped.graphs_key()  # the same files


def test_an_attribute_learned_with_another_adapter_is_refused_naming_it(adapters, lora_engine, tmp_path):
    from svdedit.runtime.editing import avi
    from svdedit.runtime.editing.avi import Attribute
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.errors import AttributeFileError

    fused = read_manifest(lora_engine)
    b = read_adapter(adapters["B"], 0.5)
    swapped = fused.with_adapters([b.record()])
    pair = avi.decompose(*[np.random.default_rng(s).standard_normal((1, 4, 8, 8)).astype(np.float32) for s in (5, 6)], k=4)
    params, losses = avi.train(pair, Knobs(iters=5))
    attr = Attribute(params, "a red circle", "a blue circle", Knobs(iters=5), swapped.identity(), (4, 8, 8), 0, losses,
                     adapters=tuple(swapped.adapters))
    path = attr.save(tmp_path / "a.safetensors")
    assert Attribute.load(path, engine=swapped.identities()).adapters[1]["file"] == "B.safetensors"
    with pytest.raises(AttributeFileError, match=r"A\.safetensors .*scale 1\.0\), B\.safetensors .*scale 0\.5\)"):
        Attribute.load(path, engine=fused.identities())


def test_run_time_lora_refusals(adapters, lora_engine):
    b = read_adapter(adapters["B"])
    manifest = read_manifest(lora_engine)
    with pytest.raises(SvdeditError, match="not exported for run-time LoRA.*--lora-ready"):
        swapped_graphs(lora_engine, without_lora(manifest), [b])
    int8 = type(manifest).from_dict({**manifest.to_dict(), "quantization": {"mode": "qdq"}})
    with pytest.raises(SvdeditError, match="int8 engine dir"):
        swapped_graphs(lora_engine, int8, [b])


def test_fused_then_quantized_keeps_the_adapter_and_refuses_a_swap_naming_the_way(adapters, lora_engine, tmp_path):
    """LoRA on the fast default (int8 + step cache): fuse at export, then `svdedit quantize`. The int8 engine dir
    keeps the fused adapter in its identity and generates near its fp32 engine; its UNet's run-time LoRA fields are
    gone, and a swap is refused naming that way."""
    from svdedit.runtime.pipeline import Pipeline
    from tests.cli import run_cli

    out = tmp_path / "int8"
    proc = run_cli("quantize", lora_engine, "-o", out, "--mode", "static", "--prompts", "2", "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    m, fused = read_manifest(out), read_manifest(lora_engine)
    assert m.identity() == fused.identity() and m.raw["lora"] == fused.raw["lora"]  # A, fused, in both
    assert m.networks["unet"].lora_targets is None and not (out / "unet.lora.safetensors").exists()
    with pytest.raises(SvdeditError, match="int8 engine dir .*fuse the adapter at export .*then quantize"):
        Pipeline(out, lora=[read_adapter(adapters["B"])])
    images = []
    for engine in (lora_engine, out):
        with Pipeline(engine) as pipe:
            images.append(pipe.decode(pipe.generate("a red cat", seed=1, steps=8, guidance=3.0)))
    assert 0 < np.abs(images[1] - images[0]).mean() < 0.25  # close to the fp32 engine with A, not equal to it


def test_swapped_on_openvino_matches_onnxruntime_and_is_compiled_under_the_adapters_identity(adapters, lora_engine,
                                                                                              feeds):
    openvino = pytest.importorskip("openvino")
    from svdedit.runtime.engines import open_engines
    from svdedit.runtime.engines.openvino import cache_folder

    manifest = read_manifest(lora_engine)
    b = read_adapter(adapters["B"], 0.5)
    adapted = manifest.with_adapters([b.record()])
    graphs = swapped_graphs(lora_engine, manifest, [b])
    with open_engines(lora_engine, adapted, "openvino", "fp32", graphs)["unet"] as unet:
        got = unet(**feeds["unet"])["model_output"]
    with open_engines(lora_engine, manifest, "openvino", "fp32")["unet"] as unet:
        plain = unet(**feeds["unet"])["model_output"]
    want = engine_outputs(lora_engine, feeds, [b])["unet"]  # onnxruntime with B swapped in (held to diffusers above)
    assert np.abs(got - want).max() < TOL and np.abs(got - plain).max() > 0.1
    folders = [cache_folder(m, "unet", "fp32", openvino.__version__) for m in (adapted, manifest)]
    assert folders[0] != folders[1] and all(f.is_dir() for f in folders)  # each weight set its own compiled model


def test_a_swap_on_a_split_unet_matches_diffusers(tiny_pipelines, adapters, lora_engine_split, feeds):
    """Step caching's UNet in three graphs (unet_in, unet_deep, unet_out): B swapped in at 0.5, composed, against
    diffusers' whole UNet with B at 0.5; the text encoder, which B leaves alone, is not merged."""
    from svdedit.runtime.pipeline import Pipeline

    want = diffusers_outputs(tiny_pipelines["sd1"], [(adapters["B"], 0.5)], feeds)["unet"]
    base = diffusers_outputs(tiny_pipelines["sd1"], [], feeds)["unet"]
    u = feeds["unet"]
    with Pipeline(lora_engine_split, lora=[read_adapter(adapters["B-kohya"], 0.5)]) as pipe:
        got = pipe.unet_fn(1)(u["sample"], u["timestep"], u["encoder_hidden_states"])
        swapped = set(swapped_graphs(lora_engine_split, read_manifest(lora_engine_split), pipe.adapters))
    assert np.abs(got - want).max() < TOL and np.abs(want - base).max() > 0.1
    assert swapped and swapped <= {"unet_in", "unet_deep", "unet_out"}


def test_tensorrt_plans_built_refittable_take_a_swap_by_a_refit_in_memory(adapters, lora_engine_split, tmp_path,
                                                                         monkeypatch):
    """TensorRT (the strict stand-in, tests/fixtures/strict_tensorrt.py, held to the real bindings by
    test_tensorrt_conformance), on the split UNet: the weights the swap changed, and only those, are refitted into
    each plan when its runner activates, with the values onnxruntime runs (held to diffusers above); the plan files
    are not written; plans built without --refittable are refused before anything loads."""
    import onnx
    from onnx import numpy_helper

    from svdedit.export.build import BuildOptions, build_plans
    from svdedit.runtime.engines import open_engines
    from svdedit.runtime.errors import TensorrtError
    from tests.fixtures.strict_tensorrt import install

    engine = lora_engine_split
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    install(monkeypatch)
    manifest = read_manifest(engine)
    b = read_adapter(adapters["B"], 0.5)
    adapted = manifest.with_adapters([b.record()])
    graphs = swapped_graphs(engine, manifest, [b])
    build_plans(engine, BuildOptions())
    with pytest.raises(TensorrtError, match=r"refitted into the TensorRT plans, and the plans in .* were not built "
                                            r"refittable\. Build them again with `svdedit build ENGINE_DIR --refittable`"):
        open_engines(engine, adapted, "tensorrt", None, graphs)
    plans = build_plans(engine, BuildOptions(refittable=True))
    plan_bytes = {n: plans.path(n).read_bytes() for n in plans.build.networks}

    def weights(graph) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx.load(graph).graph.initializer}

    touched = {name: {init for layer in b.layers for init, _, _ in (net.lora_targets or {}).get(layer.module, ())}
               for name, net in manifest.networks.items()}  # B's modules -> the initializers of each network
    assert sum(map(bool, touched.values())) >= 2  # B reaches more than one of the three graphs
    for name, runner in open_engines(engine, adapted, "tensorrt", None, graphs).items():
        with runner:
            refitted = dict(runner.engine.doc["refitted"])
        assert set(refitted) == touched[name], name
        if touched[name]:
            swapped, base = weights(graphs[name]), weights(engine / manifest.networks[name].file)
            assert all(np.abs(swapped[n] - base[n]).max() > 1e-3 for n in touched[name])
            assert all(refitted[n] == pytest.approx(swapped[n].sum(), rel=1e-6) for n in touched[name]), name
    assert {n: plans.path(n).read_bytes() for n in plan_bytes} == plan_bytes  # in memory only

    # a weight TensorRT folded with these at build: the parser's refitter reads every weight from the swapped graph
    net = sorted(graphs)[0]
    swapped = {n: w.sum() for n, w in weights(graphs[net]).items()}
    bias = next(n for n in sorted(plans_doc_weights(plans, net)) if n not in touched[net])
    install(monkeypatch, missing_weights={bias})
    with open_engines(engine, adapted, "tensorrt", None, graphs)[net] as runner:
        refitted = dict(runner.engine.doc["refitted"])
    assert bias in refitted and refitted == pytest.approx({n: swapped[n] for n in refitted}, rel=1e-6)
    assert len(refitted) == len(plans_doc_weights(plans, net))
    install(monkeypatch, missing_weights={bias}, fail_parser_refit=True)
    with pytest.raises(TensorrtError, match=rf"could not refit {net}'s plan from .*{net}\.onnx \(ModelRefitter: "
                                            r"refit failed.*\); the old plan stays"):
        open_engines(engine, adapted, "tensorrt", None, graphs)[net].activate()


def plans_doc_weights(plans, network: str) -> set[str]:
    """The weights the stand-in's plan of `network` holds (the graph's initializers, as TensorRT names them)."""
    return set(json.loads(plans.path(network).read_bytes()[len(b"STRICT-TRT-PLAN\n"):])["weights"])


def test_a_lora_of_another_model_is_refused_at_export_and_at_run_time(tiny_pipelines, lora_engine, tmp_path):
    """An SDXL-like LoRA (modules the SD 1 UNet lacks), and one of this model's modules at the wrong width."""
    from safetensors.numpy import save_file

    from svdedit.export.exporter import ExportOptions, export_model

    other = tmp_path / "xl.safetensors"
    save_file({"unet.down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_q.lora_A.weight": np.ones((4, 1280), np.float32),
               "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_q.lora_B.weight": np.ones((1280, 4), np.float32)},
              str(other))
    wide = tmp_path / "wide.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": np.ones((4, 320, 1, 1), np.float32),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": np.ones((320, 4, 1, 1), np.float32)}, str(wide))
    manifest = read_manifest(lora_engine)
    with pytest.raises(SvdeditError, match=r"1 LoRA layer\(s\) name modules this sd1 engine does not have \(unet\.down_blocks\.2"):
        swapped_graphs(lora_engine, manifest, [read_adapter(other)])
    with pytest.raises(SvdeditError, match=r"do not fit this sd1 engine's weights \(unet\.down_blocks\.0\.attentions\.0\.proj_in"):
        swapped_graphs(lora_engine, manifest, [read_adapter(wide)])
    out = tmp_path / "engine"
    for file, message in ((other, "name modules this model does not have"), (wide, "do not fit this model's weights")):
        with pytest.raises(SvdeditError, match=message):
            export_model(tiny_pipelines["sd1"], out, ExportOptions(lora=((str(file), 1.0),)), log=lambda m: None)
        assert not out.exists()


def test_the_command_line_swaps_checks_and_refuses(adapters, lora_engine, tmp_path):
    """generate with --lora (another image than without), check on a --lora-ready engine dir, and the refusals."""
    from PIL import Image

    from tests.cli import assert_clear_error, run_cli

    common = ["--engine", lora_engine, "--prompt", "a large red circle on the left", "--seed", "3", "--steps", "4"]
    for name, extra in (("plain", []), ("lora", ["--lora", adapters["B-kohya"], "--lora-scale", "0.5"])):
        proc = run_cli("generate", *common, *extra, "-o", tmp_path / f"{name}.png")
        assert proc.returncode == 0, proc.stderr
    plain, lora = (np.asarray(Image.open(tmp_path / f"{n}.png"), np.int16) for n in ("plain", "lora"))
    assert np.abs(plain - lora).max() > 10
    assert run_cli("check", lora_engine).returncode == 0
    assert_clear_error(run_cli("generate", *common, "--lora", adapters["B"], "--lora-scale", "1", "--lora-scale", "2",
                               "-o", tmp_path / "x.png"), "generate", "2 --lora-scale for 1 --lora")
    assert_clear_error(run_cli("generate", *common[2:], "--engine", "svdedit:shapes", "--lora", adapters["B"],
                               "-o", tmp_path / "x.png"), "generate", "--lora-ready")
    assert_clear_error(run_cli("generate", *common, "--lora", tmp_path / "absent.safetensors", "-o", tmp_path / "x.png"),
                       "generate", "does not exist")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("field, value, message", [
    ("lora_targets", {"conv_in": [["m.conv_in.weight", "yes", [32, 4, 3, 3]]]}, r"lora_targets\['conv_in'\] is not a list"),
    ("lora_targets", None, "has one of lora_weights and lora_targets without the other"),
    ("adapter", {"sha256": "x", "scale": 1.0}, r"lora.fused\[0\] is not an adapter record"),
])
def test_a_damaged_lora_record_in_a_manifest_is_refused_naming_it(lora_engine, tmp_path, field, value, message):
    import shutil

    from svdedit.runtime.errors import EngineDirError

    copy = tmp_path / "engine"
    shutil.copytree(lora_engine, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    if field == "adapter":
        raw["lora"]["fused"][0] = value
    elif value is None:
        raw["networks"]["unet"].pop(field)
    else:
        raw["networks"]["unet"][field] = value
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineDirError, match=message):
        read_manifest(copy)


def test_two_processes_merging_the_same_adapters_at_once_both_get_it(adapters, lora_engine):
    """The second writer finds the first's merge in place (atomic_dir refuses to replace what appeared meanwhile)."""
    from unittest import mock

    from svdedit.runtime.engines import lora as lora_module

    manifest = read_manifest(lora_engine)
    b = read_adapter(adapters["B"], 0.75)
    real = lora_module.write_merged

    def racing(src, dst, plan):  # the other process finishes first, while this one writes
        real(src, dst, plan)
        with mock.patch.object(lora_module, "write_merged", real):
            swapped_graphs(lora_engine, manifest, [b])

    with mock.patch.object(lora_module, "write_merged", racing):
        graphs = swapped_graphs(lora_engine, manifest, [b])
    assert graphs["unet"].is_symlink() and graphs["unet"].with_name("unet.lora.safetensors").is_file()


def test_a_pipeline_with_an_adapter_shares_the_networks_it_leaves_unchanged(adapters, lora_engine):
    """Pipeline(share=base), as the service opens each adapter: B (UNet only) loads its own UNet and runs the text
    encoder and the VAE on the base pipeline's runners, with the same results as a pipeline of its own."""
    from svdedit.runtime.pipeline import Pipeline

    b = read_adapter(adapters["B"], 0.5)
    with Pipeline(lora_engine, "cpu") as base, Pipeline(lora_engine, "cpu", lora=[b], share=base) as shared:
        assert shared.borrowed == {"text_encoder", "vae_encoder", "vae_decoder"}
        assert all(shared.engines[n] is base.engines[n] for n in shared.borrowed)
        assert shared.engines["unet"] is not base.engines["unet"]
        got = shared.decode(shared.generate("a red cat", seed=2, steps=3, guidance=3.0))
        with pytest.raises(SvdeditError, match="without adapters only"):
            Pipeline(lora_engine, "cpu", lora=[b], share=shared)
    with Pipeline(lora_engine, "cpu", lora=[b]) as alone:
        assert not alone.borrowed
        np.testing.assert_array_equal(got, alone.decode(alone.generate("a red cat", seed=2, steps=3, guidance=3.0)))
