"""runtime/svdedit/runtime/ddim.py against diffusers' DDIMScheduler / DDIMInverseScheduler (the oracle).

The model is replaced by a fixed smooth function of (x, t), so these tests isolate the sampler:
timesteps, alphas at both ends, the DDIM update for epsilon and v-prediction, in both directions.
"""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.runtime.ddim import Schedule, invert, sample, timesteps
from svdedit.runtime.errors import SvdeditError
from tests.conftest import requires_torch

pytestmark = requires_torch

CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def fake_model(x, t):
    return np.float32(0.3) * np.tanh(x) + np.float32(np.sin(t / 97.0))


def _pair(prediction_type, spacing, set_alpha_to_one=False):
    from diffusers import DDIMScheduler

    cfg = {**CONFIG, "prediction_type": prediction_type, "timestep_spacing": spacing, "set_alpha_to_one": set_alpha_to_one}
    if spacing == "trailing":
        cfg["steps_offset"] = 0
    ref = DDIMScheduler(**cfg)
    ours = Schedule(ref.alphas_cumprod.numpy(), prediction_type, spacing, cfg["steps_offset"], set_alpha_to_one)
    return ref, ours


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 50, 333])
def test_timesteps_match_diffusers(spacing, steps):
    ref, ours = _pair("epsilon", spacing)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(timesteps(ours, steps), ref.timesteps.numpy())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing, set_alpha_to_one", [("leading", False), ("trailing", True), ("leading", True)])
def test_sampling_matches_ddim_scheduler(prediction_type, spacing, set_alpha_to_one):
    import torch

    ref, ours = _pair(prediction_type, spacing, set_alpha_to_one)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    ref.set_timesteps(10)
    xt = torch.from_numpy(x)
    for t in ref.timesteps:
        xt = ref.step(torch.from_numpy(fake_model(xt.numpy(), int(t))), t, xt).prev_sample
    got = sample(fake_model, x, ours, 10)
    np.testing.assert_allclose(got, xt.numpy(), atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_matches_ddim_inverse_scheduler(prediction_type):
    import torch
    from diffusers import DDIMInverseScheduler

    ref_fwd, ours = _pair(prediction_type, "leading")
    ref = DDIMInverseScheduler.from_config(ref_fwd.config)
    x0 = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    ref.set_timesteps(10)
    xt = torch.from_numpy(x0)
    want = [x0]
    for t in ref.timesteps:
        xt = ref.step(torch.from_numpy(fake_model(xt.numpy(), int(t))), t, xt).prev_sample
        want.append(xt.numpy())
    got = invert(fake_model, x0, ours, 10)
    assert len(got) == 11
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_resuming_from_an_inverted_step_uses_the_matching_timestep():
    _, ours = _pair("epsilon", "leading")
    x0 = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    traj = invert(fake_model, x0, ours, 10)
    seen = []
    sample(lambda x, t: (seen.append(t), fake_model(x, t))[1], traj[4], ours, 10, start=10 - 4)
    assert seen[0] == timesteps(ours, 10)[6] and len(seen) == 4


def test_bad_step_counts_are_refused():
    _, ours = _pair("epsilon", "leading")
    with pytest.raises(SvdeditError, match="steps must be between 1 and 1000"):
        timesteps(ours, 0)


@pytest.mark.parametrize("spacing, most", [("leading", 999), ("trailing", 1000), ("linspace", 1000)])
def test_the_most_steps_a_schedule_takes(spacing, most):
    """Leading spacing with steps_offset 1 would put 1000 steps' first timestep at 1000, past the schedule (an
    IndexError in the middle of sampling before): refused up front, naming how many steps it takes."""
    ref, ours = _pair("epsilon", spacing)
    ts = timesteps(ours, most)
    assert ts[0] <= 999 and ts[-1] >= 0
    if most < 1000:
        with pytest.raises(SvdeditError, match=f"take at most {most} steps"):
            timesteps(ours, most + 1)
    x = np.ones((1, 4, 2, 2), np.float32)
    assert np.isfinite(sample(fake_model, x, ours, most)).all()  # every step of the longest run is in the schedule
