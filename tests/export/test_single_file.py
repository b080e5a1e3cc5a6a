"""SOURCE as one original-format .safetensors checkpoint plus --config DIR."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli import run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch


@pytest.fixture(scope="module")
def ldm_checkpoint(tiny_pipelines, tmp_path_factory):
    from tests.fixtures.ldm_checkpoint import write_ldm_checkpoint

    return write_ldm_checkpoint(tiny_pipelines["sd1"], tmp_path_factory.mktemp("ldm") / "tiny-sd1.safetensors")


def test_single_file_loads_the_same_weights_as_the_folder(tiny_pipelines, ldm_checkpoint):
    from svdedit.export.source import inspect_source, load_components

    single = inspect_source(ldm_checkpoint, config=tiny_pipelines["sd1"])
    assert (single.kind, single.family, single.prediction_type) == ("single_file", "sd1", "epsilon")
    a = load_components(single)
    b = load_components(inspect_source(tiny_pipelines["sd1"]))
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        for k in sb:
            np.testing.assert_array_equal(sa[k].numpy(), sb[k].numpy(), err_msg=f"{name}.{k}")


@pytest.mark.slow  # 43 s; the loader's equivalence to the folder is the test above, in every run
def test_export_single_file_through_the_cli(tiny_pipelines, ldm_checkpoint, tmp_path):
    out = tmp_path / "eng"
    proc = run_cli("export", ldm_checkpoint, "--config", tiny_pipelines["sd1"], "-o", out)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["kind"] == "single_file" and m["family"] == "sd1"
    assert all(net["parity"]["passed"] for net in m["networks"].values())


def test_checkpoint_of_another_architecture_is_a_clear_error(tiny_pipelines, tmp_path):
    from safetensors.numpy import save_file

    from svdedit.export.source import inspect_source, load_components
    from svdedit.runtime.errors import SourceError

    ckpt = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((7, 4, 3, 3), np.float32)}, str(ckpt))
    with pytest.raises(SourceError, match="does not match --config .* first block has 7 channels, the config's 32"):
        inspect_source(ckpt, config=tiny_pipelines["sd1"])  # read from the header, before torch
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((32, 4, 3, 3), np.float32)}, str(ckpt))
    with pytest.raises(SourceError, match="could not be loaded with the configs of --config"):
        load_components(inspect_source(ckpt, config=tiny_pipelines["sd1"]))  # the rest is checked by the loader


def test_an_sdxl_single_file_loads_the_same_weights_as_the_folder(xl_pipeline, tmp_path):
    """An SDXL checkpoint in the original layout (both text encoders, the OpenCLIP one in open_clip's) with --config:
    every tensor of the four networks as the pipeline folder's. An export from it is then the folder's export (the
    same networks through the same exporter, parity in tests/runtime/test_sdxl_parity.py)."""
    from svdedit.export.source import inspect_source, load_components
    from tests.fixtures.ldm_checkpoint import write_ldm_checkpoint

    ckpt = write_ldm_checkpoint(xl_pipeline, tmp_path / "tiny-sdxl.safetensors")
    single = inspect_source(ckpt, config=xl_pipeline)
    assert (single.kind, single.family) == ("single_file", "sdxl")
    a, b = load_components(single), load_components(inspect_source(xl_pipeline))
    assert a.force_zeros_for_empty_prompt and a.tokenizer_2.pad_token == "!"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sb:
            np.testing.assert_array_equal(sa[k].numpy(), sb[k].numpy(), err_msg=f"{name}.{k}")
