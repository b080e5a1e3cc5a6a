"""The device path on a GPU (issue 31): CuPy feeds through the onnxruntime runner, the CUDA provider's CUDA graphs,
and the pipeline keeping its latents on the GPU, each against the host path's numbers.

On the embedded model's engine dir (`svdedit:shapes`, which `make dist` puts in the package), not on the exported
fixtures: the GPU machine this project borrows has no diffusers to export them (benchmarks/gpu_programme.sh runs this
module there). Without a GPU every test here skips.
"""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.runtime.engines.check import example_feeds

from tests.conftest import requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]


@pytest.fixture(scope="module")
def packaged():
    from svdedit.runtime.engines import read_manifest
    from svdedit.runtime.engines.names import resolve_engine
    from svdedit.runtime.errors import EngineDirError

    try:
        engine = resolve_engine("svdedit:shapes")
    except EngineDirError as exc:
        pytest.skip(f"no built-in engine dir ({exc}); `make dist` exports it")
    return engine, read_manifest(engine)


def test_cupy_latents_stay_on_the_device_and_match_numpy(packaged):
    """CuPy feeds give CuPy outputs (on the CPU provider through host copies, on CUDA bound where they lie), equal to
    the NumPy call within float32 rounding."""
    import cupy

    from svdedit.runtime.engines import OrtRunner

    d, m = packaged
    feeds = example_feeds(m, "unet", 2)
    with OrtRunner(d, "unet", m, "auto") as runner:
        host = runner(**feeds)["model_output"]
        out = runner(**{n: cupy.asarray(a) for n, a in feeds.items()})["model_output"]
        assert isinstance(out, cupy.ndarray) and out.shape == host.shape
        np.testing.assert_allclose(cupy.asnumpy(out), host, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="needs onnxruntime-gpu with its CUDA provider")
def test_cuda_graphs_on_the_cuda_provider_match_the_cpu(packaged):
    """On the CUDA provider the graphs are captured and replayed: NumPy and CuPy feeds give the CPU's outputs within
    float32 rounding, call after call, at two batch sizes (two graphs)."""
    import cupy

    from svdedit.runtime.engines import OrtRunner

    d, m = packaged
    with OrtRunner(d, "unet", m, "cpu") as cpu, OrtRunner(d, "unet", m, "cuda", cuda_graphs=True) as gpu:
        for batch in (2, 1):
            feeds = example_feeds(m, "unet", batch)
            want = cpu(**feeds)["model_output"]
            for _ in range(4):   # onnxruntime captures after its first runs, then replays
                np.testing.assert_allclose(gpu(**feeds)["model_output"], want, rtol=1e-3, atol=1e-4)
                out = gpu(**{n: cupy.asarray(a) for n, a in feeds.items()})["model_output"]
                np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-3, atol=1e-4)
        assert [slot.graph_id for slot in gpu.graphs.values()] == [1, 2]


def test_latents_kept_on_the_gpu_give_the_host_path_latents(packaged, monkeypatch):
    """With the latents on the device every UNet call gets CuPy arrays (through onnxruntime's CPU build: copied; on
    the CUDA provider: bound where they lie), and generation and inversion give the host path's latents, as NumPy
    arrays, within float32 rounding."""
    import cupy

    from svdedit.runtime.pipeline import Pipeline, to_host

    d, _ = packaged
    with Pipeline(d, provider="auto", latents_on_device=False) as host, \
            Pipeline(d, provider="auto", latents_on_device=True) as device:
        assert host.xp is np and device.xp is cupy
        seen = []
        infer = device.engines["unet"].infer
        monkeypatch.setattr(device.engines["unet"], "infer", lambda feeds: seen.append(
            {type(a).__module__.split(".")[0] for a in feeds.values()}) or infer(feeds))
        x = host.noise(0)
        want = host.generate("a large red circle on the left", steps=4, guidance=3.0, init_noise=x)
        got = device.generate("a large red circle on the left", steps=4, guidance=3.0, init_noise=x)
        assert type(got) is np.ndarray and seen == [{"cupy"}] * 4
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        for a, b in zip(host.invert(want, "a large red circle on the left", steps=4),
                        device.invert(want, "a large red circle on the left", steps=4)):
            assert type(b) is np.ndarray
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
        assert to_host(cupy.arange(3)).tolist() == [0, 1, 2]
