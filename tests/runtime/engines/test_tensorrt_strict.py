"""The TensorRT runner (runtime/svdedit/runtime/engines/tensorrt.py) driven through a strict stand-in for TensorRT 11
and CuPy (tests/fixtures/strict_tensorrt.py): None from deserialize_cuda_engine or create_execution_context, the
outputs' dtypes as the plan reports them, and one execution context per captured CUDA graph. The stand-in's plan
writes 2 x its first input into each output."""

from __future__ import annotations

import numpy as np
import pytest

from svdedit.export.build import BuildOptions, build_plans
from svdedit.runtime.engines.check import example_feeds
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.engines.tensorrt import TensorrtRunner
from svdedit.runtime.errors import TensorrtError
from tests.conftest import requires_torch
from tests.fixtures.strict_tensorrt import install

pytestmark = requires_torch  # the engine fixture exports models/shapes


@pytest.fixture
def engine(shapes_engine_plain, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return shapes_engine_plain


@pytest.mark.parametrize("dtype, want", [("FLOAT", np.float32), ("HALF", np.float16), ("BF16", np.float32)])
def test_outputs_take_the_dtype_the_plan_reports(engine, monkeypatch, dtype, want):
    install(monkeypatch, output_dtype=dtype)
    build_plans(engine, BuildOptions())
    m = read_manifest(engine)
    feeds = example_feeds(m, "unet", 2)
    with TensorrtRunner(engine, "unet", m) as unet:
        out = unet(**feeds)["model_output"]
    assert out.dtype == want
    rel = np.abs(out.astype(np.float32) - 2 * feeds["sample"]).max() / np.abs(2 * feeds["sample"]).max()
    assert rel < {"FLOAT": 1e-7, "HALF": 1e-3, "BF16": 1e-2}[dtype]   # bf16 widened from its top 16 bits


def test_a_plan_tensorrt_cannot_load_names_the_plan_and_the_fix(engine, monkeypatch):
    install(monkeypatch)
    build_plans(engine, BuildOptions())
    install(monkeypatch, fail_deserialize=True)
    with pytest.raises(TensorrtError, match=r"could not load the plan .*unet\.plan.*svdedit build"):
        TensorrtRunner(engine, "unet", read_manifest(engine)).activate()


def test_no_execution_context_is_a_clear_error(engine, monkeypatch):
    install(monkeypatch)
    build_plans(engine, BuildOptions())
    install(monkeypatch, fail_context=True)
    with pytest.raises(TensorrtError, match="could not create an execution context.*GPU memory"):
        TensorrtRunner(engine, "unet", read_manifest(engine)).activate()


def test_each_cuda_graph_has_its_own_context(engine, monkeypatch):
    install(monkeypatch)
    build_plans(engine, BuildOptions(static=True, max_batch=2))   # static plans run through CUDA graphs
    m = read_manifest(engine)
    one, two = example_feeds(m, "unet", 1, seed=1), example_feeds(m, "unet", 2, seed=2)
    _, seen = install(monkeypatch)
    with TensorrtRunner(engine, "unet", m) as unet:
        assert unet.cuda_graphs
        a = unet(**one)["model_output"]
        b = unet(**two)["model_output"]      # a second graph, captured after the first
        again = unet(**one)["model_output"]  # the first graph again: its context was not rebound
    contexts = [c for c in seen.calls if c[0] == "context"]
    assert len(contexts) == len(unet.profiles) + 2          # one per profile, and one per captured graph
    np.testing.assert_array_equal(a, 2 * one["sample"])
    np.testing.assert_array_equal(b, 2 * two["sample"])
    np.testing.assert_array_equal(again, a)


def test_the_stand_in_catches_a_graph_whose_context_was_rebound(engine, monkeypatch):
    """The stand-in's own check, without which the test above could not fail: one context, two captures."""
    install(monkeypatch)
    build_plans(engine, BuildOptions(static=True, max_batch=2))
    m = read_manifest(engine)
    with TensorrtRunner(engine, "unet", m) as unet:
        monkeypatch.setattr(unet, "_context", lambda i: unet.contexts[i])   # the old way: the profile's context
        unet(**example_feeds(m, "unet", 1))
        unet(**example_feeds(m, "unet", 2))
        with pytest.raises(RuntimeError, match="after its execution context was rebound"):
            unet(**example_feeds(m, "unet", 1))
