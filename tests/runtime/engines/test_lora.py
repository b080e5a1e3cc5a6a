"""Reading LoRA files, torch-free (runtime/svdedit/runtime/engines/lora.py): the formats, the scaling, and every
bad file refused with one line that names it. The merge against diffusers: tests/export/test_lora.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given
from safetensors.numpy import save_file

from svdedit.runtime.engines.lora import MAX_SCALE, read_adapter
from svdedit.runtime.errors import SvdeditError
from tests.fuzzing import FUZZ, mutate, mutations

MODULE = "down_blocks.0.attentions.0.proj_in"


def pair(rank=4, n_in=32, n_out=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rank, n_in)).astype(np.float32), rng.standard_normal((n_out, rank)).astype(np.float32)


def write(tmp_path, tensors, metadata=None, name="lora.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_diffusers_keys_take_alpha_from_the_lora_metadata_else_the_rank(tmp_path):
    down, up = pair()
    tensors = {f"unet.{MODULE}.lora_A.weight": down, f"unet.{MODULE}.lora_B.weight": up,
               "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight": down,
               "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.up.weight": up}
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    adapter = read_adapter(write(tmp_path, tensors, meta), scale=0.5)
    layers = {(layer.component, layer.module): layer for layer in adapter.layers}
    assert layers[("unet", MODULE)].scaling == 2.0
    assert layers[("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")].scaling == 1.0  # no alpha: rank
    np.testing.assert_allclose(layers[("unet", MODULE)].delta(), 2.0 * up @ down, rtol=1e-6)
    assert adapter.record()["components"] == ["text_encoder", "unet"] and adapter.record()["scale"] == 0.5


def test_kohya_keys_with_alpha_tensors_and_conv_layers(tmp_path):
    rng = np.random.default_rng(1)
    down, up = rng.standard_normal((4, 8, 3, 3)).astype(np.float32), rng.standard_normal((16, 4, 1, 1)).astype(np.float32)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    adapter = read_adapter(write(tmp_path, {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                                            f"{name}.alpha": np.array(2.0, np.float32)}))
    (layer,) = adapter.layers
    assert (layer.component, layer.module, layer.kohya, layer.scaling) == ("unet", "down_blocks_0_resnets_0_conv1", True, 0.5)
    np.testing.assert_allclose(layer.delta().reshape(16, 8, 3, 3),
                               0.5 * np.einsum("or,rikl->oikl", up[:, :, 0, 0], down), rtol=1e-5, atol=1e-6)


def test_bf16_tensors_are_widened(tmp_path):
    down, up = pair()
    path = write(tmp_path, {f"unet.{MODULE}.lora_A.weight": down, f"unet.{MODULE}.lora_B.weight": up})
    blob = bytearray(path.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = bytes(blob[8 + n:])
    out, position, parts = {}, 0, []
    for key in (k for k in header if k != "__metadata__"):
        b, e = header[key]["data_offsets"]
        halves = (np.frombuffer(data[b:e], np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        out[key] = {"dtype": "BF16", "shape": header[key]["shape"], "data_offsets": [position, position + len(halves)]}
        parts.append(halves)
        position += len(halves)
    head = json.dumps(out).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(parts))
    (layer,) = read_adapter(path).layers
    np.testing.assert_allclose(layer.down, down, rtol=1e-2)  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("case, message", [
    ("pickle", "is a pickle .*never loads"),
    ("not-safetensors", "not a valid .safetensors file"),
    ("missing", "does not exist"),
    ("unknown-keys", r"2 key\(s\) that are not LoRA layers .*\(model\.diffusion_model\.x, unet\.y\.weight\)"),
    ("no-up", r"has its down matrix but not the other"),
    ("rank", r"rank 64, out of bounds"),
    ("not-a-pair", "not a rank-r pair"),
    ("nan", "holds NaN or inf"),
    ("int", "is 'I32', not a float type"),
    ("empty", "holds no LoRA layers"),
])
def test_bad_lora_files_are_refused_naming_the_problem(tmp_path, case, message):
    down, up = pair()
    key = f"unet.{MODULE}"
    path = tmp_path / "lora.safetensors"
    if case == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif case == "not-safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    elif case == "unknown-keys":
        write(tmp_path, {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up, "model.diffusion_model.x": down,
                         "unet.y.weight": up})
    elif case == "no-up":
        write(tmp_path, {f"{key}.lora_A.weight": down})
    elif case == "rank":
        write(tmp_path, {f"{key}.lora_A.weight": pair(64, 32, 16)[0], f"{key}.lora_B.weight": pair(64, 32, 16)[1]})
    elif case == "not-a-pair":
        write(tmp_path, {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up.T.copy()})
    elif case == "nan":
        up[0, 0] = np.nan
        write(tmp_path, {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    elif case == "int":
        write(tmp_path, {f"{key}.lora_A.weight": down.astype(np.int32), f"{key}.lora_B.weight": up})
    elif case == "empty":
        path.write_bytes((2).to_bytes(8, "little") + b"{}")
    with pytest.raises(SvdeditError, match=message) as info:
        read_adapter(tmp_path / ("absent.safetensors" if case == "missing" else "lora.safetensors"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("scale", [MAX_SCALE * 2, float("nan"), -100.0])
def test_an_absurd_scale_is_refused(tmp_path, scale):
    down, up = pair()
    path = write(tmp_path, {f"unet.{MODULE}.lora_A.weight": down, f"unet.{MODULE}.lora_B.weight": up})
    with pytest.raises(SvdeditError, match="scale .* is out of bounds"):
        read_adapter(path, scale)


def good_lora_blob() -> tuple[dict, bytes]:
    """(header, data) of a valid LoRA file: diffusers keys with their metadata, and a kohya conv layer with its alpha."""
    from safetensors.numpy import save

    down, up = pair()
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    blob = save({f"unet.{MODULE}.lora_A.weight": down, f"unet.{MODULE}.lora_B.weight": up,
                 f"{name}.lora_down.weight": np.ones((4, 8, 3, 3), np.float32),
                 f"{name}.lora_up.weight": np.ones((16, 4, 1, 1), np.float16), f"{name}.alpha": np.array(2.0, np.float32)},
                metadata={"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8,
                                                               "unet.alpha_pattern": {"proj_in": 4}})})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"]["lora_adapter_metadata"] = json.loads(header["__metadata__"]["lora_adapter_metadata"])
    return header, blob[8 + n:]


@FUZZ
@given(changes=mutations())
def test_any_mutation_of_a_lora_header_is_read_or_a_clear_error(tmp_path_factory, changes):
    """Every field of the header (the tensors' dtypes, shapes and offsets, the names, the metadata) mutated: the
    reader returns an adapter or raises a one-line SvdeditError, never another exception."""
    header, data = good_lora_blob()
    header = mutate(header, changes)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if isinstance(meta, dict) and not isinstance(meta.get("lora_adapter_metadata"), str):
        meta["lora_adapter_metadata"] = json.dumps(meta.get("lora_adapter_metadata"))
    head = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("fuzz") / "lora.safetensors"
    path.write_bytes(len(head).to_bytes(8, "little") + head + data)
    try:
        adapter = read_adapter(path)
    except SvdeditError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(np.isfinite(layer.scaling) for layer in adapter.layers)


def test_the_fuzzed_file_is_valid_before_mutation(tmp_path):
    header, data = good_lora_blob()
    header["__metadata__"]["lora_adapter_metadata"] = json.dumps(header["__metadata__"]["lora_adapter_metadata"])
    head = json.dumps(header).encode()
    path = tmp_path / "lora.safetensors"
    path.write_bytes(len(head).to_bytes(8, "little") + head + data)
    layers = {layer.module: layer for layer in read_adapter(path).layers}
    assert layers[MODULE].scaling == 1.0 and layers["down_blocks_0_resnets_0_conv1"].scaling == 0.5  # pattern; kohya
