"""The OpenVINO runner (runtime/svdedit/runtime/engines/openvino.py) on the tiny fixtures: fp32 within the parity the
manifest records for onnxruntime, bf16 within stated bounds, the compiled-model cache, and every refusal."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from svdedit.runtime.engines import open_engines, read_manifest
from svdedit.runtime.engines import openvino as ov_runner
from svdedit.runtime.errors import EngineDirError, SvdeditError
from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytest.importorskip("openvino", reason="needs the openvino extra (svdedit[openvino])")
pytestmark = requires_torch  # the engine fixtures are exported with torch
requires_bf16 = pytest.mark.skipif(not ov_runner.has_bf16(), reason="this CPU has no bf16 units (avx512_bf16 or "
                                                                    "amx_bf16): OpenVINO cannot compute bf16 here")
PROMPT = "a large red circle on the left"


def _feeds(entry, manifest, rng):
    from svdedit.runtime.engines.contract import resolve_shape

    sizes = manifest.axis_sizes(batch=2)
    return {t.name: (rng.integers(0, 1000, resolve_shape(t.shape, sizes)).astype(np.int64) if t.dtype == "int64"
                     else rng.standard_normal(resolve_shape(t.shape, sizes)).astype(t.dtype)) for t in entry.inputs}


def _every_output(engine, provider, precision=None, seed=0):
    """{network: {output: array}} of one call of every network on the same random inputs."""
    manifest = read_manifest(engine)
    out = {}
    for name, runner in open_engines(engine, manifest, provider, precision).items():
        with runner:
            out[name] = runner(**_feeds(runner.entry, manifest, np.random.default_rng(seed)))
    return out


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v"])
def test_fp32_is_within_the_parity_the_manifest_records(engine_dirs, flavour):
    manifest = read_manifest(engine_dirs[flavour])
    ours, ref = _every_output(engine_dirs[flavour], "openvino", "fp32"), _every_output(engine_dirs[flavour], "cpu")
    for name, outputs in ref.items():
        tolerance = manifest.networks[name].parity["tolerance"]
        for key, want in outputs.items():
            assert np.abs(want).max() > 0.1, (name, key)  # a real signal
            assert np.abs(ours[name][key] - want).max() <= tolerance, (name, key)


def test_sdxl_fp32_is_within_the_parity_the_manifest_records(xl_engine):
    manifest = read_manifest(xl_engine)
    ours, ref = _every_output(xl_engine, "openvino", "fp32"), _every_output(xl_engine, "cpu")
    assert set(ref) >= {"text_encoder", "text_encoder_2", "unet"}
    for name, outputs in ref.items():
        for key, want in outputs.items():
            assert np.abs(ours[name][key] - want).max() <= manifest.networks[name].parity["tolerance"], (name, key)


def test_generation_on_openvino_fp32_matches_onnxruntime(engine_dirs):
    from svdedit.runtime.pipeline import Pipeline

    latents = {}
    for provider, precision in (("cpu", None), ("openvino", "fp32")):
        with Pipeline(engine_dirs["sd1"], provider, precision=precision) as pipe:
            latents[provider] = pipe.generate([PROMPT], steps=10, guidance=7.5, init_noise=pipe.noise(seed=3))
            assert set(pipe.providers.values()) == ({"OpenVINO-CPU-fp32"} if provider == "openvino"
                                                     else {"CPUExecutionProvider"})
    np.testing.assert_allclose(latents["openvino"], latents["cpu"], atol=1e-3)  # test_pipeline_parity's bound


@requires_bf16
def test_bf16_stays_within_its_bounds(shapes_engine):
    """bf16 keeps 8 bits of mantissa: on the embedded model one UNet call stays within 2% (relative L2) of fp32 and
    a 10-step generation within 0.05 of the latent's scale; both really differ (bf16 is not fp32 renamed)."""
    from svdedit.runtime.pipeline import Pipeline

    unet = {p: _every_output(shapes_engine, "openvino", p)["unet"]["model_output"] for p in ("fp32", "bf16")}
    rel = np.linalg.norm(unet["bf16"] - unet["fp32"]) / np.linalg.norm(unet["fp32"])
    assert 1e-5 < rel < 0.02, rel
    latents = {}
    for precision in ("fp32", "bf16"):
        with Pipeline(shapes_engine, "openvino", precision=precision) as pipe:
            latents[precision] = pipe.generate([PROMPT], steps=10, guidance=3.0, init_noise=pipe.noise(seed=1))
    drift = np.abs(latents["bf16"] - latents["fp32"]).max() / np.abs(latents["fp32"]).max()
    assert 0 < drift < 0.05, drift


