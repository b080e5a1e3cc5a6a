"""The runners (runtime/svdedit/runtime/engines/base.py, onnxrt.py): the lifecycle, the contract checks of the base class, and
the Pipeline opening them all or none."""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.runtime.engines import OrtRunner, Runner, open_engines, read_manifest
from svdedit.runtime.engines.check import example_feeds
from svdedit.runtime.errors import EngineDirError, RunnerError, SvdeditError
from tests.conftest import requires_torch

pytestmark = requires_torch  # the engine fixtures are exported with torch


@pytest.fixture(scope="module")
def engine(engine_dirs):
    return engine_dirs["sd1"], read_manifest(engine_dirs["sd1"])


def test_lifecycle_activate_infer_deactivate(engine):
    d, m = engine
    runner = OrtRunner(d, "unet", m, "cpu")
    assert isinstance(runner, Runner) and not runner.is_active and runner.session is None
    with runner as active:
        assert active is runner and runner.is_active and runner.provider == "CPUExecutionProvider"
        out = runner(**example_feeds(m, "unet", 2))
        assert out["model_output"].shape == (2, 4, 8, 8)
        np.testing.assert_array_equal(runner.infer(example_feeds(m, "unet", 2))["model_output"], out["model_output"])
    assert not runner.is_active and runner.session is None
    runner.deactivate()  # deactivating an inactive runner is harmless (ExitStack unwinding may do it)


@pytest.mark.parametrize("io_binding", [None, True], ids=["session.run", "io-binding"])
def test_both_call_paths_give_the_outputs_of_a_plain_run_on_any_memory_layout(engine, monkeypatch, io_binding):
    """NumPy feeds go through session.run by default and through onnxruntime's IO binding (the path that keeps CuPy
    latents on the GPU) when asked: on the CPU each gives bit for bit what session.run gives, a strided view or a
    Fortran-ordered copy is read correctly, and the path taken is the one asked for."""
    d, m = engine
    feeds = example_feeds(m, "unet", 2)
    with OrtRunner(d, "unet", m, "cpu", io_binding=io_binding) as runner:
        plain = runner.session.run(["model_output"], feeds)[0]
        bindings = []
        io_binding_of = runner.session.io_binding
        monkeypatch.setattr(runner.session, "io_binding", lambda: bindings.append(1) or io_binding_of(), raising=False)
        bound = runner(**feeds)["model_output"]
        assert len(bindings) == (1 if io_binding else 0)
        assert type(bound) is np.ndarray and bound.flags.c_contiguous
        np.testing.assert_array_equal(bound, plain)
        wide = np.zeros((2, 4, 8, 16), np.float32)
        wide[..., ::2] = feeds["sample"]
        strided = dict(feeds, sample=wide[..., ::2], encoder_hidden_states=np.asfortranarray(
            feeds["encoder_hidden_states"]))
        np.testing.assert_array_equal(runner(**strided)["model_output"], plain)
        again = runner(**dict(feeds, sample=feeds["sample"] * 2))["model_output"]
        assert np.abs(again - plain).max() > 1e-3 and np.array_equal(runner(**feeds)["model_output"], plain)


def test_fixed_buffers_of_the_cuda_graph_path_give_the_outputs_of_a_plain_run(engine):
    """cuda_graphs: each input shape gets buffers that stay put (a captured graph reads and writes fixed addresses) and
    a graph id of its own; the feeds are copied in, and the outputs copied out, so that a result is not overwritten
    by the next call. On the CPU provider the same path runs without a graph, bit for bit as session.run; past
    MAX_GRAPHS shapes a call goes the plain way."""
    d, m = engine
    with OrtRunner(d, "unet", m, "cpu", cuda_graphs=True) as runner:
        runner.MAX_GRAPHS = 2
        results = {}
        for batch in (2, 1, 2):
            feeds = example_feeds(m, "unet", batch)
            results[batch] = runner(**feeds)["model_output"]
            np.testing.assert_array_equal(results[batch], runner.session.run(["model_output"], feeds)[0])
        assert [(dict(key)["sample"][0], slot.graph_id) for key, slot in runner.graphs.items()] == [(2, 1), (1, 2)]
        kept = results[2].copy()
        doubled = dict(example_feeds(m, "unet", 2), sample=example_feeds(m, "unet", 2)["sample"] * 2)
        assert np.abs(runner(**doubled)["model_output"] - kept).max() > 1e-3
        np.testing.assert_array_equal(results[2], kept)                     # not overwritten by the next call
        feeds = example_feeds(m, "unet", 3)                                 # a third shape: no graph, same numbers
        np.testing.assert_array_equal(runner(**feeds)["model_output"], runner.session.run(["model_output"], feeds)[0])
        assert len(runner.graphs) == 2
    assert runner.graphs == {}


def test_the_run_option_naming_a_cuda_graph_is_this_onnxruntimes(engine):
    """The run option that names a CUDA graph (gpu_graph_id) is a string of onnxruntime's own library (the CPU build
    carries it too); a near miss is not found. (enable_cuda_graph, the CUDA provider's option, is in its 277 MB
    provider library, which is not fetched here.)"""
    from pathlib import Path

    import onnxruntime

    from svdedit.runtime.engines.onnxrt import GRAPH_ID

    libraries = [p.read_bytes() for p in (Path(onnxruntime.__file__).parent / "capi").glob("*.so*")]
    assert any(GRAPH_ID.encode() + b"\0" in blob for blob in libraries)
    assert not any(b"gpu_graph_ids\0" in blob for blob in libraries)


def test_misuse_is_caught(engine):
    d, m = engine
    runner = OrtRunner(d, "unet", m, "cpu")
    with pytest.raises(RunnerError, match="not active.*with runner"):
        runner(**example_feeds(m, "unet", 2))
    with runner:
        with pytest.raises(RunnerError, match="already active"):
            runner.activate()
    with pytest.raises(SvdeditError, match="unknown network 'vae'"):
        OrtRunner(d, "vae", m)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("timestep"), "inputs .* given, the manifest declares"),
    (lambda f: f.update(extra=f["timestep"]), "inputs .* given, the manifest declares"),
    (lambda f: f.update(timestep=f["timestep"].astype(np.float64)), "'timestep' has dtype float64"),
    (lambda f: f.update(sample=f["sample"][0]), r"'sample' has shape \(4, 8, 8\)"),
    (lambda f: f.update(encoder_hidden_states=f["encoder_hidden_states"][..., :8]), "'encoder_hidden_states' has shape"),
    (lambda f: f.update(timestep=f["timestep"][:1]), "has batch = 1 but another input has 2"),
])
def test_every_call_is_checked_against_the_manifest(engine, change, message):
    d, m = engine
    feeds = example_feeds(m, "unet", 2)
    change(feeds)
    with OrtRunner(d, "unet", m, "cpu") as runner:
        with pytest.raises(EngineDirError, match=message):
            runner(**feeds)


def test_pipeline_opens_all_runners_or_none(engine, monkeypatch):
    from svdedit.runtime.pipeline import Pipeline

    d, _ = engine
    real = OrtRunner.activate
    opened = []

    def activate_or_fail(self):
        if self.network == "vae_encoder":
            raise EngineDirError("vae_encoder cannot be loaded")
        opened.append(real(self))
        return self

    monkeypatch.setattr(OrtRunner, "activate", activate_or_fail)
    pipe = Pipeline(d, "cpu")
    with pytest.raises(EngineDirError, match="vae_encoder"):
        pipe.__enter__()
    assert [r.network for r in opened] == ["text_encoder", "unet"]
    assert not any(r.is_active for r in pipe.engines.values()) and all(r.session is None for r in opened)


def test_open_engines_gives_one_inactive_runner_per_network(engine):
    d, m = engine
    runners = open_engines(d, m, "cpu")
    assert sorted(runners) == sorted(m.networks) and not any(r.is_active for r in runners.values())


#: onnxruntime's fallback banner (onnxruntime_inference_collection.py prints it when a provider's libraries do not
#: load under `auto`), and a native library writing to file descriptor 1: both at every session's creation
NOISY_ONNXRUNTIME = """
import os, sys
import onnxruntime as ort
Real = ort.InferenceSession
class Noisy(Real):
    def __init__(self, *args, **kwargs):
        print("*************** EP Error ***************")
        print("EP Error libnvinfer.so.10: cannot open shared object file when using ['TensorrtExecutionProvider']")
        os.write(1, b"native library says hello\\n")
        super().__init__(*args, **kwargs)
ort.InferenceSession = Noisy
from svdedit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["check", "generate"])
def test_what_providers_print_while_loading_goes_to_stderr(engine, tmp_path, command):
    import json
    import subprocess
    import sys

    d, _ = engine
    args = [d] if command == "check" else ["--engine", d, "--prompt", "a red circle", "--steps", "2",
                                           "-o", tmp_path / "x.png"]
    proc = subprocess.run([sys.executable, "-c", NOISY_ONNXRUNTIME, command, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "EP Error" in proc.stderr and "native library says hello" in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), proc.stdout
    assert len(lines) == (1 if command == "generate" else 4)
