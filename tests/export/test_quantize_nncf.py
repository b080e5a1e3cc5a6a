"""`svdedit quantize --mode nncf` (export/svdedit/export/quantize.py): NNCF's hybrid int8 UNet, written as an OpenVINO
model that only the provider openvino runs, on the embedded model (torch-free: svdedit:shapes without the export
extra)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.cli import assert_clear_error, run_cli

pytest.importorskip("nncf", reason="needs the nncf extra (svdedit[nncf])")
#: make test-slow: ~40 s of CI's 20 minutes; OpenVINO's runner on the same engine dirs runs in make test
#: (tests/runtime/engines/test_openvino.py)
pytestmark = pytest.mark.slow
PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def nncf_engine(shapes_engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("nncf") / "engine"
    proc = run_cli("quantize", shapes_engine, "-o", out, "--mode", "nncf", "--prompts", "2", "--steps", "4")
    assert proc.returncode == 0, proc.stderr
    said = json.loads(proc.stdout.strip().splitlines()[-1])   # stdout is the JSON line alone (NNCF's bars: stderr)
    assert said["mode"] == "nncf" and len(proc.stdout.strip().splitlines()) == 1
    return out


def test_the_unet_becomes_an_openvino_model_with_int8_weights_and_the_identity_stays(nncf_engine, shapes_engine):
    from svdedit.runtime.engines.manifest import read_manifest

    m, fp32 = read_manifest(nncf_engine, verify="all"), read_manifest(shapes_engine)
    unet = m.networks["unet"]
    assert (unet.file, unet.external_data, unet.precision) == ("unet.xml", "unet.bin", "int8")
    assert m.openvino_models == ["unet"] and not (nncf_engine / "unet.onnx").exists()
    assert m.identity() == fp32.identity() and m.graphs_key() != fp32.graphs_key()
    assert m.networks["text_encoder"] == fp32.networks["text_encoder"]
    # int8 weights: the model is under a third of the fp32 graph; activations quantized: FakeQuantize in the graph
    assert (nncf_engine / "unet.bin").stat().st_size < (shapes_engine / "unet.onnx").stat().st_size / 3
    xml = (nncf_engine / "unet.xml").read_text()
    assert 'type="FakeQuantize"' in xml and 'element_type="u8"' in xml
    q = m.raw["quantization"]
    assert q["mode"] == "nncf" and q["tool"].startswith("nncf ") and "openvino only" in q["runs_on"]
    p = q["networks"]["unet"]["parity_int8"]
    # held-out rms against fp32: 0.0108 when written (bench_nncf: 0.0106 on the full calibration); the static QDQ
    # mode errs 0.0325 on the same model
    assert p["run_on"] == "OpenVINO CPU, fp32" and 1e-4 < p["rms"] < 0.02 and p["inputs"] == 2


def test_auto_runs_it_on_openvino_close_to_fp32(nncf_engine, shapes_engine):
    from svdedit.runtime.pipeline import Pipeline

    out = {}
    for engine in (shapes_engine, nncf_engine):
        with Pipeline(engine, "auto", precision="fp32" if engine == nncf_engine else None) as pipe:
            out[engine] = pipe.decode(pipe.generate([PROMPT], steps=8, guidance=3.0, init_noise=pipe.noise(seed=1)))
            providers = set(pipe.providers.values())
    assert providers == {"OpenVINO-CPU-fp32"}                       # every network, not only the UNet
    got, ref = out[nncf_engine], out[shapes_engine]
    assert np.all(np.isfinite(got)) and got.shape == ref.shape
    assert 0 < np.abs(got - ref).mean() < 0.05, np.abs(got - ref).mean()   # int8, not fp32 renamed; close to it


def test_check_runs_it_and_other_providers_are_refused_with_the_fix(nncf_engine):
    from svdedit.export.build import BuildOptions
    from svdedit.runtime.engines import OrtRunner, read_manifest
    from svdedit.runtime.errors import EngineDirError, SvdeditError

    proc = run_cli("check", nncf_engine)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {line["network"]: line["provider"].split("-")[0] for line in lines} == dict.fromkeys(
        ("text_encoder", "unet", "vae_encoder", "vae_decoder"), "OpenVINO")
    assert_clear_error(run_cli("check", nncf_engine, "--provider", "cpu"), "check", "unet is an OpenVINO model",
                       "the provider openvino")
    assert_clear_error(run_cli("generate", "--engine", nncf_engine, "--prompt", PROMPT, "--provider", "cpu", "-o",
                               nncf_engine.parent / "x.png"), "generate", "only OpenVINO runs")
    manifest = read_manifest(nncf_engine)
    with pytest.raises(EngineDirError, match="onnxruntime cannot load"):
        OrtRunner(nncf_engine, "unet", manifest, "cpu").activate()
    with pytest.raises(SvdeditError, match="TensorRT cannot parse"):
        BuildOptions().check(manifest)
    assert_clear_error(run_cli("quantize", nncf_engine, "-o", nncf_engine.parent / "again", "--mode", "nncf"),
                       "quantize", "quantize an fp32 engine dir")


def test_without_nncf_the_error_says_how_to_install_it_and_nothing_is_written(shapes_engine, tmp_path, monkeypatch):
    from svdedit.export.quantize import QuantizeOptions, quantize_engine
    from svdedit.runtime.errors import SvdeditError

    monkeypatch.setitem(sys.modules, "nncf", None)                 # `import nncf` raises ImportError
    with pytest.raises(SvdeditError, match=r"pip install 'svdedit\[nncf\]'"):
        quantize_engine(shapes_engine, tmp_path / "out", QuantizeOptions(mode="nncf", prompts=1, steps=2))
    assert not (tmp_path / "out").exists()


def test_an_nncf_that_fails_on_the_graph_is_a_clear_error_and_nothing_is_written(shapes_engine, tmp_path, monkeypatch):
    """NNCF raising inside its quantizer (a graph its version cannot read) gives the one-line error that names the
    versions, the graph and both ways out, not NNCF's traceback; the engine dir is not written."""
    import svdedit.export.quantize as quantize

    def failing(*args, **kwargs):
        raise RuntimeError("Could not find the bias value of the node")

    monkeypatch.setattr(quantize, "nncf_hybrid", failing)
    with pytest.raises(quantize.SvdeditError, match=r"^nncf \d.* \(OpenVINO \d.*\) could not quantize unet\.onnx "
                                                    r"\(RuntimeError: Could not find.*pip install -U nncf openvino.*"
                                                    r"--mode static") as caught:
        quantize.quantize_engine(shapes_engine, tmp_path / "out",
                                 quantize.QuantizeOptions(mode="nncf", prompts=1, steps=2))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
