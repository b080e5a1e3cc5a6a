"""Shared fixtures: tiny seeded SD pipelines and their engine dirs, built once per test session.

Exporting a tiny pipeline takes ~25 s (mostly the dynamo exporter's warm-up), so every test that
needs an engine dir shares the session-scoped ones below, and treats them as read-only.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

HAS_TORCH = importlib.util.find_spec("torch") is not None
#: the stage folders: each is a source root holding its portion of the namespace package svdedit
#: (runtime/svdedit/runtime/pipeline.py is svdedit.runtime.pipeline; pyproject.toml's package-dir)
STAGES = ("cli", "export", "runtime", "kernels", "serve")

#: Test modules that import an extra's packages at their top, and those packages: not collected where one is missing
#: (the runtime-only wheel's tests, `make test-runtime-oldest`); make test has every extra and collects them all.
NEEDS_EXTRAS = {"serve": ("fastapi", "httpx", "schemathesis"), "export/test_fusion.py": ("onnx",)}
collect_ignore = [path for path, modules in NEEDS_EXTRAS.items()
                  if any(importlib.util.find_spec(m) is None for m in modules)]
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the export extra (torch, diffusers)")


def _gpu_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # a CuPy without its CUDA libraries raises on import or probe
        return False


HAS_GPU = _gpu_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with CuPy")  # use with @pytest.mark.gpu


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory) -> Path:
    """The tests' own per-user cache ($XDG_CACHE_HOME, inherited by the CLI subprocesses): TensorRT plans and
    onnxruntime's TensorRT caches never go to the real ~/.cache, nor come from it."""
    root = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield root


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> dict[str, Path]:
    """{'sd1': folder, 'sd2-v': folder}: tiny seeded diffusers pipelines saved with save_pretrained."""
    from tests.fixtures.tiny_sd import FLAVOURS, save_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    return {f: save_tiny_pipeline(f, root / f) for f in FLAVOURS}


@pytest.fixture(scope="session")
def engine_dirs(tiny_pipelines, tmp_path_factory) -> dict[str, Path]:
    """{'sd1', 'sd2-v': fp32 engine dirs; 'sd2-v-fp16': the sd2-v fixture exported with --precision fp16}."""
    from svdedit.export.exporter import ExportOptions, export_model

    root = tmp_path_factory.mktemp("engines")
    out = {}
    for key, flavour, precision in (("sd1", "sd1", "fp32"), ("sd2-v", "sd2-v", "fp32"), ("sd2-v-fp16", "sd2-v", "fp16")):
        out[key] = root / key
        export_model(tiny_pipelines[flavour], out[key], ExportOptions(precision=precision), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def lora_adapters(tiny_pipelines, tmp_path_factory) -> dict[str, Path]:
    """{'A': a diffusers-format UNet + text-encoder LoRA of the tiny SD 1 fixture, 'B': a UNet LoRA, 'B-kohya': B
    under kohya's names} (tests/fixtures/lora.py)."""
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.lora import save_kohya_lora, save_peft_lora

    root = tmp_path_factory.mktemp("lora")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipelines["sd1"])
    a = save_peft_lora(pipe, root / "A.safetensors", seed=0, text_encoder=True)
    b = save_peft_lora(pipe, root / "B.safetensors", seed=3)
    return {"A": a, "B": b, "B-kohya": save_kohya_lora(b, root / "B-kohya.safetensors")}


