"""DDIM sampling and inversion as pure functions over arrays (NumPy or CuPy).

The sampler sees the model only through ``eps_fn(x, t) -> model_output`` (epsilon or v, as the
schedule's prediction type says); engines, text embeddings and guidance are closed over by the
caller. One ``ddim_step`` serves both directions: sampling walks the alphas from noise to data,
inversion walks the same update the other way (Song et al. 2021, DDIM, eq. 12 with eta = 0):

    x0_pred = (x_t - sqrt(1 - alpha_t) * eps) / sqrt(alpha_t)
    x_next  = sqrt(alpha_next) * x0_pred + sqrt(1 - alpha_next) * eps

Timesteps and the alphas at each end follow diffusers' DDIMScheduler / DDIMInverseScheduler
exactly ("leading", "trailing" and "linspace" spacing, steps_offset, set_alpha_to_one), so the same
engine and the same initial noise give the same latents as a diffusers pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from svdedit.runtime.errors import EngineDirError, SvdeditError

PREDICTION_TYPES = ("epsilon", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: np.ndarray  # float32, (num_train_timesteps,), as diffusers computes it
    prediction_type: str
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def alpha_at_zero(self) -> float:
        """The alpha 'before' the first training step: 1 if set_alpha_to_one, else alphas_cumprod[0]."""
        return 1.0 if self.set_alpha_to_one else float(self.alphas_cumprod[0])

    @classmethod
    def from_json(cls, path: str | Path) -> "Schedule":
        """schedule.json, checked: a non-empty, finite, decreasing alphas_cumprod in (0, 1]; known prediction type
        and spacing; steps_offset a whole number below the schedule's length. EngineDirError naming the field."""
        from svdedit.runtime.engines.manifest import read_json

        s = read_json(Path(path), "a schedule")

        def bad(field: str, why: str):
            raise EngineDirError(f"{path} is corrupt: {field} {why}. Re-create the engine dir with "
                                 f"`svdedit export MODEL -o DIR --force`.")
        if not isinstance(s, dict):
            bad("the file", "is not a JSON object")
        for key, kind in (("alphas_cumprod", list), ("prediction_type", str), ("timestep_spacing", str),
                          ("steps_offset", int), ("set_alpha_to_one", bool)):
            if key not in s:
                bad(key, "is missing")
            if not isinstance(s[key], kind) or (kind is int and isinstance(s[key], bool)):
                bad(key, f"is {json.dumps(s[key])[:40]}, not {kind.__name__}")
        values = s["alphas_cumprod"]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            bad("alphas_cumprod", "is empty or holds something other than numbers")
        alphas = np.asarray(values, dtype=np.float64)
        if not (np.all(np.isfinite(alphas)) and np.all((alphas > 0) & (alphas <= 1)) and np.all(np.diff(alphas) <= 0)):
            bad("alphas_cumprod", "is not a decreasing sequence of numbers in (0, 1]")
        if s["prediction_type"] not in PREDICTION_TYPES or s["timestep_spacing"] not in SPACINGS:
            raise EngineDirError(f"{path}: prediction type {s['prediction_type']!r} / spacing {s['timestep_spacing']!r} "
                                 f"is not supported (supported: {PREDICTION_TYPES}, {SPACINGS}).")
        if not 0 <= s["steps_offset"] < len(alphas):
            bad("steps_offset", f"{s['steps_offset']} is not between 0 and {len(alphas) - 1}")
        return cls(alphas.astype(np.float32), s["prediction_type"], s["timestep_spacing"], s["steps_offset"],
                   s["set_alpha_to_one"])


