"""Invert once, edit many: what an edit computed before the injection, kept for the next edit of the same image.

An edit spends most of its time before the attribute is applied: for a real image the VAE encoding, the DDIM
inversion and the target prompt sampled down to T_x; for a generated one the pair sampled from its noise. None
of that depends on the strength, and only z depends on the attribute (through the target prompt). ``EditCache``
keeps those latents, keyed by content (the image's pixels, the text embeddings, the knobs that shape the
trajectory, the engine and the step-cache setting), so that a second edit at another strength runs only the
injection, the rest of the trajectory and the decoding; another attribute re-samples z but not the inversion.

    cache = EditCache(max_bytes=256 << 20)
    editor = Editor(pipe, cache=cache)
    for s in (0, 0.25, 0.5, 0.75, 1):
        editor.edit_images(attrs, image, [prompt], strength=s)     # the first inverts; the others reuse it

It is an LRU bounded in bytes (the arrays it holds). One batch of an edit is looked up whole: either every
image of the batch is cached, or the batch is computed as a full edit computes it (same calls, same batch
sizes), so a cached edit of a real image is the full edit's result. For generated images a re-edit denoises
y alone where the full edit denoises the source alongside it: onnxruntime's CPU kernels may round a batch of
one differently from a batch of two (measured: at most 1 uint8 level on the embedded model; tests/runtime/editing
/test_cache.py holds that bound).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

#: the default budget of the service and the command line (a 64x64 SD latent pair is ~130 KB; a source image
#: kept for generated seeds is 3 MB at 512x512)
DEFAULT_MAX_BYTES = 256 << 20


def digest(*parts) -> str:
    """A short content key of arrays and plain values (sha256 of their bytes, shapes and dtypes)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class EditCache:
    """An LRU of latents (tuples of NumPy arrays) bounded in bytes; thread-safe (the service's batches run in a
    worker thread while requests are checked in others)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stats = CacheStats()
        self._items: OrderedDict[str, tuple[np.ndarray, ...]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> tuple[np.ndarray, ...] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return value

    def get_all(self, keys: list[str]) -> list[tuple[np.ndarray, ...]] | None:
        """Every key's value, or None if any one is missing (one batch is looked up whole)."""
        values = [self.get(k) for k in keys]
        return None if any(v is None for v in values) else values

    def put(self, key: str, value: tuple[np.ndarray, ...]) -> None:
        value = tuple(np.array(v, copy=True) for v in value)  # never alias a caller's batch array
        size = sum(v.nbytes for v in value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= sum(v.nbytes for v in old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= sum(v.nbytes for v in dropped)
                self.stats.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
