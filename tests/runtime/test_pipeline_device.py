"""Where the pipeline keeps the latents during a DDIM run (runtime/svdedit/runtime/pipeline.py): on the host on a CPU,
on the GPU where the UNet runs there (CuPy arrays from step to step); the text conditioning made once per run."""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.pipeline import Pipeline, to_host
from tests.conftest import HAS_GPU, requires_gpu, requires_torch

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
    with pytest.raises(SvdeditError, match=r"CuPy is not installed or sees no GPU.*svdedit\[gpu\]"):
        Pipeline(engine_dirs["sd1"], provider="cpu", latents_on_device=True).__enter__()
    with Pipeline(engine_dirs["sd1"], provider="cpu", latents_on_device=None) as pipe:
        assert pipe.xp is np   # auto: the UNet runs on the CPU


@pytest.mark.gpu
@requires_gpu
def test_latents_kept_on_the_gpu_give_the_host_path_latents(engine_dirs, monkeypatch):
    """With the latents on the device every UNet call gets CuPy arrays (here through onnxruntime's CPU provider,
    which copies them; on the CUDA provider they are bound where they lie), and generation and inversion give the
    host path's latents, as NumPy arrays, within float32 rounding."""
    import cupy

    d = engine_dirs["sd1"]
    with Pipeline(d, provider="cpu") as host, Pipeline(d, provider="cpu", latents_on_device=True) as device:
        assert host.xp is np and device.xp is cupy
        seen = []
        infer = device.engines["unet"].infer
        monkeypatch.setattr(device.engines["unet"], "infer", lambda feeds: seen.append(
            {type(a).__module__.split(".")[0] for a in feeds.values()}) or infer(feeds))
        x = host.noise(0)
        want = host.generate("a red circle", steps=4, guidance=3.0, init_noise=x)
        got = device.generate("a red circle", steps=4, guidance=3.0, init_noise=x)
        assert type(got) is np.ndarray and seen == [{"cupy"}] * 4
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        for a, b in zip(host.invert(want, "a red circle", steps=4), device.invert(want, "a red circle", steps=4)):
            assert type(b) is np.ndarray
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
        assert to_host(cupy.arange(3)).tolist() == [0, 1, 2]
