"""svdedit.kernels: channel-wise SVD of latents and the spectrum helpers the editing method needs.

NumPy arrays run on the CPU (LAPACK), CuPy arrays on the GPU (cuSOLVER); see kernels/svdedit/kernels/svd.py.
"""

from svdedit.kernels.svd import (
    LatentShapeError,
    array_module,
    channel_svd,
    energy_fraction,
    rank_of,
    reconstruct,
    subspace_distance,
    truncate,
)

__all__ = ["LatentShapeError", "array_module", "channel_svd", "energy_fraction", "rank_of", "reconstruct", "subspace_distance", "truncate"]
