"""AVI's math (runtime/svdedit/runtime/editing/avi.py): analytic gradients, training, the attribute file, prompt retargeting."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from svdedit.runtime.editing import avi
from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.edit import retarget
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.errors import AttributeFileError, InvalidRequestError, SvdeditError


def _pair64(seed: int = 0, k: int = 3, tail: bool = True) -> avi.Pair:
    """A Pair built in float64 (the math is dtype-generic), so finite differences are exact enough."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 8, 6))
    z = x + 0.7 * rng.standard_normal(x.shape)
    Ux, Sx, Vx = np.linalg.svd(x, full_matrices=False)
    Uz, Sz, Vz = np.linalg.svd(z, full_matrices=False)
    base = x - (Ux[..., :k] * Sx[..., None, :k]) @ Vx[..., :k, :] if tail else np.zeros_like(x)
    return avi.Pair(x, z, np.concatenate([Ux[..., :k], Uz[..., :k]], -1), np.concatenate([Vx[..., :k, :], Vz[..., :k, :]], -2),
                    np.concatenate([Sx[..., :k], Sz[..., :k]], -1), base)


@pytest.mark.parametrize("tail", [True, False])
def test_gradients_match_finite_differences(tail):
    pair = _pair64(tail=tail)
    knobs = Knobs(w_target=1.0, w_source=0.3, w_target_sv=0.2, w_source_sv=0.1, hidden=5)
    rng = np.random.default_rng(1)
    params = {n: rng.standard_normal(v.shape) * 0.3 for n, v in avi.init_params(18, 5).items()}  # W2 != 0
    _, _, grads = avi.loss_and_grads(params, pair, knobs)
    h = 1e-6
    for name, p in params.items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = avi.loss_and_grads(params, pair, knobs)[0]
            p[idx] = old - h
            down = avi.loss_and_grads(params, pair, knobs)[0]
            p[idx] = old
            num[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-8, err_msg=name)


def test_each_loss_is_what_the_docstring_says():
    pair = _pair64()
    params = avi.init_params(18, 4)  # W2 = 0: S = f, y = x_k + z_k + tail
    k = 3
    S = pair.f
    y = (pair.U * S[..., None, :]) @ pair.Vh + pair.base
    _, losses, _ = avi.loss_and_grads({n: v.astype(np.float64) for n, v in params.items()}, pair, Knobs())
    assert losses["target"] == pytest.approx(((y - pair.z) ** 2).sum() / (pair.z**2).sum())
    assert losses["source"] == pytest.approx(((y - pair.x) ** 2).sum() / (pair.x**2).sum())
    assert losses["target_sv"] == 0 and losses["source_sv"] == 0  # S = f exactly
    assert S[..., :k].shape == (2, 3, k)


def test_training_lowers_the_loss_and_is_deterministic():
    pair = avi.decompose(*[np.random.default_rng(s).standard_normal((1, 4, 16, 16)).astype(np.float32) for s in (0, 1)], k=4)
    knobs = Knobs(iters=60)
    start = avi.loss_and_grads(avi.init_params(32, knobs.hidden), pair, knobs)[0]
    seen = []
    params, final = avi.train(pair, knobs, progress=lambda it, n, losses: seen.append(losses["total"]))
    assert len(seen) == 60 and final["total"] < 0.7 * start
    again, _ = avi.train(pair, knobs)
    for n in params:
        assert np.array_equal(params[n], again[n])


def test_strength_zero_is_the_source_and_one_is_the_prediction():
    pair = avi.decompose(*[np.random.default_rng(s).standard_normal((2, 4, 16, 16)).astype(np.float32) for s in (2, 3)], k=4)
    params, _ = avi.train(pair, Knobs(iters=20))
    np.testing.assert_array_equal(avi.apply(params, pair, 0.0), pair.x)
    S, _ = avi.predict(params, pair.f)
    np.testing.assert_allclose(avi.apply(params, pair, 1.0), avi.compose(pair, S), atol=1e-5)
    half = avi.apply(params, pair, 0.5)
    np.testing.assert_allclose(half, 0.5 * (pair.x + avi.compose(pair, S)), atol=1e-5)


def test_decompose_with_the_tail_keeps_x_exactly_when_S_is_x_s():
    x = np.random.default_rng(4).standard_normal((1, 4, 16, 16)).astype(np.float32)
    pair = avi.decompose(x, x * 0.5, k=4)
    S = pair.f.copy()
    S[..., 4:] = 0  # only x's own top-k, at its own values
    np.testing.assert_allclose(avi.compose(pair, S), x, atol=1e-5)