@pytest.fixture(scope="session")
def lora_engine(tiny_pipelines, lora_adapters, tmp_path_factory) -> Path:
    """The tiny SD 1 fixture with adapter A fused at scale 1, exported --lora-ready (B can be swapped in)."""
    from svdedit.export.exporter import ExportOptions, export_model

    out = tmp_path_factory.mktemp("lora-engine") / "engine"
    export_model(tiny_pipelines["sd1"], out, ExportOptions(lora=((str(lora_adapters["A"]), 1.0),), lora_ready=True),
                 log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def lora_engine_split(tiny_pipelines, tmp_path_factory) -> Path:
    """The tiny SD 1 fixture exported --lora-ready, --step-cache (the UNet in three graphs) and --no-fuse (plain
    attention, which TensorRT parses): run-time LoRA on a split UNet, and refitted into TensorRT plans."""
    from svdedit.export.exporter import ExportOptions, export_model

    out = tmp_path_factory.mktemp("lora-engine-split") / "engine"
    export_model(tiny_pipelines["sd1"], out, ExportOptions(fuse=False, step_cache=True, lora_ready=True), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def xl_pipeline(tmp_path_factory) -> Path:
    """The tiny seeded SDXL pipeline (tests/fixtures/tiny_sd.py, flavour sdxl), saved with save_pretrained."""
    from tests.fixtures.tiny_sd import save_tiny_pipeline

    return save_tiny_pipeline("sdxl", tmp_path_factory.mktemp("pipelines-xl") / "sdxl")


@pytest.fixture(scope="session")
def xl_engine(xl_pipeline, tmp_path_factory) -> Path:
    """The tiny SDXL pipeline exported in fp32, --lora-ready (LoRA adapters can be swapped in; the same graphs)."""
    from svdedit.export.exporter import ExportOptions, export_model

    out = tmp_path_factory.mktemp("engines-xl") / "sdxl"
    export_model(xl_pipeline, out, ExportOptions(lora_ready=True), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def shapes_engine(tmp_path_factory) -> Path:
    """The embedded model, models/shapes, exported once (fp32). Without torch (the runtime-only wheel's tests, make
    test-runtime-oldest): the installed package's built-in engine dir svdedit:shapes, the same export (make dist)."""
    if not HAS_TORCH:
        from svdedit.runtime.engines.names import resolve_engine
        from svdedit.runtime.errors import EngineDirError

        try:
            return resolve_engine("svdedit:shapes")
        except EngineDirError as exc:
            pytest.skip(f"needs the export extra, or an svdedit with its built-in engine: {exc}")
    import shutil

    from svdedit.export.exporter import export_model
    from svdedit.runtime.errors import SvdeditError

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("shapes") / "engine"
    if (root / "build" / "shapes-engine" / "manifest.json").is_file():  # make dist's export of the same model: when
        shutil.copytree(root / "build" / "shapes-engine", out)          # it is up to date the export is a no-op
    try:
        export_model(root / "models" / "shapes", out, log=lambda m: None)
    except SvdeditError:  # another model version or other options: export it here
        shutil.rmtree(out)
        export_model(root / "models" / "shapes", out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def shapes_engine_plain(tmp_path_factory) -> Path:
    """The embedded model exported with --no-fuse (plain ONNX attention, as TensorRT needs)."""
    from svdedit.export.exporter import ExportOptions, export_model

    out = tmp_path_factory.mktemp("shapes-plain") / "engine"
    export_model(Path(__file__).resolve().parents[1] / "models" / "shapes", out, ExportOptions(fuse=False),
                 log=lambda m: None)
    return out


def dist_artifact(pattern: str) -> Path:
    """The newest file of dist/ matching `pattern` (`make dist` builds them; make test runs it first)."""
    found = sorted((Path(__file__).resolve().parents[1] / "dist").glob(pattern))
    if not found:
        pytest.skip(f"no {pattern} in dist/: run `make dist` (make test does it first)")
    return found[-1]


def user_env(venv: Path) -> dict:
    """The environment of a user who activated `venv`: no PYTHONPATH, nothing of the checkout's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed as `pip install "WHEEL[cpu]"` (under make test, pip takes
    the lock as constraints through PIP_CONSTRAINT; under make test-latest, the newest versions)."""
    wheel = dist_artifact("svdedit-*-py3-none-any.whl")
    root = tmp_path_factory.mktemp("user")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           f"{wheel}[cpu]"], capture_output=True, text=True, env=user_env(venv), cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv
