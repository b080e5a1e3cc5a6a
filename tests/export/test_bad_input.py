"""Every user mistake the export stage can meet gets one clear message, exit status 2, no traceback,
and leaves nothing behind: no engine dir, no temporary folder, the user's files untouched."""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch


@pytest.fixture
def pipeline_copy(tiny_pipelines, tmp_path) -> Path:
    """A private copy of the sd1 fixture pipeline that a test may damage."""
    return Path(shutil.copytree(tiny_pipelines["sd1"], tmp_path / "pipe"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_missing_source(tmp_path):
    proc = run_cli("export", tmp_path / "nope", "-o", tmp_path / "out")
    assert_clear_error(proc, "export", "does not exist", "model_index.json", "--config")
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"not really")
    assert_clear_error(run_cli("export", tmp_path / "photos", "-o", tmp_path / "out"), "export", "no model_index.json")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage, phrases", [
    (lambda d: _edit_json(d / "model_index.json", _class_name="StableDiffusionXLImg2ImgPipeline",
                          requires_aesthetics_score=True), ("refiner", "StableDiffusionXLPipeline")),
    (lambda d: _edit_json(d / "model_index.json", _class_name="StableDiffusionXLInpaintPipeline"),
     ("inpainting", "StableDiffusionXLPipeline")),
    (lambda d: shutil.rmtree(d / "text_encoder_2"), ("text_encoder_2", "incomplete")),
    (lambda d: shutil.rmtree(d / "tokenizer_2"), ("tokenizer_2", "incomplete")),
    (lambda d: _edit_json(d / "unet" / "config.json", projection_class_embeddings_input_dim=5 * 8 + 48),
     ("added conditioning", "refiner")),
    (lambda d: _edit_json(d / "unet" / "config.json", cross_attention_dim=32), ("32 + 48", "mixes components")),
])
def test_sdxl_pipelines_svdedit_cannot_export_are_refused(xl_pipeline, tmp_path, damage, phrases):
    """A refiner, an inpainting pipeline, a folder without text_encoder_2 or tokenizer_2, a UNet that is not SDXL
    base's: refused in the inspection before torch loads (in-process here; the command line's one-line error for
    the first of them, and for SD's cases above)."""
    from svdedit.export.source import inspect_source
    from svdedit.runtime.errors import SourceError

    folder = Path(shutil.copytree(xl_pipeline, tmp_path / "xl"))
    damage(folder)
    with pytest.raises(SourceError) as info:
        inspect_source(folder)
    assert all(p in str(info.value) for p in phrases) and "\n" not in str(info.value), info.value
    if "refiner" in phrases and "added conditioning" not in phrases:
        assert_clear_error(run_cli("export", folder, "-o", tmp_path / "out"), "export", *phrases)
        assert not (tmp_path / "out").exists()


def test_single_file_of_another_family_than_its_config_is_refused(pipeline_copy, xl_pipeline, tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    ckpt = tmp_path / "model.safetensors"
    unet_key = "model.diffusion_model.input_blocks.0.0.weight"
    save_file({unet_key: np.zeros((32, 4, 3, 3), np.float32),
               "conditioner.embedders.1.model.positional_embedding": np.zeros(4, np.float32)}, str(ckpt))
    assert_clear_error(run_cli("export", ckpt, "--config", pipeline_copy, "-o", tmp_path / "out"), "export",
                       "is an SDXL checkpoint but --config", "Stable Diffusion 1.x")
    save_file({unet_key: np.zeros((32, 4, 3, 3), np.float32),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(4, np.float32)}, str(ckpt))
    assert_clear_error(run_cli("export", ckpt, "--config", xl_pipeline, "-o", tmp_path / "out"), "export",
                       "is an SD 1.x/2.x checkpoint but --config", "Stable Diffusion XL")
    save_file({unet_key: np.zeros((48, 4, 3, 3), np.float32),
               "conditioner.embedders.1.model.positional_embedding": np.zeros(4, np.float32)}, str(ckpt))
    assert_clear_error(run_cli("export", ckpt, "--config", xl_pipeline, "-o", tmp_path / "out"), "export",
                       "does not match --config", "48 channels")
    assert not (tmp_path / "out").exists()


def test_inpainting_unet_is_refused(pipeline_copy, tmp_path):
    cfg = json.loads((pipeline_copy / "unet" / "config.json").read_text())
    cfg["in_channels"] = 9
    (pipeline_copy / "unet" / "config.json").write_text(json.dumps(cfg))
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "out"), "export", "9 input channels", "inpainting")


def test_pipeline_of_another_kind_is_refused(pipeline_copy, tmp_path):
    index = json.loads((pipeline_copy / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22Pipeline"
    index["text_encoder"] = [None, None]
    (pipeline_copy / "model_index.json").write_text(json.dumps(index))
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "out"), "export", "without text_encoder",
                       "Supported families")


