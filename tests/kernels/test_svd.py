"""svdedit.kernels: channel-wise SVD against NumPy float64 (the oracle), invariants, bad inputs.

The CPU path runs everywhere; the CuPy path is checked against it under the `gpu` marker.
"""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.kernels import (
    LatentShapeError,
    channel_svd,
    energy_fraction,
    rank_of,
    reconstruct,
    subspace_distance,
    truncate,
)
from tests.conftest import requires_gpu

SIZES = [(16, 16), (32, 32), (33, 33), (64, 64), (96, 96), (16, 24)]


def _latents(b, c, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((b, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("h, w", SIZES)
def test_matches_numpy_float64_and_reconstructs(h, w):
    x = _latents(3, 4, h, w)
    before = x.copy()
    U, S, Vh = channel_svd(x)
    k = min(h, w)
    assert U.shape == (3, 4, h, k) and S.shape == (3, 4, k) and Vh.shape == (3, 4, k, w)
    assert U.dtype == S.dtype == Vh.dtype == np.float32
    np.testing.assert_array_equal(x, before)  # input untouched
    ref = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(S, ref, rtol=1e-4, atol=1e-5 * ref.max())
    assert np.all(np.diff(S, axis=-1) <= 0)  # descending
    err = np.abs(reconstruct(U, S, Vh) - x).max()
    assert err < 1e-4 * np.abs(x).max() * max(h, w) ** 0.5
    eye = np.eye(k, dtype=np.float32)
    np.testing.assert_allclose(np.swapaxes(U, -1, -2) @ U, np.broadcast_to(eye, (3, 4, k, k)), atol=2e-5 * k)
    np.testing.assert_allclose(Vh @ np.swapaxes(Vh, -1, -2), np.broadcast_to(eye, (3, 4, k, k)), atol=2e-5 * k)


def test_truncation_keeps_the_top_triplets_and_their_energy():
    x = _latents(2, 4, 16, 16, seed=1)
    U, S, Vh = channel_svd(x)
    Uk, Sk, Vk = truncate(U, S, Vh, 4)
    assert Uk.shape == (2, 4, 16, 4) and Sk.shape == (2, 4, 4) and Vk.shape == (2, 4, 4, 16)
    # Eckart-Young: the rank-4 truncation's error is exactly the discarded singular values
    resid = np.linalg.norm(reconstruct(Uk, Sk, Vk) - x, axis=(-2, -1))
    np.testing.assert_allclose(resid, np.sqrt((S[..., 4:] ** 2).sum(-1)), rtol=1e-3)
    np.testing.assert_allclose(energy_fraction(S, 16), 1.0, rtol=1e-6)
    assert np.all(energy_fraction(S, 4) < 1) and np.all(energy_fraction(S, 4) > 0)
    with pytest.raises(ValueError, match="k must be between 1 and 16"):
        truncate(U, S, Vh, 17)


def test_degenerate_inputs():
    U, S, Vh = channel_svd(np.zeros((1, 4, 16, 16), np.float32))
    assert np.all(S == 0) and np.all(np.isfinite(U)) and np.all(np.isfinite(Vh))
    np.testing.assert_array_equal(energy_fraction(S, 2), 1.0)
    r = np.random.default_rng(2)
    low = (r.standard_normal((1, 4, 16, 2)) @ r.standard_normal((1, 4, 2, 16))).astype(np.float32)  # rank 2
    U, S, Vh = channel_svd(low)
    assert np.all(S[..., 2:] < 1e-5 * S[..., :1])
    np.testing.assert_allclose(reconstruct(*truncate(U, S, Vh, 2)), low, atol=1e-4)
    U, S, Vh = channel_svd(_latents(1, 4, 16, 16).astype(np.float64))  # other dtypes are computed in fp32
    assert S.dtype == np.float32


@pytest.mark.parametrize("bad, phrase", [
    (np.full((1, 4, 16, 16), np.nan, np.float32), "NaN or inf"),
    (np.zeros((4, 16, 16), np.float32), "must be \\(batch, channels, height, width\\)"),
    (np.zeros((1, 4, 0, 16), np.float32), "empty axis"),
    (np.zeros((1, 4, 16, 16), np.complex64), "must be real"),
])
def test_bad_inputs_are_clear_errors(bad, phrase):
    with pytest.raises(LatentShapeError, match=phrase):
        channel_svd(bad)


def test_subspace_distance():
    r = np.random.default_rng(3)
    A, _ = np.linalg.qr(r.standard_normal((16, 4)))
    Q, _ = np.linalg.qr(r.standard_normal((4, 4)))
    assert subspace_distance(A, A @ Q) == pytest.approx(0.0, abs=1e-6)  # same subspace, other basis
    A32 = A.astype(np.float32)
    assert subspace_distance(A32, A32 @ Q.astype(np.float32)) == pytest.approx(0.0, abs=1e-5)  # no arccos floor
    full, _ = np.linalg.qr(r.standard_normal((16, 16)))
    ortho = subspace_distance(full[:, :4], full[:, 4:8])
    assert ortho == pytest.approx(2 * np.pi / 2, rel=1e-5)  # sqrt(4) * pi / 2
    theta = 0.3  # rotate one of two basis vectors by theta within a plane: distance theta
    e = np.eye(16)
    B = np.stack([e[0], np.cos(theta) * e[1] + np.sin(theta) * e[2]], axis=1)
    assert subspace_distance(e[:, :2], B) == pytest.approx(theta, rel=1e-6)
    small = 1e-3  # a tiny rotation is measured, not lost in rounding
    Bs = np.stack([e[0], np.cos(small) * e[1] + np.sin(small) * e[2]], axis=1)
    assert subspace_distance(e[:, :2], Bs) == pytest.approx(small, rel=1e-4)
    batch = subspace_distance(np.stack([A, full[:, :4]]), np.stack([A @ Q, full[:, 4:8]]))
    np.testing.assert_allclose(batch, [0.0, np.pi], atol=1e-6)
    assert subspace_distance(A, full[:, 4:8]) == pytest.approx(subspace_distance(full[:, 4:8], A))


def test_rank_of_finds_a_direction_among_the_singular_vectors():
    x = _latents(1, 4, 16, 16, seed=4)
    U, S, Vh = channel_svd(x)
    target = -U[0, 2, :, 5]  # the sign of a singular vector is arbitrary
    assert int(rank_of(target, U[0, 2])) == 5
    np.testing.assert_array_equal(rank_of(U[0, :, :, 3], U[0]), [3, 3, 3, 3])


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("h", [16, 32, 33, 64, 96])
def test_cupy_path_matches_numpy(h):
    import cupy

    x = _latents(8, 4, h, h, seed=5)
    xg = cupy.asarray(x)
    U, S, Vh = channel_svd(xg)
    assert isinstance(S, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(S), channel_svd(x)[1], rtol=1e-4, atol=1e-5)
    assert float(cupy.abs(reconstruct(U, S, Vh) - xg).max()) < 1e-3
    cupy.testing.assert_array_equal(xg, cupy.asarray(x))