def timesteps(schedule: Schedule, num_steps: int) -> np.ndarray:
    """The sampling timesteps, from the noisiest down (DDIMScheduler.set_timesteps)."""
    T = schedule.num_train_timesteps
    if not 1 <= num_steps <= T:
        raise SvdeditError(f"steps must be between 1 and {T}, not {num_steps}.")
    if schedule.timestep_spacing == "leading":
        ts = (np.arange(0, num_steps) * (T // num_steps)).round()[::-1].astype(np.int64) + schedule.steps_offset
    elif schedule.timestep_spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, T - 1, num_steps).round()[::-1].astype(np.int64)
    if ts[0] >= T:  # leading spacing's offset pushes the noisiest step past the schedule (1000 steps, offset 1)
        most = max(n for n in range(1, num_steps) if (n - 1) * (T // n) + schedule.steps_offset < T)
        raise SvdeditError(f"{num_steps} steps would start at timestep {ts[0]}, past this schedule's last ({T - 1}: "
                           f"leading spacing with steps_offset {schedule.steps_offset}); take at most {most} steps.")
    return ts


def step_nearest(schedule: Schedule, num_steps: int, fraction: float) -> int:
    """Index of the sampling step whose timestep is nearest `fraction` of the training timesteps."""
    return int(np.argmin(np.abs(timesteps(schedule, num_steps) - fraction * schedule.num_train_timesteps)))


def _alpha(schedule: Schedule, t: int) -> float:
    return float(schedule.alphas_cumprod[t]) if t >= 0 else schedule.alpha_at_zero


def ddim_step(x, model_output, alpha_t: float, alpha_next: float, prediction_type: str):
    """Move x from the noise level alpha_t to alpha_next (either direction). Returns (x_next, x0_pred)."""
    sa, sb = np.float32(alpha_t**0.5), np.float32((1 - alpha_t) ** 0.5)
    if prediction_type == "epsilon":
        eps = model_output
        x0_pred = (x - sb * eps) / sa
    else:  # v-prediction (Salimans & Ho 2022): v = sqrt(a) eps - sqrt(1 - a) x0
        x0_pred = sa * x - sb * model_output
        eps = sa * model_output + sb * x
    x_next = np.float32(alpha_next**0.5) * x0_pred + np.float32((1 - alpha_next) ** 0.5) * eps
    return x_next, x0_pred


EpsFn = Callable[[object, int], object]
Callback = Callable[[int, int, object], None]  # (step index, timestep, latent after the step)


def sample(eps_fn: EpsFn, x, schedule: Schedule, num_steps: int, start: int = 0, stop: int | None = None,
           callback: Callback | None = None):
    """Denoise x with DDIM from step index `start` (x is at timesteps[start]'s noise level) up to `stop`."""
    ts = timesteps(schedule, num_steps)
    ratio = schedule.num_train_timesteps // num_steps
    for i in range(start, num_steps if stop is None else stop):
        t = int(ts[i])
        x, _ = ddim_step(x, eps_fn(x, t), _alpha(schedule, t), _alpha(schedule, t - ratio), schedule.prediction_type)
        if callback is not None:
            callback(i, t, x)
    return x


def invert(eps_fn: EpsFn, x0, schedule: Schedule, num_steps: int, callback: Callback | None = None) -> list:
    """DDIM inversion (DDIMInverseScheduler): the trajectory [x at alpha_0, x_{t_1}, ..., x_{t_N}].

    Element k is the latent at the noise level of the sampling step `num_steps - k`, so resuming
    sampling from trajectory[k] means ``sample(..., start=num_steps - k)``.
    """
    ts = timesteps(schedule, num_steps)[::-1]  # ascending
    ratio = schedule.num_train_timesteps // num_steps
    T = schedule.num_train_timesteps
    trajectory = [x0]
    x = x0
    for i, t in enumerate(ts):
        t = int(t)
        t_from = min(t - ratio, T - 1)
        x, _ = ddim_step(x, eps_fn(x, t), _alpha(schedule, t_from), _alpha(schedule, t), schedule.prediction_type)
        trajectory.append(x)
        if callback is not None:
            callback(i, t, x)
    return trajectory
