"""Analysis tools of the paper (arXiv:2502.02225, section 3), drawn with Pillow (no matplotlib).

- sweep:    at T_x, scale singular values sigma_i (chosen i, chosen channels) by factors, finish
            sampling with the same prompt, and save a labelled grid (rows: i, columns: factors);
- subspace: Grassmann distance between the top-k left singular subspaces of x_t at every pair of
            steps of one trajectory (mean over channels): a heatmap PNG and the matrix as JSON;
- rank:     the direction that separates the source from the target prompt (top left singular
            vector of z - x at t_ref, per channel) and its rank among x_t's singular vectors at each step.

Each takes an open Pipeline and its options as arguments, writes the PNG and a JSON beside it (atomically),
and returns a small JSON-able summary. Every trajectory goes through the Pipeline's DDIM driver, so a NaN
stops the probe at the step where it appeared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svdedit.kernels import channel_svd, rank_of, reconstruct, subspace_distance
from svdedit.runtime import ddim
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.files import write_json
from svdedit.runtime.images import save_png, to_uint8
from svdedit.runtime.pipeline import Pipeline

#: images denoised at once by `sweep` (a large grid runs in batches)
GRID_BATCH = 16


def _trajectory(pipe: Pipeline, prompt: str, seed: int, steps: int, guidance: float, stop: int | None = None) -> list:
    """[x at step 0 (noise), x after step 1, ..., x at `stop`]: xs[i] sits at the noise level of step i."""
    stop = steps if stop is None else stop
    kept = pipe.denoise(pipe.noise(seed), pipe.encode_prompt([prompt]), steps, guidance, stop=stop,
                        keep=range(stop + 1)).kept
    return [kept[i] for i in range(stop + 1)]


def _step(pipe, frac: float, steps: int) -> int:
    if not 0 < frac < 1:
        raise SvdeditError(f"the step fraction {frac} must be strictly between 0 and 1.")
    return ddim.step_nearest(pipe.schedule, steps, frac)


def sweep(pipe: Pipeline, prompt: str, output: str | Path, *, seed: int = 0, steps: int = 50, guidance: float = 3.0,
          t_edit: float = 0.5, index: list[int] = (0, 1, 2, 3), channels: list[int] | None = None,
          factors: list[float] = (0.0, 0.5, 1.0, 1.5, 2.0)) -> dict:
    """Scale sigma_i (i in `index`) of the `channels` at T_x = t_edit by each of `factors`; finish sampling; grid."""
    from PIL import Image, ImageDraw

    index, factors = list(index), list(factors)
    i_x = _step(pipe, t_edit, steps)
    x = _trajectory(pipe, prompt, seed, steps, guidance, stop=i_x)[-1]
    U, S, Vh = channel_svd(x)
    channels = list(channels) if channels is not None else list(range(S.shape[1]))
    bad = [i for i in index if not 0 <= i < S.shape[-1]] + [c for c in channels if not 0 <= c < S.shape[1]]
    if bad:
        raise SvdeditError(f"the singular value indices must be in 0..{S.shape[-1] - 1} and the channels in "
                           f"0..{S.shape[1] - 1}; got {bad}.")
    latents = []
    for i in index:
        for f in factors:
            S2 = S.copy()
            S2[:, channels, i] *= np.float32(f)
            latents.append(reconstruct(U, S2, Vh))
    batch = np.concatenate(latents)
    imgs = np.concatenate([to_uint8(pipe.decode(pipe.denoise(part, pipe.encode_prompt([prompt] * len(part)), steps,
                                                             guidance, start=i_x).latent))
                           for part in np.array_split(batch, max(1, -(-len(batch) // GRID_BATCH)))])
    h, w = imgs.shape[1:3]
    scale = max(1, 128 // h)
    cw, ch, left, top = w * scale, h * scale, 70, 22
    canvas = Image.new("RGB", (left + cw * len(factors), top + ch * len(index)), "white")
    d = ImageDraw.Draw(canvas)
    for c, f in enumerate(factors):
        d.text((left + c * cw + 4, 5), f"x{f:g}", fill="black")
    for r, i in enumerate(index):
        d.text((4, top + r * ch + ch // 2 - 6), f"sigma_{i}", fill="black")
        for c in range(len(factors)):
            img = Image.fromarray(imgs[r * len(factors) + c]).resize((cw, ch), Image.NEAREST)
            canvas.paste(img, (left + c * cw, top + r * ch))
    out_path = save_png(canvas, output)
    info = {"output": str(out_path), "timestep": int(ddim.timesteps(pipe.schedule, steps)[i_x]),
            "index": index, "channels": channels, "factors": factors, "sigma": S[0][:, index].round(4).tolist()}
    write_json(out_path.with_suffix(".json"), info, indent=1)
    return info


def _heatmap(matrix: np.ndarray, labels: list[int], path: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    n = len(matrix)
    cell = max(4, 400 // n)
    left, top = 60, 30
    canvas = Image.new("RGB", (left + n * cell + 80, top + n * cell + 40), "white")
    d = ImageDraw.Draw(canvas)
    hi = float(matrix.max()) or 1.0
    for r in range(n):
        for c in range(n):
            v = matrix[r, c] / hi  # dark = far apart
            g = int(255 * (1 - v))
            d.rectangle([left + c * cell, top + r * cell, left + (c + 1) * cell - 1, top + (r + 1) * cell - 1],
                        fill=(g, g, 255))
    for j in range(0, n, max(1, n // 8)):
        d.text((left - 40, top + j * cell), f"t={labels[j]}", fill="black")
        d.text((left + j * cell, top + n * cell + 5), f"{labels[j]}", fill="black")
    d.text((left, 8), title, fill="black")
    d.text((left + n * cell + 8, top), f"max {hi:.2f}", fill="black")
    d.text((left + n * cell + 8, top + 14), "white = 0", fill="black")
    return save_png(canvas, path)


def subspace(pipe: Pipeline, prompt: str, output: str | Path, *, seed: int = 0, steps: int = 50,
             guidance: float = 3.0, k: int = 4) -> dict:
    """Grassmann distance between the top-k left singular subspaces of x_t at every pair of steps: heatmap + JSON."""
    side = pipe.size // pipe.vae_factor
    if steps < 2 or not 1 <= k <= side:
        raise SvdeditError(f"subspace needs at least 2 steps (got {steps}) and k from 1 to {side} (got {k}).")
    xs = _trajectory(pipe, prompt, seed, steps, guidance)[:-1]  # noisy levels only
    ts = [int(t) for t in ddim.timesteps(pipe.schedule, steps)]
    bases = [channel_svd(x)[0][0][..., :k] for x in xs]  # (C, h, k) per step
    n = len(bases)
    dist = np.zeros((n, n), np.float32)
    for i in range(n):
        A = np.broadcast_to(bases[i], (n, *bases[i].shape))
        dist[i] = subspace_distance(A, np.stack(bases)).mean(axis=1)
    out_path = _heatmap(dist, ts, Path(output), f"Grassmann distance of top-{k} subspaces (mean over channels)")
    adjacent = [float(dist[i, i + 1]) for i in range(n - 1)]
    info = {"output": str(out_path), "k": k, "timesteps": ts, "distance": dist.round(4).tolist(),
            "adjacent_mean": float(np.mean(adjacent)), "max_possible": float(np.sqrt(k) * np.pi / 2)}
    write_json(out_path.with_suffix(".json"), info, indent=1)
    return {k: v for k, v in info.items() if k != "distance"}


def rank(pipe: Pipeline, prompt: str, target_prompt: str, output: str | Path, *, seed: int = 0, steps: int = 50,
         guidance: float = 3.0, t_ref: float = 0.5) -> dict:
    """Rank of the source -> target direction (top left singular vector of z - x at t_ref) among x_t's, per step."""
    from PIL import Image, ImageDraw

    xs = _trajectory(pipe, prompt, seed, steps, guidance)
    zs = _trajectory(pipe, target_prompt, seed, steps, guidance)
    i_ref = _step(pipe, t_ref, steps)
    direction = channel_svd(zs[i_ref] - xs[i_ref])[0][0][..., 0]  # (C, h): top left singular vector per channel
    ts = [int(t) for t in ddim.timesteps(pipe.schedule, steps)]
    ranks = np.stack([rank_of(direction, channel_svd(x)[0][0]) for x in xs[:-1]])  # (steps, C)
    # plot: rank against timestep, one line per channel
    w, h, left, top = 520, 260, 50, 20
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    kmax = max(1, int(ranks.max()))
    colours = [(200, 40, 40), (40, 140, 40), (40, 60, 200), (150, 60, 170)]

    def xy(i, r):
        return left + i * (w - left - 20) / max(1, len(ts) - 1), top + r * (h - top - 40) / kmax
    d.line([xy(0, 0), xy(len(ts) - 1, 0)], fill=(200, 200, 200))
    for c in range(ranks.shape[1]):
        d.line([xy(i, r) for i, r in enumerate(ranks[:, c])], fill=colours[c % 4], width=2)
        d.text((w - 80, top + 12 * c), f"channel {c}", fill=colours[c % 4])
    d.text((4, top - 4), "rank 0", fill="black")
    d.text((4, h - 40), f"rank {kmax}", fill="black")
    d.text((left, h - 18), f"t = {ts[0]} (noise)  ->  t = {ts[-1]} (clean)", fill="black")
    out_path = save_png(canvas, output)
    info = {"output": str(out_path), "t_ref": ts[i_ref], "timesteps": ts, "rank_per_channel": ranks.T.tolist()}
    write_json(out_path.with_suffix(".json"), info, indent=1)
    return {"output": str(out_path), "t_ref": ts[i_ref], "rank_at_first_step": ranks[0].tolist(),
            "rank_at_last_step": ranks[-1].tolist()}