def _attribute(**changes) -> Attribute:
    pair = avi.decompose(*[np.random.default_rng(s).standard_normal((1, 4, 16, 16)).astype(np.float32) for s in (5, 6)], k=4)
    params, losses = avi.train(pair, Knobs(iters=5))
    a = Attribute(params, "a red circle", "a blue circle", Knobs(iters=5), "ab" * 32, (4, 16, 16), 0, losses)
    return replace(a, **changes)


def test_attribute_file_round_trip_is_exact(tmp_path):
    a = _attribute()
    path = a.save(tmp_path / "red2blue.safetensors")
    b = Attribute.load(path, engine="ab" * 32)
    for n in a.params:
        assert np.array_equal(a.params[n], b.params[n]) and b.params[n].dtype == np.float32
    assert (b.source, b.target, b.knobs, b.latent_shape, b.seed) == (a.source, a.target, a.knobs, a.latent_shape, a.seed)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_attribute_file_refusals(tmp_path):
    path = _attribute().save(tmp_path / "a.safetensors")
    with pytest.raises(AttributeFileError, match="another model"):
        Attribute.load(path, engine="cd" * 32)
    with pytest.raises(AttributeFileError, match="does not exist"):
        Attribute.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(AttributeFileError, match="not a readable"):
        Attribute.load(tmp_path / "bad.safetensors")
    # a future format version
    from safetensors.numpy import load, save

    blob = path.read_bytes()
    meta = json.loads(json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])["__metadata__"]["svdedit"])
    meta["format_version"] = 99
    (tmp_path / "v99.safetensors").write_bytes(save(load(blob), metadata={"svdedit": json.dumps(meta)}))
    with pytest.raises(AttributeFileError, match="version 99"):
        Attribute.load(tmp_path / "v99.safetensors")


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = _attribute().save(tmp_path / "a.safetensors")
    before = path.read_bytes()
    import os

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(SvdeditError, match=r"cannot write .*a\.safetensors: disk full"):  # one line naming the path
        _attribute(seed=7).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_applying_to_latents_of_another_size_is_refused():
    a = _attribute()
    pair = avi.decompose(*[np.ones((1, 4, 8, 8), np.float32) + np.eye(8, dtype=np.float32)] * 2, k=2)
    with pytest.raises(AttributeFileError, match="singular values per latent"):
        avi.apply(a.params, pair)


@pytest.mark.parametrize("change, message", [
    (dict(t_edit=1.0), "knobs.t_edit"), (dict(k=0), "knobs.k"), (dict(continuation="both"), "knobs.continuation"),
    (dict(w_target=-1.0), "knobs.w_target"), (dict(w_target=0.0, w_source=0.0), "both 0"),
    (dict(window=0), "knobs.window"),
])
def test_bad_knobs_are_named(change, message):
    """In the runtime's own terms (the request's field), never a command-line flag: the front ends spell it."""
    with pytest.raises(InvalidRequestError, match=message) as caught:
        Knobs(**change).check()
    assert caught.value.field.startswith("knobs.") and "--" not in str(caught.value)


def test_retarget_applies_the_word_change():
    assert retarget("a small red square on the right", "a large red circle", "a large blue circle") == \
        "a small blue square on the right"
    assert retarget("a person smiling", "a person", "a young person") == "a young person smiling"
    assert retarget("a small red square on the left", "a red circle on the left", "a red circle on the right") == \
        "a small red square on the right"
    with pytest.raises(SvdeditError, match="does not contain 'red'"):
        retarget("a small green square", "a red circle", "a blue circle")


def test_the_strength_scale_maps_strength_to_blend_and_survives_the_file(tmp_path):
    a = _attribute(strength_map=((0.0, 0.0), (0.5, 0.62), (1.0, 1.0)))
    assert a.blend(0.0) == 0.0 and a.blend(1.0) == 1.0        # the source and the learned edit, unchanged
    assert a.blend(0.25) == pytest.approx(0.31) and a.blend(0.75) == pytest.approx(0.81)
    assert a.blend(1.5) == 1.5 and a.blend(-0.5) == -0.5      # extrapolation stays linear
    assert _attribute().blend(0.3) == 0.3                      # no scale: blend = strength (files before 0.1.1)
    b = Attribute.load(a.save(tmp_path / "a.safetensors"))
    assert b.strength_map == a.strength_map
