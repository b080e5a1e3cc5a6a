"""Channel-wise SVD of diffusion latents, with a NumPy-shaped API (NumPy in -> NumPy out, CuPy in -> CuPy out).

The method of arXiv:2502.02225 factorises every channel of a latent (C, H, W) as an H x W matrix:
for a batch (B, C, H, W) that is B*C independent SVDs, done as one batched call.

Dispatch (by the array's module):
- NumPy: ``numpy.linalg.svd`` on the (B, C, H, W) stack, i.e. LAPACK's gesdd per matrix. (Splitting
  the stack over a thread pool was measured and rejected: OpenBLAS already threads inside LAPACK,
  and the pool made 8x4x64x64 3.4x slower on 2 cores.)
- CuPy: ``cupy.linalg.svd`` under ``cupyx.errstate(linalg="raise")``, so that a cuSOLVER failure
  (``info != 0``) raises instead of returning garbage (CuPy ignores it by default). CuPy uses
  cuSOLVER's ``gesvdjBatched`` for stacks of matrices up to 32x32 (the embedded model's 16x16
  channels) and a loop of ``gesvd`` above that. The dedicated batched paths for 64x64 / 96x96
  (SD at 512 / 768 px) are still to be written and measured; **this CuPy path has not been run on
  a GPU yet.**

All results are float32, reduced (k = min(H, W)), singular values descending.
"""

from __future__ import annotations

import numpy as np


class LatentShapeError(ValueError):
    """The input is not a (B, C, H, W) stack of finite real matrices."""


def array_module(x):
    """numpy, or cupy for a CuPy array (without importing CuPy unless it is already in use)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


def _check(latents, name: str = "latents"):
    xp = array_module(latents)
    if latents.ndim != 4:
        raise LatentShapeError(f"{name} must be (batch, channels, height, width); got shape {tuple(latents.shape)}.")
    if min(latents.shape) == 0:
        raise LatentShapeError(f"{name} has an empty axis: shape {tuple(latents.shape)}.")
    if latents.dtype.kind not in "fiu":
        raise LatentShapeError(f"{name} must be real; got dtype {latents.dtype}.")
    x = latents.astype(xp.float32, copy=True)  # never touch the caller's array
    if not bool(xp.isfinite(x).all()):
        raise LatentShapeError(f"{name} contains NaN or inf; an SVD of it is meaningless. Check the step that made it "
                               f"(an fp16 overflow is the usual cause).")
    return xp, x


def channel_svd(latents):
    """(B, C, H, W) -> U (B, C, H, k), S (B, C, k), Vh (B, C, k, W); k = min(H, W), S descending, float32."""
    xp, x = _check(latents)
    if xp is np:
        u, s, vh = np.linalg.svd(x, full_matrices=False)
    else:
        import cupyx

        with cupyx.errstate(linalg="raise"):
            u, s, vh = xp.linalg.svd(x, full_matrices=False)
    return u.astype(xp.float32, copy=False), s.astype(xp.float32, copy=False), vh.astype(xp.float32, copy=False)


def reconstruct(U, S, Vh):
    """U diag(S) Vh for stacks: the inverse of channel_svd (or of a truncation of it)."""
    return (U * S[..., None, :]) @ Vh


def truncate(U, S, Vh, k: int):
    """The top-k singular triplets of each channel."""
    if not 1 <= k <= S.shape[-1]:
        raise ValueError(f"k must be between 1 and {S.shape[-1]}, not {k}.")
    return U[..., :, :k], S[..., :k], Vh[..., :k, :]


def subspace_distance(A, B):
    """Grassmann geodesic distance between the column spaces of orthonormal bases A, B (..., n, k).

    sqrt(sum_i theta_i^2) over the principal angles theta_i: 0 for the same subspace, sqrt(k) * pi / 2
    for orthogonal ones; invariant to the choice of bases. cos(theta_i) are the singular values of
    A^T B, but arccos is ill-conditioned near 1 (a float32 basis would read ~1e-3 for no angle at
    all), so angles under pi/4 come from the sines instead: the singular values of B - A (A^T B)
    (Knyazev & Argentati 2002).
    """
    xp = array_module(A)
    if A.shape != B.shape:
        raise ValueError(f"bases must have the same shape; got {tuple(A.shape)} and {tuple(B.shape)}.")
    M = xp.swapaxes(A, -1, -2) @ B
    cos = xp.linalg.svd(M, compute_uv=False)  # descending
    sin = xp.linalg.svd(B - A @ M, compute_uv=False)[..., ::-1]  # ascending: pairs with cos descending
    theta = xp.where(cos**2 < 0.5, xp.arccos(xp.clip(cos, 0.0, 1.0)), xp.arcsin(xp.clip(sin, 0.0, 1.0)))
    return xp.sqrt((theta**2).sum(axis=-1))


def energy_fraction(S, k: int):
    """Share of each channel's squared Frobenius norm held by its top-k singular values."""
    xp = array_module(S)
    total = (S.astype(xp.float64) ** 2).sum(axis=-1)
    top = (S[..., :k].astype(xp.float64) ** 2).sum(axis=-1)
    return xp.where(total > 0, top / xp.where(total > 0, total, 1), 1.0)


def rank_of(direction, U):
    """Index of the column of U (..., n, k) most aligned (|cosine|) with `direction` (..., n): its rank."""
    xp = array_module(U)
    d = direction / xp.maximum(xp.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
    return xp.abs((d[..., None, :] @ U)[..., 0, :]).argmax(axis=-1)
