"""`svdedit export --step-cache` (export/svdedit/export/step_cache.py) and step caching in the runtime (Pipeline.unet_fn)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from svdedit.runtime.errors import SvdeditError
from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch

#: make test-slow: the split export costs ~100 s of CI's 20 minutes (a CLI export of three UNet graphs); the refusal
#: of step caching without a split UNet stays in make test
pytestmark = requires_torch
split = pytest.mark.slow
PROMPT = "a large red circle on the left"


@pytest.fixture(scope="module")
def split_engine(tiny_pipelines, tmp_path_factory):
    out = tmp_path_factory.mktemp("step-cache") / "engine"
    proc = run_cli("export", tiny_pipelines["sd1"], "-o", out, "--step-cache")
    assert proc.returncode == 0, proc.stderr
    return out


@split
def test_the_split_unet_is_three_checked_graphs_and_no_whole_one(split_engine, engine_dirs):
    m = json.loads((split_engine / "manifest.json").read_text())
    assert set(m["networks"]) == {"text_encoder", "unet_in", "unet_deep", "unet_out", "vae_encoder", "vae_decoder"}
    assert not (split_engine / "unet.onnx").exists()
    for name in ("unet_in", "unet_deep", "unet_out"):
        assert m["networks"][name]["parity"]["passed"], name
    sc = m["step_cache"]
    assert sc["composed_parity"]["passed"] and sc["composed_parity"]["max_abs"] < 1e-4
    assert (sc["interval"], sc["invert_interval"]) == (2, 1) and m["options"]["step_cache"] is True
    # the weights are split, not copied: the three graphs together are the size of the whole UNet
    sizes = {n: (split_engine / f"{n}.onnx").stat().st_size for n in ("unet_in", "unet_deep", "unet_out")}
    assert sum(sizes.values()) < 1.05 * (engine_dirs["sd1"] / "unet.onnx").stat().st_size
    proc = run_cli("check", split_engine)
    assert proc.returncode == 0, proc.stderr
    assert {r["network"] for r in map(json.loads, proc.stdout.strip().splitlines()) if "network" in r} >= \
        {"unet_in", "unet_deep", "unet_out"}


@split
def test_interval_1_is_the_whole_unet_and_larger_intervals_skip_the_deep_branch(split_engine, engine_dirs):
    from svdedit.runtime.pipeline import Intervals, Pipeline

    with Pipeline(engine_dirs["sd1"]) as whole:
        ref = whole.generate(PROMPT, seed=3, steps=12, guidance=3.0)
    with Pipeline(split_engine, intervals=Intervals(1, 1)) as pipe:
        exact = pipe.generate(PROMPT, seed=3, steps=12, guidance=3.0)
        assert np.abs(exact - ref).max() < 1e-4                   # a full step = the whole UNet
        calls = {"deep": 0}
        deep = pipe.engines["unet_deep"]

        def counted(**feeds):
            calls["deep"] += 1
            return deep(**feeds)
        pipe.engines["unet_deep"] = counted
        for interval, deep_calls in ((1, 12), (2, 6), (3, 4), (5, 3)):
            calls["deep"] = 0
            with pipe.using(Intervals(interval, 1)):
                x = pipe.generate(PROMPT, seed=3, steps=12, guidance=3.0)
            assert calls["deep"] == deep_calls, interval
            assert np.all(np.isfinite(x))
            assert (np.abs(x - exact).max() > 0) == (interval > 1)
        calls["deep"] = 0
        with pipe.using(Intervals(1, 4)):                            # the inversion has its own interval
            pipe.invert(exact, PROMPT, steps=12)
        assert calls["deep"] == 3
        pipe.engines["unet_deep"] = deep
    with Pipeline(split_engine) as pipe:
        assert pipe.intervals == Intervals(2, 1)                   # the engine's own default


def test_step_caching_needs_a_split_unet_and_says_so(engine_dirs, tmp_path):
    from svdedit.runtime.pipeline import Intervals, Pipeline

    with pytest.raises(SvdeditError, match="exported without step caching"):
        Pipeline(engine_dirs["sd1"], intervals=Intervals(2, 1))
    with pytest.raises(SvdeditError, match="whole number from 1 to 1000"):
        Pipeline(engine_dirs["sd1"], intervals=Intervals(0, 1))
    proc = run_cli("generate", "--engine", engine_dirs["sd1"], "--prompt", PROMPT, "--steps", "4",
                   "--cache-interval", "2", "-o", tmp_path / "x.png")
    assert_clear_error(proc, "generate", "export the model again with step caching")


@split
def test_a_manifest_must_hold_one_unet_whole_or_split(split_engine, engine_dirs, tmp_path):
    import shutil

    from svdedit.runtime.engines.manifest import read_manifest
    from svdedit.runtime.errors import EngineDirError

    split = read_manifest(split_engine).to_dict()
    whole = read_manifest(engine_dirs["sd1"]).to_dict()
    both = {**split, "networks": {**split["networks"], "unet": whole["networks"]["unet"]}}
    partial = {**split, "networks": {k: v for k, v in split["networks"].items() if k != "unet_deep"}}
    stray = {**whole, "step_cache": split["step_cache"]}
    bad_type = {**split, "step_cache": {**split["step_cache"], "interval": "2"}}
    for i, (bad, phrase) in enumerate(((both, "either 'unet' or all of"), (partial, "either 'unet' or all of"),
                                       (stray, "step_cache is set but the UNet is not split"),
                                       (bad_type, "step_cache.interval should be a whole number"))):
        folder = tmp_path / str(i)
        shutil.copytree(split_engine, folder)
        shutil.copy(engine_dirs["sd1"] / "unet.onnx", folder / "unet.onnx")
        (folder / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(EngineDirError, match=phrase):
            read_manifest(folder, verify="none")
