"""What a damaged, hostile or mistaken manifest / schedule / graph does: a clear EngineDirError naming the file
and the field, never another exception, and nothing read from outside the engine dir (issue 18, items 1-3, 9).

The property-based tests (hypothesis, derandomized, at least 200 examples each) mutate a valid manifest and
schedule: a key deleted, a value of another type, NaN, huge or negative numbers, paths with `..`, deep nesting.
The loader either accepts the result or raises the project's own error.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import pytest
from hypothesis import given

from svdedit.runtime.ddim import Schedule
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.errors import EngineDirError, SvdeditError
from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch
from tests.fuzzing import FUZZ, mutate, mutations

pytestmark = requires_torch  # the engine fixtures are exported with torch


@pytest.fixture(scope="module")
def raw(engine_dirs):
    return json.loads((engine_dirs["sd1"] / "manifest.json").read_text())


def _with_manifest(engine_dirs, tmp_path, raw) -> os.PathLike:
    d = tmp_path / "e"
    if not d.exists():
        shutil.copytree(engine_dirs["sd1"], d)
    (d / "manifest.json").write_text(json.dumps(raw))
    return d


# ---- 1. nothing is read from outside the engine dir ----
@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink", "text-passwd"])
def test_files_outside_the_engine_dir_are_refused(engine_dirs, tmp_path, raw, where):
    from svdedit.runtime.files import sha256_file

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(engine_dirs["sd1"] / "unet.onnx", outside / "unet.onnx")
    m = copy.deepcopy(raw)
    d = _with_manifest(engine_dirs, tmp_path, m)
    if where == "absolute":
        m["networks"]["unet"]["file"] = str(outside / "unet.onnx")
    elif where == "dotdot":
        m["networks"]["unet"]["file"] = "../outside/unet.onnx"
    elif where == "symlink":
        (d / "unet.onnx").unlink()
        (d / "unet.onnx").symlink_to(outside / "unet.onnx")
    else:
        m["text"]["file"] = "../../../../../../etc/passwd"
    if where != "symlink":
        m["networks"]["unet"]["sha256"] = sha256_file(outside / "unet.onnx")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineDirError, match="not a plain relative file name|resolves outside the engine dir"):
        read_manifest(d)
    proc = run_cli("check", d)
    assert_clear_error(proc, "check", "outside" if where == "symlink" else "plain relative")
    assert "passwd" not in proc.stdout


# ---- 2. every field validated; every problem reported ----
@pytest.mark.parametrize("damage, phrase", [
    (lambda m: m["image_size"].update(default=0), "image_size needs 1 <= min <= default"),
    (lambda m: m["latent"].update(vae_scale_factor=0), "latent.vae_scale_factor 0 is not 1 to 64"),
    (lambda m: m["latent"].update(vae_scaling_factor=float("nan")), "vae_scaling_factor nan is not a positive number"),
    (lambda m: m["networks"].update(unet=None), "manifest.networks.unet should be an object"),
    (lambda m: m["networks"].update(unet=True), "manifest.networks.unet should be an object"),
    (lambda m: m["networks"]["unet"].update(file=5), "manifest.networks.unet.file should be a string"),
    (lambda m: m["networks"]["unet"].pop("inputs"), "manifest.networks.unet.inputs is missing"),
    (lambda m: m["networks"]["unet"].update(sha256="x"), 'networks.unet.file.s sha256 "x" is not 64 hex digits'),
    (lambda m: m["networks"]["unet"]["inputs"].reverse(), "networks.unet.inputs are"),
    (lambda m: m.update(family="sd3"), "family 'sd3' is not one of"),
    (lambda m: m.update(family="sdxl"), "an SDXL engine dir needs text_2"),
])
def test_a_manifest_out_of_range_is_named(engine_dirs, tmp_path, raw, damage, phrase):
    m = copy.deepcopy(raw)
    damage(m)
    d = _with_manifest(engine_dirs, tmp_path, m)
    with pytest.raises(EngineDirError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(d)
    assert_clear_error(run_cli("check", d), "check", "is corrupt")


def test_check_reports_every_problem_at_once(engine_dirs, tmp_path, raw):
    m = copy.deepcopy(raw)
    m.pop("latent")
    m["text"]["pad_id"] = "0"
    m["image_size"]["max"] = "big"
    d = _with_manifest(engine_dirs, tmp_path, m)
    proc = run_cli("check", d)
    assert_clear_error(proc, "check", "manifest.latent is missing", "manifest.text.pad_id", "manifest.image_size.max")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_deep_nesting_and_huge_json_are_corrupt_files(engine_dirs, tmp_path):
    d = _with_manifest(engine_dirs, tmp_path, {})
    (d / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    assert_clear_error(run_cli("check", d), "check", "manifest.json is corrupt")
    (d / "schedule.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(EngineDirError, match="nested too deep"):
        Schedule.from_json(d / "schedule.json")


@pytest.mark.parametrize("damage, phrase", [
    (lambda s: s.update(alphas_cumprod=[]), "alphas_cumprod is empty"),
    (lambda s: s.update(alphas_cumprod=[float("nan")] * 10), "not a decreasing sequence"),
    (lambda s: s.update(alphas_cumprod=list(reversed(s["alphas_cumprod"]))), "not a decreasing sequence"),
    (lambda s: s.update(steps_offset="1"), 'steps_offset is "1", not int'),
    (lambda s: s.pop("prediction_type"), "prediction_type is missing"),
    (lambda s: s.update(set_alpha_to_one=1), "set_alpha_to_one is 1, not bool"),
])
def test_a_damaged_schedule_is_named_not_blamed_on_steps(engine_dirs, tmp_path, damage, phrase):
    s = json.loads((engine_dirs["sd1"] / "schedule.json").read_text())
    damage(s)
    (tmp_path / "schedule.json").write_text(json.dumps(s))
    with pytest.raises(EngineDirError, match=phrase):
        Schedule.from_json(tmp_path / "schedule.json")


# ---- 3. a graph is compared with its contract when it is opened ----
def test_another_networks_graph_under_the_unets_name_is_refused_at_opening(engine_dirs, tmp_path, raw):
    from svdedit.runtime.files import sha256_file

    m = copy.deepcopy(raw)
    d = _with_manifest(engine_dirs, tmp_path, m)
    shutil.copy(d / "vae_decoder.onnx", d / "unet.onnx")
    m["networks"]["unet"]["sha256"] = sha256_file(d / "unet.onnx")
    (d / "manifest.json").write_text(json.dumps(m))
    assert_clear_error(run_cli("check", d), "check", "unet.onnx is not the unet the manifest describes", "latent")
    proc = run_cli("generate", "--engine", d, "--prompt", "x", "--steps", 2, "-o", tmp_path / "x.png")
    assert_clear_error(proc, "generate", "is not the unet the manifest describes")


# ---- 12. a re-export or a variant keeps the attributes ----
def test_the_identity_is_the_models_not_the_exports(engine_dirs, raw):
    a = read_manifest(engine_dirs["sd2-v"])
    b = read_manifest(engine_dirs["sd2-v-fp16"])          # the same model in fp16: a variant
    assert a.identity() == b.identity() and a.identities()[1] != b.identities()[1]
    assert read_manifest(engine_dirs["sd1"]).identity() != a.identity()


# ---- property-based: any mutation of a valid manifest or schedule ----
@FUZZ
@given(changes=mutations())
def test_any_mutation_of_a_manifest_is_accepted_or_a_clear_error(engine_dirs, tmp_path_factory, raw, changes):
    d = tmp_path_factory.getbasetemp() / "fuzz-manifest"
    if not d.exists():
        shutil.copytree(engine_dirs["sd1"], d)
    m = mutate(raw, changes)
    (d / "manifest.json").write_text(json.dumps(m, allow_nan=True))
    try:
        read_manifest(d, verify="all")
    except EngineDirError as exc:
        assert str(d) in str(exc) and "\n" not in str(exc)
    for name in ("manifest.json",):
        target = (d / name).resolve()
        assert target.parent == d.resolve()


@FUZZ
@given(changes=mutations())
def test_any_mutation_of_a_schedule_is_accepted_or_a_clear_error(engine_dirs, tmp_path_factory, changes):
    base = json.loads((engine_dirs["sd1"] / "schedule.json").read_text())
    base["alphas_cumprod"] = base["alphas_cumprod"][:50]
    path = tmp_path_factory.getbasetemp() / "fuzz-schedule.json"
    path.write_text(json.dumps(mutate(base, changes), allow_nan=True))
    try:
        s = Schedule.from_json(path)
        assert len(s.alphas_cumprod) > 0 and all(math.isfinite(a) for a in s.alphas_cumprod)
    except SvdeditError as exc:
        assert "schedule" in str(exc) or str(path) in str(exc)


def test_mutated_manifests_through_the_command_line_exit_0_or_2(engine_dirs, tmp_path, raw):
    """The property end to end, on a fixed sample: `svdedit check` exits 0 or 2, never with a traceback."""
    from tests.fuzzing import sample_mutations

    d = _with_manifest(engine_dirs, tmp_path, raw)
    codes = []
    for changes in sample_mutations(12, seed=18):
        (d / "manifest.json").write_text(json.dumps(mutate(raw, changes), allow_nan=True))
        proc = run_cli("check", d)
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, (changes, proc.stderr)
        codes.append(proc.returncode)
    assert 2 in codes