def test_truncated_safetensors_names_the_file(pipeline_copy, tmp_path):
    weights = pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "out"), "export", str(weights), "truncated")


def test_corrupt_safetensors_header_names_the_file(pipeline_copy, tmp_path):
    weights = pipeline_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage-not-json-at-all-#######"
    weights.write_bytes(bytes(data))
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "out"), "export", str(weights), "header is corrupt")


def test_pickle_weights_are_never_loaded(pipeline_copy, tmp_path):
    weights = pipeline_copy / "text_encoder" / "model.safetensors"
    weights.rename(weights.with_name("pytorch_model.bin"))
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "out"), "export", "pickle", "safe_serialization=True")


def test_single_file_needs_config_and_refuses_pickle(pipeline_copy, tmp_path):
    from safetensors.numpy import save_file
    import numpy as np

    ckpt = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.weight": np.zeros(4, np.float32)}, str(ckpt))
    assert_clear_error(run_cli("export", ckpt, "-o", tmp_path / "out"), "export", "--config DIR")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04pickle")
    assert_clear_error(run_cli("export", tmp_path / "model.ckpt", "-o", tmp_path / "out"), "export", "pickle")


def test_engine_dir_holding_other_files_is_left_alone(pipeline_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    for extra in ([], ["--force"]):
        proc = run_cli("export", pipeline_copy, "-o", out, *extra)
        assert_clear_error(proc, "export", "not an svdedit engine dir", "will not overwrite")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    assert_clear_error(run_cli("export", pipeline_copy, "-o", tmp_path / "file"), "export", "is a file")


def test_engine_dir_from_other_options_needs_force(engine_dirs, tiny_pipelines, tmp_path):
    out = Path(shutil.copytree(engine_dirs["sd1"], tmp_path / "out"))
    before = (out / "manifest.json").read_text()
    proc = run_cli("export", tiny_pipelines["sd1"], "-o", out, "--precision", "fp16")
    assert_clear_error(proc, "export", "other options", "--force")
    assert (out / "manifest.json").read_text() == before


def test_bad_option_values(pipeline_copy, tmp_path):
    proc = run_cli("export", pipeline_copy, "-o", tmp_path / "out", "--opset", "7")
    assert_clear_error(proc, "export", "--opset 7", "18 to 23")
    proc = run_cli("export", pipeline_copy, "-o", tmp_path / "out", "--precision", "int4")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr  # argparse's own message


# ---- failures in the middle of an export (in-process, so that a failure can be injected) ----

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device", "unet.onnx"),
                                     pytest.param(KeyboardInterrupt(), marks=pytest.mark.slow)])  # interrupts: test_interrupts.py
def test_failure_mid_export_leaves_nothing_behind(tiny_pipelines, tmp_path, monkeypatch, failure):
    import onnx

    from svdedit.export import exporter
    from svdedit.runtime.errors import ExportError

    real = onnx.checker.check_model

    def check_then_fail(model, *args, **kwargs):
        real(model, *args, **kwargs)
        if str(model).endswith("text_encoder.onnx"):  # a network is already on disk in the temporary dir
            raise failure

    monkeypatch.setattr(onnx.checker, "check_model", check_then_fail)
    out = tmp_path / "out"
    expected = ExportError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        exporter.export_model(tiny_pipelines["sd1"], out, log=lambda m: None)
    if expected is ExportError:
        assert "No space left on device" in str(info.value) and "Nothing was written" in str(info.value)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_failure_mid_force_export_keeps_the_old_engine_dir(engine_dirs, tiny_pipelines, tmp_path, monkeypatch):
    from svdedit.export import exporter
    from svdedit.runtime.engines.manifest import read_manifest

    import onnx

    out = Path(shutil.copytree(engine_dirs["sd1"], tmp_path / "out"))
    real = onnx.checker.check_model

    def fail(model, *args, **kwargs):  # once the first network is on disk in the temporary dir (test_export.py
        real(model, *args, **kwargs)   # has a --force export that completes)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(onnx.checker, "check_model", fail)
    with pytest.raises(exporter.ExportError, match="Input/output error"):
        exporter.export_model(tiny_pipelines["sd1"], out, exporter.ExportOptions(force=True), log=lambda m: None)
    read_manifest(out)  # the old engine dir is intact, hashes and all
    assert leftovers(tmp_path) == []


def test_parity_failure_fails_the_export_and_writes_nothing(tiny_pipelines, tmp_path, monkeypatch):
    from svdedit.export import exporter
    from svdedit.runtime.engines import contract

    strict = replace(contract.NETWORKS["text_encoder"], rtol={"fp32": 0.0, "fp16": 0.0})
    monkeypatch.setitem(contract.NETWORKS, "text_encoder", strict)
    out = tmp_path / "out"
    with pytest.raises(exporter.ExportError, match="text_encoder: onnxruntime differs from torch"):
        exporter.export_model(tiny_pipelines["sd1"], out, log=lambda m: None)
    assert not out.exists() and leftovers(tmp_path) == []
