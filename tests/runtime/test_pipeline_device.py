"""Where the pipeline keeps the latents during a DDIM run (runtime/svdedit/runtime/pipeline.py): on the host on a CPU,
on the GPU where the UNet runs there (CuPy arrays from step to step); the text conditioning made once per run. The
GPU half: tests/runtime/test_device_path.py."""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.pipeline import Pipeline
from tests.conftest import HAS_GPU, requires_torch

pytestmark = requires_torch  # the engine fixtures are exported with torch


def test_the_conditioning_is_made_once_per_run_not_per_step(engine_dirs, monkeypatch):
    """The UNet's text inputs are made from the embeddings once for a run (and moved to the device then), not at each
    of its steps; a new run with new embeddings makes them again."""
    with Pipeline(engine_dirs["sd1"], provider="cpu") as pipe:
        assert pipe.xp is np
        made = []
        unet_inputs = pipe.conditioning.unet_inputs
        monkeypatch.setattr(pipe.conditioning, "unet_inputs", lambda x, c: made.append(c.shape) or unet_inputs(x, c))
        x = pipe.noise(0)
        first = pipe.generate("a red circle", steps=4, guidance=3.0, init_noise=x)
        assert made == [(2, 77, pipe.manifest.text.hidden_size)]      # [uncond, cond], once for 4 steps
        trajectory = pipe.invert(first, "a red circle", steps=4)
        assert len(made) == 2 and len(trajectory) == 5 and trajectory[0] is first
        assert all(type(z) is np.ndarray for z in trajectory)
        other = pipe.generate("a blue square", steps=4, guidance=3.0, init_noise=x)
        assert len(made) == 3 and np.abs(other - first).max() > 1e-3
        # the same run again gives the same latents: nothing made for one run leaks into the next
        np.testing.assert_array_equal(pipe.generate("a red circle", steps=4, guidance=3.0, init_noise=x), first)


@pytest.mark.skipif(HAS_GPU, reason="on a machine with a GPU, latents on the device can be had")
def test_latents_on_the_device_without_a_gpu_is_a_clear_error(engine_dirs):
    pipe = Pipeline(engine_dirs["sd1"], provider="cpu", latents_on_device=True)
    with pytest.raises(SvdeditError, match=r"CuPy is not installed or sees no GPU.*svdedit\[gpu\]"):
        pipe.__enter__()
    assert not any(runner.is_active for runner in pipe.engines.values())   # the runners it opened are closed again
    with Pipeline(engine_dirs["sd1"], provider="cpu", latents_on_device=None) as pipe:
        assert pipe.xp is np   # auto: the UNet runs on the CPU
