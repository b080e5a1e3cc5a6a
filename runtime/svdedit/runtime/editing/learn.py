"""Learning an attribute through the engines (AVI training), top to bottom:

    1. encode the source and target prompts; sample both from the seed's noise down to T_x (x) and T_x + dtau
       (z), in one batch (Editor.sample_pair: the same steps an edit takes);
    2. decompose x and z channel-wise and fit the MLP that predicts the edited singular values (avi.train:
       four losses, analytic gradients, Adam; NumPy or CuPy);
    3. calibrate the strength scale: edit the learning pair from a few other seeds at a grid of alphas and
       invert the measured progress, so that equal steps of strength move the image by equal steps (`calibrate`);
    4. the Attribute: the MLP's weights, the prompts, the knobs, the engine's identity, the scale.

    attr = learn(Editor(pipe), "a large red circle in the middle", "a large blue circle in the middle")
    attr.save("red_to_blue.safetensors")

Applying it is edit.py's story; the file format and the MLP are avi.py's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from svdedit.runtime.editing import avi
from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.editing.edit import Editor, Recipe
from svdedit.runtime.editing.knobs import Knobs

#: the width (in alpha) of the smoothing of the calibration curve: measured on the four attributes of the embedded
#: model (benchmarks/results/edit_quality.md, strength): 0 left size and position with steps of 0.32 and 0.40,
#: 0.075 brought them to 0.24 and 0.26 (colour 0.23 either way), 0.1 made position worse again (0.36)
CALIBRATION_SMOOTHING = 0.075


def learn(editor: Editor, source: str, target: str, seed: int = 0, knobs: Knobs = Knobs(),
          progress: Callable[[int, int, dict], None] | None = None) -> Attribute:
    """Learn the attribute source -> target from the one pair sampled from `seed` (runtime/svdedit/runtime/editing/avi.py)."""
    knobs = knobs.check()
    e = editor.pipe.encode_prompt([source, target])
    x, z = editor.sample_pair(editor.pipe.noise(seed), e[:1], e[1:], knobs)
    pair = avi.decompose(x, z, knobs.k, knobs.tail)
    params, losses = avi.train(pair, knobs, seed=seed, progress=progress)
    params = {n: np.asarray(v.get() if hasattr(v, "get") else v, np.float32) for n, v in params.items()}
    attr = Attribute(params, source, target, knobs, editor.engine_hash, tuple(x.shape[1:]), seed,
                     {n: round(float(v), 6) for n, v in losses.items()}, adapters=tuple(editor.pipe.manifest.adapters))
    return dataclasses.replace(attr, strength_map=calibrate(editor, attr)) if knobs.calibration_seeds else attr


def calibrate(editor: Editor, attr: Attribute, grid: int = 17, batch: int = 16, smooth: float = CALIBRATION_SMOOTHING) -> tuple:
    """The strength scale of `attr`: (strength, alpha) pairs such that equal steps of strength move the image
    by equal steps towards the full edit, measured on the learning pair itself.

    The learning pair is edited from knobs.calibration_seeds other seeds at `grid` alphas from 0 to 1; the
    progress of each image is its projection onto the full change, (I(a) - I(0)) . (I(1) - I(0)) / |I(1) -
    I(0)|^2, in pixels; the median over the seeds, smoothed over alpha (a Gaussian of width `smooth`: an image
    switches at a threshold of its own, which the learning pair's few seeds place too narrowly), made
    monotone, is inverted. No reader of the image's content is used: it works for any model. () when the
    edit does not move the image measurably."""
    knobs = attr.knobs
    n = knobs.calibration_seeds
    alphas = np.linspace(0.0, 1.0, grid)
    e = editor.pipe.encode_prompt([attr.source] * n + [attr.target] * n)
    x, z = editor.sample_pair(np.concatenate([editor.pipe.noise(attr.seed + 1 + i) for i in range(n)]), e[:n], e[n:],
                            knobs)
    raw = dataclasses.replace(attr, strength_map=())
    per_chunk = max(1, batch // n)
    images = []
    for c0 in range(0, grid, per_chunk):
        chunk = alphas[c0:c0 + per_chunk]
        recipes = [Recipe((raw,), float(a)) for a in chunk for _ in range(n)]
        tile = len(chunk)
        lat, _ = editor.edit_latents(recipes, np.tile(x, (tile, 1, 1, 1)), np.tile(z, (tile, 1, 1, 1)),
                                   np.tile(e[:n], (tile, 1, 1)), np.tile(e[n:], (tile, 1, 1)), knobs)
        images.append(editor.pipe.decode(lat).reshape(tile, n, -1))
    images = np.concatenate(images).astype(np.float64)                           # (grid, n, pixels)
    full = images[-1] - images[0]
    norm = (full * full).sum(-1)
    if np.median(np.sqrt(norm / full.shape[-1])) < 1e-3:
        return ()
    progress = ((images - images[0]) * full).sum(-1) / np.maximum(norm, 1e-12)   # (grid, n)
    curve = np.clip(np.median(progress, axis=1), 0.0, 1.0)
    if smooth > 0:
        weights = np.exp(-0.5 * ((alphas[:, None] - alphas[None, :]) / smooth) ** 2)
        curve = (weights * curve[None, :]).sum(1) / weights.sum(1)
    curve = np.maximum.accumulate(curve)
    curve = (curve - curve[0]) / max(curve[-1] - curve[0], 1e-9)
    strengths = np.linspace(0.0, 1.0, grid)
    inverse = np.interp(strengths, curve + np.arange(grid) * 1e-9, alphas)  # strictly increasing for interp
    return tuple((round(float(s), 4), round(float(a), 4)) for s, a in zip(strengths, inverse))
