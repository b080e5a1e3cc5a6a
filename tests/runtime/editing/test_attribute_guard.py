"""Attribute files as a careless or hostile user may hand them over (issue 18, item 4): the whole file is checked
when it is opened, before any network runs, and every problem is an AttributeFileError naming the file and the
field (a knob by its name in the file, not by a command-line flag the user never gave)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load, save

from svdedit.runtime.editing import avi
from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.errors import AttributeFileError
from tests.fuzzing import FUZZ, mutate, mutations


def _good(tmp_path) -> tuple[dict, dict]:
    pair = avi.decompose(*[np.random.default_rng(s).standard_normal((1, 4, 16, 16)).astype(np.float32) for s in (5, 6)], k=4)
    params, losses = avi.train(pair, Knobs(iters=5))
    a = Attribute({n: np.asarray(v, np.float32) for n, v in params.items()}, "a red circle", "a blue circle",
                  Knobs(iters=5), "ab" * 32, (4, 16, 16), 0, losses, ((0.0, 0.0), (0.5, 0.6), (1.0, 1.0)))
    blob = a.save(tmp_path / "good.safetensors").read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    return json.loads(header["__metadata__"]["svdedit"]), load(blob)


def _write(tmp_path, meta, tensors, name="bad.safetensors"):
    text = meta if isinstance(meta, str) else json.dumps(meta, allow_nan=True)
    path = tmp_path / name
    path.write_bytes(save(tensors, metadata={"svdedit": text}))
    return path


@pytest.mark.parametrize("change, phrase", [
    (lambda m, t: ("raw", '"just a string"'), "metadata is not a JSON object"),
    (lambda m, t: ("raw", "[1, 2]"), "metadata is not a JSON object"),
    (lambda m, t: m.pop("source"), "metadata field 'source' is null, not a str"),
    (lambda m, t: m.pop("engine_manifest_sha256"), "'engine_manifest_sha256' is null"),
    (lambda m, t: m.update(seed="x"), "metadata field 'seed' is \"x\", not a int"),
    (lambda m, t: m.update(latent_shape=[4, 16]), "'latent_shape' is [4, 16], not three positive sizes"),
    (lambda m, t: m["knobs"].update(steps="50"), "knob steps is \"50\", not a int"),
    (lambda m, t: m["knobs"].update(t_edit=5), "knob t_edit = 5.0: must be a number from 0 to 1"),
    (lambda m, t: m["knobs"].update(window=-5), "knob window = -5: must be a number from 1 to 1000"),
    (lambda m, t: m["knobs"].update(continuation="sideways"), "knob continuation = 'sideways'"),
    (lambda m, t: m["knobs"].update(steps=0), "knob steps = 0"),
    (lambda m, t: m["knobs"].update(dtau=40), "knob dtau = 40: with 50 steps and t_edit 0.4, z would be taken at step -10"),
    (lambda m, t: m["knobs"].update(k=0), "knob k = 0"),
    (lambda m, t: m["knobs"].update(hidden=1_000_000_000), "knob hidden = 1000000000"),
    (lambda m, t: t.update(W2=t["W2"][:, :5]), "tensor W2 has shape"),
    (lambda m, t: t.update(b1=t["b1"][:3]), "tensor b1 has shape"),
    (lambda m, t: t.update(b2=np.zeros(3, np.float32)), "tensor b2 has shape"),
    (lambda m, t: t.update(W1=t["W1"].astype(np.float64)), "tensor W1 is float64, not float32"),
    (lambda m, t: t.update(b1=t["b1"].astype(np.int32)), "tensor b1 is int32"),
    (lambda m, t: t["W1"].__setitem__((0, 0), np.nan), "tensor W1 holds NaN or inf"),
    (lambda m, t: t.pop("b2"), "its tensors are ['W1', 'W2', 'b1']"),
    (lambda m, t: m.update(strength_map=[[0, 0], [0.5, 2], [0.4, 0.1]]), "strength_map is not increasing"),
    (lambda m, t: m.update(strength_map="linear"), "strength_map is not a list"),
])
def test_every_part_of_the_file_is_checked_and_named(tmp_path, change, phrase):
    meta, tensors = _good(tmp_path)
    replaced = change(meta, tensors)
    path = _write(tmp_path, replaced[1] if isinstance(replaced, tuple) else meta, tensors)
    with pytest.raises(AttributeFileError) as info:
        Attribute.load(path)
    assert str(path) in str(info.value) and phrase in str(info.value), str(info.value)
    assert "--" not in str(info.value).split("Learn it again")[0]  # no command-line flag the user never gave


def test_the_command_line_refuses_it_before_any_network_runs(tmp_path, shapes_engine):
    from tests.cli import assert_clear_error, run_cli

    meta, tensors = _good(tmp_path)
    meta["knobs"]["window"] = -5
    path = _write(tmp_path, meta, tensors)
    proc = run_cli("edit", "--engine", shapes_engine, "--attr", path, "--prompt", "a red square", "--seed", "1",
                   "-o", tmp_path / "out.png")
    assert_clear_error(proc, "edit", str(path), "knob window = -5")
    assert not (tmp_path / "out.png").exists()


@FUZZ
@given(changes=mutations(), weights=st.sampled_from(["same", "float64", "nan", "short", "extra"]))
def test_any_mutation_of_an_attribute_file_is_accepted_or_a_clear_error(tmp_path_factory, changes, weights):
    tmp = tmp_path_factory.mktemp("attr")
    meta, tensors = _good(tmp)
    meta = mutate(meta, changes)
    if weights == "float64":
        tensors["W2"] = tensors["W2"].astype(np.float64)
    elif weights == "nan":
        tensors["b2"][0] = np.inf
    elif weights == "short":
        tensors["W1"] = tensors["W1"][:-1]
    elif weights == "extra":
        tensors["W3"] = tensors["b1"]
    path = _write(tmp, meta, tensors)
    try:
        a = Attribute.load(path)
        assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in a.params.values())
        a.knobs.check()
    except AttributeFileError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


@FUZZ
@given(data=st.binary(max_size=300), cut=st.integers(0, 2000))
def test_random_bytes_and_truncations_are_clear_errors(tmp_path_factory, data, cut):
    tmp = tmp_path_factory.mktemp("bytes")
    _good(tmp)
    good = (tmp / "good.safetensors").read_bytes()
    for blob in (data, good[:cut], good[:8] + data):
        path = tmp / "x.safetensors"
        path.write_bytes(blob)
        try:
            Attribute.load(path)
        except AttributeFileError as exc:
            assert str(path) in str(exc)
