"""Analysis tools of the paper (arXiv:2502.02225, section 3), drawn with Pillow (no matplotlib).

- sweep:    at T_x, scale singular values sigma_i (chosen i, chosen channels) by factors, finish
            sampling with the same prompt, and save a labelled grid (rows: i, columns: factors);
- subspace: Grassmann distance between the top-k left singular subspaces of x_t at every pair of
            steps of one trajectory (mean over channels): a heatmap PNG and the matrix as JSON;
- rank:     the direction that separates the source from the target prompt (top left singular
            vector of z - x at t_ref, per channel) and its rank among x_t's singular vectors at each step.

Each takes an open Pipeline and the parsed CLI arguments and returns a small JSON-able summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svdedit.kernels import channel_svd, rank_of, reconstruct, subspace_distance
from svdedit.runtime import ddim
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.images import to_uint8
from svdedit.runtime.pipeline import _non_finite_is_our_error


def _trajectory(pipe, prompt: str, seed: int, steps: int, guidance: float, stop: int | None = None) -> list:
    xs = [pipe.noise(seed)]
    with _non_finite_is_our_error():
        ddim.sample(pipe.eps_fn([prompt], guidance), xs[0], pipe.schedule, steps, stop=stop,
                    callback=lambda i, t, x: xs.append(x))
    return xs  # xs[i] sits at the noise level of step i (xs[steps] is clean)


def _step(pipe, frac: float, steps: int) -> int:
    if not 0 < frac < 1:
        raise SvdeditError(f"the step fraction {frac} must be strictly between 0 and 1.")
    return ddim.step_nearest(pipe.schedule, steps, frac)


def _write_json(path: Path, obj) -> Path:
    import json

    from svdedit.runtime.files import atomic_write_bytes

    return atomic_write_bytes(path.with_suffix(".json"), (json.dumps(obj, indent=1) + "\n").encode())


def sweep(pipe, args) -> dict:
    from PIL import Image, ImageDraw

    i_x = _step(pipe, args.t_edit, args.steps)
    x = _trajectory(pipe, args.prompt, args.seed, args.steps, args.guidance, stop=i_x)[-1]
    U, S, Vh = channel_svd(x)
    channels = args.channels if args.channels is not None else list(range(S.shape[1]))
    bad = [i for i in args.index if not 0 <= i < S.shape[-1]] + [c for c in channels if not 0 <= c < S.shape[1]]
    if bad:
        raise SvdeditError(f"--index must be in 0..{S.shape[-1] - 1} and --channels in 0..{S.shape[1] - 1}; got {bad}.")
    latents = []
    for i in args.index:
        for f in args.factors:
            S2 = S.copy()
            S2[:, channels, i] *= np.float32(f)
            latents.append(reconstruct(U, S2, Vh))
    batch = np.concatenate(latents)
    with _non_finite_is_our_error():
        out = ddim.sample(pipe.eps_fn([args.prompt] * len(batch), args.guidance), batch, pipe.schedule, args.steps,
                          start=i_x)
    imgs = to_uint8(pipe.decode(out))
    h, w = imgs.shape[1:3]
    scale = max(1, 128 // h)
    cw, ch, left, top = w * scale, h * scale, 70, 22
    canvas = Image.new("RGB", (left + cw * len(args.factors), top + ch * len(args.index)), "white")
    d = ImageDraw.Draw(canvas)
    for c, f in enumerate(args.factors):
        d.text((left + c * cw + 4, 5), f"x{f:g}", fill="black")
    for r, i in enumerate(args.index):
        d.text((4, top + r * ch + ch // 2 - 6), f"sigma_{i}", fill="black")
        for c in range(len(args.factors)):
            img = Image.fromarray(imgs[r * len(args.factors) + c]).resize((cw, ch), Image.NEAREST)
            canvas.paste(img, (left + c * cw, top + r * ch))
    out_path = Path(args.output)
    canvas.save(out_path)
    info = {"output": str(out_path), "timestep": int(ddim.timesteps(pipe.schedule, args.steps)[i_x]),
            "index": args.index, "channels": channels, "factors": args.factors,
            "sigma": S[0][:, args.index].round(4).tolist()}
    _write_json(out_path, info)
    return info


def _heatmap(matrix: np.ndarray, labels: list[int], path: Path, title: str) -> None:
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
    canvas.save(path)


def subspace(pipe, args) -> dict:
    xs = _trajectory(pipe, args.prompt, args.seed, args.steps, args.guidance)[:-1]  # noisy levels only
    ts = [int(t) for t in ddim.timesteps(pipe.schedule, args.steps)]
    bases = [channel_svd(x)[0][0][..., : args.k] for x in xs]  # (C, h, k) per step
    n = len(bases)
    dist = np.zeros((n, n), np.float32)
    for i in range(n):
        A = np.broadcast_to(bases[i], (n, *bases[i].shape))
        dist[i] = subspace_distance(A, np.stack(bases)).mean(axis=1)
    out_path = Path(args.output)
    _heatmap(dist, ts, out_path, f"Grassmann distance of top-{args.k} subspaces (mean over channels)")
    adjacent = [float(dist[i, i + 1]) for i in range(n - 1)]
    info = {"output": str(out_path), "k": args.k, "timesteps": ts, "distance": dist.round(4).tolist(),
            "adjacent_mean": float(np.mean(adjacent)), "max_possible": float(np.sqrt(args.k) * np.pi / 2)}
    _write_json(out_path, info)
    return {k: v for k, v in info.items() if k != "distance"}


def rank(pipe, args) -> dict:
    from PIL import Image, ImageDraw

    xs = _trajectory(pipe, args.prompt, args.seed, args.steps, args.guidance)
    zs = _trajectory(pipe, args.target_prompt, args.seed, args.steps, args.guidance)
    i_ref = _step(pipe, args.t_ref, args.steps)
    direction = channel_svd(zs[i_ref] - xs[i_ref])[0][0][..., 0]  # (C, h): top left singular vector per channel
    ts = [int(t) for t in ddim.timesteps(pipe.schedule, args.steps)]
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
    out_path = Path(args.output)
    canvas.save(out_path)
    info = {"output": str(out_path), "t_ref": ts[i_ref], "timesteps": ts, "rank_per_channel": ranks.T.tolist()}
    _write_json(out_path, info)
    return {"output": str(out_path), "t_ref": ts[i_ref], "rank_at_first_step": ranks[0].tolist(),
            "rank_at_last_step": ranks[-1].tolist()}
