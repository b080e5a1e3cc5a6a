"""The typed manifest (runtime/svdedit/runtime/engines/manifest.py): fields typed and checked, the identity, the sizes of a call;
a manifest with a missing or mistyped field is a clear error naming the field, from every command."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from svdedit.runtime.engines.manifest import Manifest, read_manifest, write_manifest
from svdedit.runtime.errors import EngineDirError, ManifestFieldError
from svdedit.runtime.files import sha256_json
from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixtures are exported with torch


def test_fields_are_typed_and_the_raw_json_is_kept(engine_dirs):
    m = read_manifest(engine_dirs["sd2-v"])
    raw = json.loads((engine_dirs["sd2-v"] / "manifest.json").read_text())
    assert m.raw == raw and m.to_dict() == raw
    assert (m.latent.channels, m.latent.vae_scale_factor) == (4, 4)
    assert isinstance(m.latent.vae_scaling_factor, float) and isinstance(m.image_size.default, int)
    assert m.networks["unet"].inputs[0].shape == ("batch", 4, "latent_height", "latent_width")
    assert m.identities()[1] == sha256_json(raw)  # svdedit 0.1.0's identity: attribute files learned then still load
    assert m.identity() == sha256_json({"source": raw["source"]["sha256"], "family": raw["family"],
                                        "prediction_type": raw["prediction_type"], "latent": raw["latent"],
                                        "text": {k: raw["text"][k] for k in ("sequence_length", "hidden_size")}})
    assert m.axis_sizes(3) == {"batch": 3, "height": 32, "width": 32, "latent_height": 8, "latent_width": 8}
    assert m.axis_sizes(1, size=64)["latent_width"] == 16
    assert m.builds == {} and m.files()[0] == ("schedule.json", m.schedule.sha256)


def test_a_build_record_leaves_the_identity_and_round_trips(engine_dirs, tmp_path):
    d = shutil.copytree(engine_dirs["sd1"], tmp_path / "e")
    m = read_manifest(d)
    record = {"gpu": "G", "compute_capability": "9.0", "tensorrt": "10.14.1", "directory": "tensorrt/k",
              "precision": "fp16", "shapes": [64], "max_batch": 2, "static": True, "networks": {}}
    m2 = m.with_tensorrt_build("k", record)
    assert m2.identity() == m.identity() and m2.builds["k"].shapes == (64,) and m2.builds["k"].static is True
    write_manifest(d, m2)
    assert read_manifest(d).builds == m2.builds
    with pytest.raises(ManifestFieldError, match=r"manifest.tensorrt.k.max_batch should be a whole number"):
        m.with_tensorrt_build("k", {**record, "max_batch": "2"})


@pytest.mark.parametrize("damage, phrase", [
    (lambda m: m.pop("latent"), "manifest.latent is missing"),
    (lambda m: m["networks"].update(unet="unet.onnx"), 'manifest.networks.unet should be an object, not "unet.onnx"'),
    (lambda m: m.update(networks=[]), "manifest.networks should be an object, not []"),
    (lambda m: m["image_size"].update(default="64"), 'manifest.image_size.default should be a whole number, not "64"'),
    (lambda m: m["text"].update(file=7), "manifest.text.file should be a string, not 7"),
    (lambda m: m["text"].pop("pad_id"), "manifest.text.pad_id is missing"),
    (lambda m: m["latent"].update(vae_scale_factor=None), "manifest.latent.vae_scale_factor should be a whole number"),
    (lambda m: m["networks"]["unet"].update(sha256=None), "manifest.networks.unet.sha256 should be a string"),
    (lambda m: m["networks"]["vae_decoder"]["inputs"][0].update(shape=[1.5]),
     "manifest.networks.vae_decoder.inputs[0].shape[0] should be a string or a whole number"),
])
def test_a_mistyped_manifest_is_named_field_by_field(engine_dirs, tmp_path, damage, phrase):
    d = shutil.copytree(engine_dirs["sd1"], tmp_path / "e")
    raw = json.loads((d / "manifest.json").read_text())
    damage(raw)
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineDirError, match=re.escape("is corrupt: " + phrase)):
        read_manifest(d)
    assert_clear_error(run_cli("check", d), "check", "is corrupt", "--force")


def test_the_export_checks_the_manifest_it_writes():
    with pytest.raises(ManifestFieldError):
        Manifest.from_dict({"format_version": 1})
