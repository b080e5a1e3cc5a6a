"""`svdedit check`: verifies an engine dir and runs each network once; refuses damaged dirs clearly."""

import json
import shutil
from pathlib import Path

import pytest

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch


@pytest.mark.parametrize("flavour", ["sd1", "sd2-v-fp16"])
def test_check_runs_every_network(engine_dirs, flavour):
    proc = run_cli("check", engine_dirs[flavour])
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["network"] for line in lines] == ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    assert all(line["ok"] and line["provider"] == "CPUExecutionProvider" for line in lines)


def _damaged(engine_dirs, tmp_path) -> Path:
    return Path(shutil.copytree(engine_dirs["sd1"], tmp_path / "eng"))


def test_check_names_a_file_that_does_not_match_the_manifest(engine_dirs, tmp_path):
    d = _damaged(engine_dirs, tmp_path)
    with open(d / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    assert_clear_error(run_cli("check", d), "check", "vae_decoder.onnx does not match the manifest", "--force")


@pytest.mark.parametrize("damage, phrase", [
    (lambda d: (d / "unet.onnx").unlink(), "unet.onnx is missing"),
    (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "is corrupt"),
    (lambda d: (d / "manifest.json").write_text(json.dumps({**json.loads((d / "manifest.json").read_text()),
                                                            "format_version": 99})), "format version 99"),
    (lambda d: shutil.rmtree(d), "does not exist"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json does not match the manifest"),
    (lambda d: (d / "schedule.json").unlink(), "schedule.json is missing"),
])
def test_check_refuses_damaged_engine_dirs(engine_dirs, tmp_path, damage, phrase):
    d = _damaged(engine_dirs, tmp_path)
    damage(d)
    assert_clear_error(run_cli("check", d), "check", phrase)


def test_unknown_provider_is_a_clear_error(engine_dirs):
    assert_clear_error(run_cli("check", engine_dirs["sd1"], "--provider", "rocm"), "check",
                       "the provider 'rocm' is not available")


def test_every_command_explains_itself():
    for args in ([], ["export"], ["check"]):
        proc = run_cli(*args, "--help")
        assert proc.returncode == 0 and "usage: svdedit" in proc.stdout
    assert "SD 1.x, SD 2.x" in run_cli("export", "--help").stdout
    assert "export" in run_cli("--help").stdout and "check" in run_cli("--help").stdout