def test_the_precision_is_part_of_the_numerics_key(engine_dirs, monkeypatch):
    from svdedit.runtime.pipeline import Pipeline

    monkeypatch.setattr(ov_runner, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # keys only: nothing is run
    keys = set()
    for provider, precision in (("cpu", None), ("openvino", "fp32"), ("openvino", "bf16")):
        pipe = Pipeline(engine_dirs["sd1"], provider, precision=precision)
        assert pipe.precision == precision or (provider == "cpu" and pipe.precision == "fp32")
        with pipe:
            keys.add(pipe.numerics_key())
    assert len(keys) == 3


def test_the_default_precision_follows_the_cpu(engine_dirs, monkeypatch):
    from svdedit.runtime.pipeline import Pipeline

    for flags, want in ((frozenset({"avx2", "avx512_bf16"}), "bf16"), (frozenset({"amx_bf16"}), "bf16"),
                        (frozenset({"avx2", "avx512_vnni"}), "fp32")):
        monkeypatch.setattr(ov_runner, "cpu_flags", lambda flags=flags: flags)
        assert Pipeline(engine_dirs["sd1"], "openvino").precision == want
    assert Pipeline(engine_dirs["sd1"], "auto").precision == "fp32"  # auto never picks OpenVINO or bf16


# ---- the compiled-model cache ----
def _blobs(user_cache, engine, folder: str = ""):
    """The engine dir's cached OpenVINO blobs (only those whose folder starts with `folder`: "vae_decoder-fp32")."""
    manifest = read_manifest(engine)
    return sorted((user_cache / "svdedit" / "engines").glob(
        f"{manifest.identity()[:16]}-{manifest.graphs_key()[:8]}/openvino/*/{folder}*/*.blob"))


def test_a_second_open_maps_the_compiled_model(engine_dirs, user_cache, tmp_path):
    engine = shutil.copytree(engine_dirs["sd2-v"], tmp_path / "eng")  # the cache is keyed by graphs, not by folder
    manifest = read_manifest(engine)
    for blob in _blobs(user_cache, engine):
        shutil.rmtree(blob.parent)
    first = ov_runner.OpenvinoRunner(engine, "unet", manifest, "fp32")
    with first:
        assert first.opened_from == "graph"
    blobs = _blobs(user_cache, engine)
    assert [b.parent.name for b in blobs] == [f"unet-fp32-{manifest.networks['unet'].sha256[:16]}"]
    assert not [p for p in blobs[0].parent.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    second = ov_runner.OpenvinoRunner(engine, "unet", manifest, "fp32")
    feeds = _feeds(manifest.networks["unet"], manifest, np.random.default_rng(0))
    with first, second:
        assert second.opened_from == "cache"
        np.testing.assert_array_equal(first(**feeds)["model_output"], second(**feeds)["model_output"])
    assert _blobs(user_cache, engine) == blobs


def test_a_damaged_blob_is_compiled_again_and_replaced(engine_dirs, user_cache, caplog):
    engine, manifest = engine_dirs["sd1"], read_manifest(engine_dirs["sd1"])
    with ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32"):
        pass
    # every vae_decoder fp32 blob of this engine: where fp32 is the CPU's default precision (no bf16 units), other
    # tests have compiled it too (the same graph from other paths), and the folder holds more than one blob
    blobs = _blobs(user_cache, engine, "vae_decoder-fp32")
    assert blobs
    for blob in blobs:
        blob.chmod(0o600)  # OpenVINO writes its blobs read-only
        blob.write_bytes(b"not a compiled model" * 10)
    runner = ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32")
    with caplog.at_level(logging.WARNING, logger="svdedit.runtime"), runner:
        assert runner.opened_from == "graph"
    assert "could not be used" in caplog.text and "compiled the graph again" in caplog.text
    again = ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32")
    with again:  # the replaced blob is a sound one
        assert again.opened_from == "cache"


def test_an_engine_dir_reached_by_another_path_maps_the_same_blob(engine_dirs, user_cache, tmp_path, caplog):
    """OpenVINO names a cached blob after the graph's path: through a symlink the runner must still map the blob its
    real path wrote (it compiled again beside it, and said the blob could not be used); a copy elsewhere is compiled
    for its own path, said as such, and the first blob stays."""
    engine, manifest = engine_dirs["sd1"], read_manifest(engine_dirs["sd1"])
    with ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32"):
        pass
    before = _blobs(user_cache, engine, "vae_decoder-fp32")
    stats = {b: b.stat().st_mtime_ns for b in before}
    link = tmp_path / "link"
    link.symlink_to(Path(engine).resolve(), target_is_directory=True)
    runner = ov_runner.OpenvinoRunner(link, "vae_decoder", manifest, "fp32")
    with caplog.at_level(logging.WARNING, logger="svdedit.runtime"), runner:
        assert runner.opened_from == "cache"
    assert not [r for r in caplog.records if r.name == "svdedit.runtime" and r.levelno >= logging.WARNING]
    assert {b: b.stat().st_mtime_ns for b in _blobs(user_cache, engine) if b in stats} == stats
    assert _blobs(user_cache, engine, "vae_decoder-fp32") == before

    copy = shutil.copytree(engine, tmp_path / "copy")
    runner = ov_runner.OpenvinoRunner(copy, "vae_decoder", manifest, "fp32")
    with caplog.at_level(logging.WARNING, logger="svdedit.runtime"), runner:
        assert runner.opened_from == "graph"
    assert "at another path" in caplog.text and "could not be used" not in caplog.text
    after = _blobs(user_cache, engine, "vae_decoder-fp32")
    assert set(before) < set(after) and {b: b.stat().st_mtime_ns for b in before} == stats


def test_an_unwritable_cache_is_a_warning_and_the_run_goes_on(engine_dirs, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")  # unwritable even for root, unlike a chmod
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    manifest = read_manifest(engine_dirs["sd1"])
    runner = ov_runner.OpenvinoRunner(engine_dirs["sd1"], "vae_decoder", manifest, "fp32")
    with caplog.at_level(logging.WARNING, logger="svdedit.runtime"), runner:
        out = runner(**_feeds(runner.entry, manifest, np.random.default_rng(0)))["image"]
    assert out.shape[0] == 2 and "every open will compile again" in caplog.text
    assert blocker.read_text().startswith("a file")


# ---- refusals ----
def test_precisions_a_provider_cannot_compute_are_refused(engine_dirs, monkeypatch):
    from svdedit.runtime.pipeline import Pipeline

    with pytest.raises(SvdeditError, match="bf16 needs the provider openvino"):
        Pipeline(engine_dirs["sd1"], "cpu", precision="bf16")
    with pytest.raises(SvdeditError, match="exported in fp32.*svdedit export MODEL -o DIR --precision fp16"):
        Pipeline(engine_dirs["sd1"], "cpu", precision="fp16")
    with pytest.raises(SvdeditError, match="OpenVINO on the CPU computes in fp32 or bf16, not 'fp16'"):
        Pipeline(engine_dirs["sd1"], "openvino", precision="fp16")
    monkeypatch.setattr(ov_runner, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    with pytest.raises(SvdeditError, match="no bf16 units.*use the precision fp32"):
        Pipeline(engine_dirs["sd1"], "openvino", precision="bf16")


def test_without_openvino_the_error_says_how_to_install_it(engine_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    runner = open_engines(engine_dirs["sd1"], read_manifest(engine_dirs["sd1"]), "openvino", "fp32")["unet"]
    with pytest.raises(SvdeditError, match=r"pip install 'svdedit\[openvino\]'"):
        runner.activate()


def test_a_graph_openvino_cannot_read_is_named(engine_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no compiled model of the sound graph to import
    engine = shutil.copytree(engine_dirs["sd1"], tmp_path / "eng")
    manifest = read_manifest(engine)  # read before the damage: the runner itself meets the broken file
    (engine / "vae_decoder.onnx").write_bytes(b"\x08\x07garbage" * 64)
    with pytest.raises(EngineDirError, match=r"OpenVINO cannot compile .*vae_decoder\.onnx.*provider cpu"):
        ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32").activate()


def test_another_networks_graph_is_refused_at_activation(engine_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = shutil.copytree(engine_dirs["sd1"], tmp_path / "eng")
    manifest = read_manifest(engine)
    shutil.copy(engine / "vae_encoder.onnx", engine / "vae_decoder.onnx")
    with pytest.raises(EngineDirError, match="is not the vae_decoder the manifest describes"):
        ov_runner.OpenvinoRunner(engine, "vae_decoder", manifest, "fp32").activate()


# ---- the command line ----
def test_check_on_openvino_prints_one_json_line_per_network_and_the_cpu(engine_dirs):
    proc = run_cli("check", engine_dirs["sd1"], "--provider", "openvino", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["network"] for line in lines] == ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    for line in lines:
        assert line["ok"] and line["provider"] == "OpenVINO-CPU-fp32" and line["precision"] == "fp32"
        assert line["compiled_from"] in ("graph", "cache") and "bf16_units" in line["cpu"]


def test_generate_on_openvino_records_it_and_bf16_on_onnxruntime_is_a_clear_error(engine_dirs, tmp_path):
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--provider", "openvino", "--precision", "fp32",
                   "--prompt", PROMPT, "--steps", "4", "-o", tmp_path / "x.png")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout.splitlines()[-1])["providers"].values()) == {"OpenVINO-CPU-fp32"}
    assert_clear_error(run_cli("generate", "--engine", engine_dirs["sd1"], "--precision", "bf16", "--prompt", PROMPT,
                               "-o", tmp_path / "y.png"), "generate", "bf16 needs the provider openvino")


def test_env_reports_openvino_and_the_cpu_flags():
    proc = run_cli("env", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["openvino"] and info["openvino"][0].isdigit()
    assert set(info["cpu"]["flags"]) <= set(ov_runner.REPORTED_FLAGS) and info["cpu"]["bf16_units"] == ov_runner.has_bf16()
