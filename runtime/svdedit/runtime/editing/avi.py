"""AVI, attribute vector integration (arXiv:2502.02225): learn an attribute's singular values from one pair.

Torch-free: NumPy (or CuPy) arrays, analytic gradients, Adam. The story, per latent channel c (an
h x w matrix), following docs/method.md ("our reading"):

    x = U_x S_x V_x^T       the source latent at T_x (the original prompt's trajectory)
    z = U_z S_z V_z^T       the target latent at T_x + dtau (the attribute prompt, same noise)
    U* = [U_x[:, :k] | U_z[:, :k]],  V* = [V_x[:, :k] | V_z[:, :k]]    (pairs (u_i, v_i) kept together)
    S  = f * exp(MLP(log f))          f = [S_x[:k], S_z[:k]]: the MLP predicts a log-multiplier per value
    y  = U* diag(S) V*^T  (+ the source tail x - U_x[:, :k] S_x[:k] V_x[:, :k]^T when `tail`)

Losses (each normalised by its reference's energy, so the weights are scale-free):

    L1 = |y - z|^2 / |z|^2               target: without it no edit happens
    L2 = |y - x|^2 / |x|^2               source: without it identity is lost
    L3 = |S[k:] - S_z[:k]|^2 / |S_z|^2   target singular values: without it colours saturate
    L4 = |S[:k] - S_x[:k]|^2 / |S_x|^2   source singular values: without it quality drops
    L  = l1 L1 + l2 L2 + l3 L3 + l4 L4

Only the MLP learns; x, z, U*, V* are constants, so dL/dS_i = u_i^T (dL/dy) v_i and the rest is the
chain rule through the MLP (written out in `loss_and_grads`, checked against finite differences in
tests/runtime/editing/test_avi.py). The MLP sees all channels of a latent at once: input and output are
(C * 2k) vectors. Its last layer starts at zero, so training starts from S = f.

Alpha blends latents: y(alpha) = x + alpha (y - x). With the tail on this is exactly the same as
blending the singular values ((1 - alpha) [S_x, 0] + alpha S), since y is linear in S and the tail is
x's; alpha = 0 is x itself, alpha > 1 extrapolates. The image does not follow alpha linearly (a layout
change snaps between 0.6 and 0.85); the strength a user gives is mapped to alpha by a scale
calibrated when the attribute is learned (Attribute.blend, learn.calibrate).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from svdedit.kernels import array_module, channel_svd
from svdedit.runtime.editing.knobs import Knobs
from svdedit.runtime.errors import AttributeFileError, SvdeditError
from svdedit.runtime.files import atomic_write_bytes, check_safetensors

FORMAT_VERSION = 1
LOSS_NAMES = ("target", "source", "target_sv", "source_sv")


# ---------------------------------------------------------------------------------------------
# The spectral parts shared by learning and applying
# ---------------------------------------------------------------------------------------------
@dataclass
class Pair:
    """x and z of a batch (B, C, h, w), decomposed: the constants of the loss."""

    x: object
    z: object
    U: object      # (B, C, h, 2k)
    Vh: object     # (B, C, 2k, w)
    f: object      # (B, C, 2k): [S_x[:k], S_z[:k]]
    base: object   # x's tail (B, C, h, w), or zeros


def decompose(x, z, k: int, tail: bool = True) -> Pair:
    if x.shape != z.shape:
        raise SvdeditError(f"source and target latents differ in shape: {tuple(x.shape)} vs {tuple(z.shape)}.")
    xp = array_module(x)
    k = min(k, min(x.shape[-2:]))
    Ux, Sx, Vx = channel_svd(x)
    Uz, Sz, Vz = channel_svd(z)
    U = xp.concatenate([Ux[..., :k], Uz[..., :k]], axis=-1)
    Vh = xp.concatenate([Vx[..., :k, :], Vz[..., :k, :]], axis=-2)
    f = xp.concatenate([Sx[..., :k], Sz[..., :k]], axis=-1)
    base = x - (Ux[..., :k] * Sx[..., None, :k]) @ Vx[..., :k, :] if tail else xp.zeros_like(x)
    return Pair(x.astype(xp.float32), z.astype(xp.float32), U, Vh, f, base)


def compose(pair: Pair, S):
    """y = U* diag(S) V*^T + tail."""
    return (pair.U * S[..., None, :]) @ pair.Vh + pair.base


# ---------------------------------------------------------------------------------------------
# The MLP and its analytic gradients
# ---------------------------------------------------------------------------------------------
def init_params(n_in: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "W2": np.zeros((hidden, n_in), np.float32),  # starts at S = f
        "b2": np.zeros(n_in, np.float32),
    }


def _features(f):
    """log singular values, centred per latent: scale-free input to the MLP. (B, C*2k)."""
    xp = array_module(f)
    g = xp.log(xp.maximum(f, 1e-6)).reshape(f.shape[0], -1)
    return g - g.mean(axis=1, keepdims=True)


def predict(params, f):
    """S = f * exp(MLP(log f)); returns S (B, C, 2k) and the cache the backward pass needs."""
    xp = array_module(f)
    p = {n: xp.asarray(v) for n, v in params.items()}
    g = _features(f)
    a = xp.tanh(g @ p["W1"] + p["b1"])
    h = (a @ p["W2"] + p["b2"]).reshape(f.shape)
    S = f * xp.exp(h)
    return S, (g, a, p)


def loss_and_grads(params, pair: Pair, knobs: Knobs):
    """The four losses, their weighted sum and d(sum)/d(params), analytically."""
    xp = array_module(pair.f)
    S, (g, a, p) = predict(params, pair.f)
    y = compose(pair, S)
    k = pair.f.shape[-1] // 2
    Sx, Sz = pair.f[..., :k], pair.f[..., k:]
    nz, nx = float((pair.z**2).sum()), float((pair.x**2).sum())
    nsz, nsx = float((Sz**2).sum()), float((Sx**2).sum())
    dz, dx = y - pair.z, y - pair.x
    rz, rx = S[..., k:] - Sz, S[..., :k] - Sx
    losses = {
        "target": float((dz**2).sum()) / max(nz, 1e-12),
        "source": float((dx**2).sum()) / max(nx, 1e-12),
        "target_sv": float((rz**2).sum()) / max(nsz, 1e-12),
        "source_sv": float((rx**2).sum()) / max(nsx, 1e-12),
    }
    w = (knobs.w_target, knobs.w_source, knobs.w_target_sv, knobs.w_source_sv)
    total = sum(wi * losses[n] for wi, n in zip(w, LOSS_NAMES))
    # dL/dy, then dL/dS_i = u_i^T (dL/dy) v_i per channel
    G = (2 * w[0] / max(nz, 1e-12)) * dz + (2 * w[1] / max(nx, 1e-12)) * dx
    dS = ((xp.swapaxes(pair.U, -1, -2) @ G) * pair.Vh).sum(-1)
    dS[..., k:] += (2 * w[2] / max(nsz, 1e-12)) * rz
    dS[..., :k] += (2 * w[3] / max(nsx, 1e-12)) * rx
    dh = (dS * S).reshape(g.shape[0], -1)          # S = f exp(h)
    da = (dh @ p["W2"].T) * (1 - a**2)              # tanh'
    grads = {"W2": a.T @ dh, "b2": dh.sum(0), "W1": g.T @ da, "b1": da.sum(0)}
    return total, losses, grads


def train(pair: Pair, knobs: Knobs, seed: int = 0,
          progress: Callable[[int, int, dict], None] | None = None) -> tuple[dict, dict]:
    """Adam on the MLP (Kingma & Ba 2015); returns (params, final losses)."""
    xp = array_module(pair.f)
    n_in = int(np.prod(pair.f.shape[1:]))
    params = {n: xp.asarray(v) for n, v in init_params(n_in, knobs.hidden, seed).items()}
    m = {n: xp.zeros_like(v) for n, v in params.items()}
    v = {n: xp.zeros_like(v) for n, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    total, losses, grads = loss_and_grads(params, pair, knobs)
    for it in range(1, knobs.iters + 1):
        for n in params:
            m[n] = b1 * m[n] + (1 - b1) * grads[n]
            v[n] = b2 * v[n] + (1 - b2) * grads[n] ** 2
            params[n] = params[n] - knobs.lr * (m[n] / (1 - b1**it)) / (xp.sqrt(v[n] / (1 - b2**it)) + eps)
        total, losses, grads = loss_and_grads(params, pair, knobs)
        if progress is not None:
            progress(it, knobs.iters, {**losses, "total": total})
    return params, {**losses, "total": total}


def apply(params, pair: Pair, strength: float = 1.0):
    """The edited latent y(strength) = x + strength (y_pred - x)."""
    xp = array_module(pair.f)
    n_in = int(np.prod(pair.f.shape[1:]))
    if params["W1"].shape[0] != n_in:
        raise AttributeFileError(f"this attribute was learned for {params['W1'].shape[0]} singular values per latent, "
                                 f"but the latents give {n_in} (another model, latent size or k).")
    S, _ = predict(params, pair.f)
    y = compose(pair, S)
    return pair.x + xp.float32(strength) * (y - pair.x)


# ---------------------------------------------------------------------------------------------
# The attribute file: one .safetensors, weights as tensors, everything else as JSON in its header
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attribute:
    params: dict[str, np.ndarray]
    source: str
    target: str
    knobs: Knobs
    engine: str          # the identity of the engine dir it was learned on (Manifest.identity)
    latent_shape: tuple  # (C, h, w) it was learned on
    seed: int
    losses: dict
    #: the strength scale, calibrated at learning ((strength, blend) pairs from 0 to 1; () = blend = strength)
    strength_map: tuple = ()
    #: the LoRA adapters in the weights it was learned with (Manifest.adapters: file, sha256, scale, ...): part of
    #: the engine's identity; kept to name them when the file is refused on an engine with others
    adapters: tuple = ()

    def blend(self, strength: float) -> float:
        """The blend alpha of y(alpha) = x + alpha (y - x) that gives `strength` of this attribute's change.

        Learning measures, on the learning pair, how far the final image moves towards the full edit as alpha
        grows (learn.calibrate); strength is that fraction, so that equal steps of strength make equal steps
        of change. 0 and 1 are unchanged (the source; the learned edit); beyond [0, 1] alpha = strength."""
        if not self.strength_map or not 0.0 < strength < 1.0:
            return float(strength)
        s, a = zip(*self.strength_map)
        return float(np.interp(strength, s, a))

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save

        meta = {"format_version": FORMAT_VERSION, "source": self.source, "target": self.target,
                "knobs": asdict(self.knobs), "engine_manifest_sha256": self.engine,
                "latent_shape": list(self.latent_shape), "seed": self.seed, "losses": self.losses,
                "strength_map": [list(pair) for pair in self.strength_map],
                **({"lora": list(self.adapters)} if self.adapters else {})}
        blob = save({n: np.ascontiguousarray(np.asarray(v, np.float32)) for n, v in self.params.items()},
                    metadata={"svdedit": json.dumps(meta)})
        return atomic_write_bytes(Path(path), blob)

    @classmethod
    def load(cls, path: str | Path, engine: str | Sequence[str] | None = None) -> "Attribute":
        """Read and check a whole attribute file before any network runs: its metadata (every field's type, the
        knobs in their ranges), its weights (names, float32, shapes that agree with the knobs, finite) and its
        strength scale. `engine`: the identities (Editor.engine_ids) it must have been learned on. Any problem is
        an AttributeFileError naming the file and the field."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.is_file():
            raise AttributeFileError(f"attribute file {path} does not exist; write one with `svdedit learn`.")

        def bad(why: str):
            raise AttributeFileError(f"{path} is not a readable svdedit attribute file: {why}. Learn it again with "
                                     f"`svdedit learn`.")
        try:
            header = check_safetensors(path)
            meta_text = (header.get("__metadata__") or {}).get("svdedit")
            if not isinstance(meta_text, str):
                bad("it has no svdedit metadata")
            meta = json.loads(meta_text)
            params = load_file(path)
        except (SvdeditError, SafetensorError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
            if isinstance(exc, AttributeFileError):
                raise
            text = str(exc).removeprefix(f"{path} ")
            bad(text[:300] if isinstance(exc, SvdeditError) else f"{type(exc).__name__}: {text[:200]}")
        if not isinstance(meta, dict):
            bad("its metadata is not a JSON object")
        if meta.get("format_version") != FORMAT_VERSION:
            raise AttributeFileError(f"{path} has attribute format version {meta.get('format_version')!r}; this svdedit "
                                     f"reads version {FORMAT_VERSION}. Learn it again with this version.")
        for key, kind in (("source", str), ("target", str), ("engine_manifest_sha256", str), ("seed", int),
                          ("latent_shape", list), ("losses", dict), ("knobs", dict)):
            value = meta.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                bad(f"metadata field {key!r} is {json.dumps(value)[:40]}, not a {kind.__name__}")
        shape = meta["latent_shape"]
        if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 100_000 for d in shape):
            bad(f"metadata field 'latent_shape' is {shape}, not three positive sizes (channels, height, width)")
        knobs = _knobs_of(meta["knobs"], path)
        _check_weights(params, knobs, shape, bad)
        strength_map = _strength_map_of(meta.get("strength_map", []), bad)
        ids = (engine,) if isinstance(engine, str) else tuple(engine or ())  # a sound file, of another model?
        adapters = meta.get("lora") or []
        if not (isinstance(adapters, list) and all(isinstance(a, dict) for a in adapters)):
            bad("metadata field 'lora' is not a list of adapters")
        if ids and meta["engine_manifest_sha256"] not in ids:
            lora = ", ".join(f"{str(a.get('file'))[:60]} (sha256 {str(a.get('sha256'))[:12]}, scale "
                             f"{str(a.get('scale'))[:12]})" for a in adapters[:4]) or "none"
            raise AttributeFileError(f"{path} was learned on another model (engine {meta['engine_manifest_sha256'][:12]}, "
                                     f"this engine is {ids[0][:12]}; LoRA adapters it was learned with: {lora}); "
                                     f"attributes do not transfer between models, nor between LoRA adapters or their "
                                     f"scales. Learn it again on this engine, or run with the adapters it names.")
        return cls(params, meta["source"], meta["target"], knobs, meta["engine_manifest_sha256"], tuple(shape),
                   meta["seed"], meta["losses"], strength_map, tuple(adapters))


def _knobs_of(stored: dict, path: Path) -> Knobs:
    """The knobs a file records, each of its default's type, in its range (unknown names: of a newer version)."""
    defaults = Knobs()
    values = {}
    for f in fields(Knobs):
        if f.name not in stored:
            continue
        value, kind = stored[f.name], type(getattr(defaults, f.name))
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind))
        if not ok:
            raise AttributeFileError(f"{path}: knob {f.name} is {json.dumps(value)[:40]}, not a {kind.__name__}; learn "
                                     f"the attribute again with `svdedit learn`.")
        values[f.name] = float(value) if kind is float else value
    try:
        return Knobs(**values).check(source=str(path))
    except AttributeFileError:
        raise
    except SvdeditError as exc:
        raise AttributeFileError(f"{exc} Learn the attribute again with `svdedit learn`.") from None


def _check_weights(params: dict, knobs: Knobs, latent_shape: list, bad) -> None:
    if set(params) != {"W1", "b1", "W2", "b2"}:
        bad(f"its tensors are {sorted(params)}, not the MLP's W1, b1, W2, b2")
    k = min(knobs.k, min(latent_shape[1:]))
    n_in = latent_shape[0] * 2 * k
    want = {"W1": (n_in, knobs.hidden), "b1": (knobs.hidden,), "W2": (knobs.hidden, n_in), "b2": (n_in,)}
    for name, shape in want.items():
        a = params[name]
        if a.dtype != np.float32:
            bad(f"tensor {name} is {a.dtype}, not float32")
        if a.shape != shape:
            bad(f"tensor {name} has shape {a.shape}; its knobs (k {knobs.k}, hidden {knobs.hidden}) and latent shape "
                f"{tuple(latent_shape)} make it {shape}")
        if not np.all(np.isfinite(a)):
            bad(f"tensor {name} holds NaN or inf")


def _strength_map_of(pairs, bad) -> tuple:
    """The stored strength scale: [strength, alpha] pairs, strengths from 0 to 1 and both increasing; or ()."""
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and
                                              all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
                                              for p in pairs):
        bad("its strength_map is not a list of [strength, alpha] pairs")
    if not pairs:
        return ()
    s, a = np.array(pairs, dtype=np.float64).T
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a)) and s[0] == 0 and s[-1] == 1 and np.all(np.diff(s) > 0)
            and np.all(np.diff(a) >= 0)):
        bad("its strength_map is not increasing from strength 0 to 1")
    return tuple((float(x), float(y)) for x, y in pairs)
