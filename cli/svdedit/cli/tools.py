"""`svdedit demo` (the quick start: an edit on the built-in engine, no torch, no clone) and `svdedit env` (what
this installation runs on, to paste into a bug report)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from svdedit.cli.args import bounded_int, command, progress_bar

DEMO_DESCRIPTION = """\
The quick start, on the embedded model that ships with svdedit (svdedit:shapes: 64x64 coloured shapes, trained
by this project). Learns the attribute red -> blue from ONE pair of prompts ("a large red circle in the
middle" -> "a large blue circle in the middle"), applies it to --n generated images of other red shapes,
and writes OUT/grid.png (top row: the generated sources, bottom row: their edits) and OUT/red2blue.safetensors.
About half a minute on 2 CPU cores.
"""
DEMO_SOURCE, DEMO_TARGET = "a large red circle in the middle", "a large blue circle in the middle"
#: held-out prompts of the demo: other shapes, sizes and positions, all red
DEMO_PROMPTS = ["a small red square on the left", "a large red triangle on the right", "a small red circle on the right",
                "a large red square in the middle", "a small red triangle on the left", "a large red circle on the left",
                "a small red square in the middle", "a large red triangle on the left"]

ENV_DESCRIPTION = """\
Print the versions and the hardware svdedit runs on: svdedit, Python, NumPy, onnxruntime (and which build) with
its available providers, CuPy and the CUDA it sees, TensorRT and OpenVINO if importable, the CPU and the flags
that decide its kernels (AVX-512, VNNI, bf16, AMX), the GPU and its memory, and the built-in engines. Paste it into a bug report. --json for one JSON object.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "demo", run_demo, "the quick start: learn red -> blue on the built-in model and edit a few images",
                description=DEMO_DESCRIPTION)
    p.add_argument("-o", "--output", default="svdedit-demo", metavar="DIR",
                   help="where the grid and the attribute go (default: ./svdedit-demo)")
    p.add_argument("--n", type=bounded_int(1, len(DEMO_PROMPTS)), default=6, help="images to edit (default 6)")
    p.add_argument("--engine", default="svdedit:shapes", help=argparse.SUPPRESS)  # tests compare with a checkout's

    p = command(sub, "env", run_env, "print versions, providers and the GPU, for a bug report", description=ENV_DESCRIPTION)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")


# ---- svdedit demo ----
def run_demo(args: argparse.Namespace) -> int:
    from svdedit.runtime.editing.learn import learn
    import numpy as np

    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.files import check_output
    from svdedit.runtime.images import save_png
    from svdedit.runtime.pipeline import Pipeline

    out = Path(args.output)
    check_output(out, "-o", folder=True)
    t0 = time.perf_counter()
    with Pipeline(args.engine) as pipe:
        editor = Editor(pipe)
        bar, progress = progress_bar("learn red -> blue", unit="step")
        knobs = Knobs()
        attr = learn(editor, DEMO_SOURCE, DEMO_TARGET, seed=0, knobs=knobs,
                            progress=lambda i, total, losses: progress(i, total))
        bar.close()
        bar, progress = progress_bar("edit", unit="image")
        prompts = DEMO_PROMPTS[:args.n]
        r = editor.edit_seeds([attr], prompts, list(range(100, 100 + args.n)), progress=progress)
        bar.close()
    top, bottom = np.concatenate(list(r.source), axis=1), np.concatenate(list(r.edited), axis=1)
    gap = np.full((4, top.shape[1], 3), 255, np.uint8)
    grid = np.concatenate([top, gap, bottom], axis=0).repeat(3, 0).repeat(3, 1)
    grid_path = save_png(grid, out / "grid.png")
    attr_path = attr.save(out / "red2blue.safetensors")
    print(json.dumps({"grid": str(grid_path), "attribute": str(attr_path), "engine": str(args.engine),
                      "prompts": prompts, "seconds": round(time.perf_counter() - t0, 1)}))
    print(f"svdedit demo: the before (top) / after (bottom) grid is {grid_path}; edit your own with\n"
          f"  svdedit edit --engine {args.engine} --attr {attr_path} --prompt \"a small red square on the left\" "
          f"--seed 7 -o edited.png", file=sys.stderr)
    return 0


# ---- svdedit env ----
def environment() -> dict:
    """Versions, providers and devices, each probed without failing (what is missing says so)."""
    from importlib.metadata import PackageNotFoundError, version

    from svdedit.runtime import __version__
    from svdedit.runtime.engines.names import BUILTIN_PREFIX, PACKAGED, packaged_root, user_cache_root

    def v(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    info: dict = {"svdedit": __version__, "svdedit_location": str(Path(__file__).resolve().parent.parent),
                  "python": f"{platform.python_version()} ({sys.executable})", "platform": platform.platform(),
                  "numpy": v("numpy")}
    try:
        import onnxruntime as ort

        build = "onnxruntime-gpu" if v("onnxruntime-gpu") else "onnxruntime" if v("onnxruntime") else "unknown build"
        info["onnxruntime"] = f"{ort.__version__} ({build})"
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
        info["onnxruntime_providers"] = []
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        gpus = []
        for i in range(count):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            gpus.append(f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, compute capability "
                        f"{props['major']}.{props['minor']}")
        info["gpus"] = gpus
    except ImportError:
        info["cupy"], info["gpus"] = None, []
    except Exception as exc:  # CuPy installed, no usable GPU or driver
        info["cupy"], info["gpus"] = v("cupy-cuda13x") or v("cupy-cuda12x"), []
        info["cuda_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    try:
        import openvino

        info["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        info["openvino"] = None
    from svdedit.runtime.engines.openvino import cpu_report

    info["cpu"] = cpu_report()
    info["torch"] = v("torch")
    info["built_in_engines"] = {BUILTIN_PREFIX + n: (packaged_root() / n / "manifest.json").is_file() for n in PACKAGED}
    info["cache_dir"] = str(user_cache_root())
    return info


def run_env(args: argparse.Namespace) -> int:
    from svdedit.runtime.engines.openvino import REPORTED_FLAGS

    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        elif key == "cpu":
            value = (f"{value['model']}; {', '.join(value['flags']) or 'none of ' + ', '.join(REPORTED_FLAGS)}; "
                     f"bf16 units: {'yes' if value['bf16_units'] else 'no'}")
        elif isinstance(value, dict):
            value = ", ".join(f"{k} ({'installed' if ok else 'not in this installation'})" for k, ok in value.items())
        elif value is None:
            value = "not installed"
        print(f"- {key.replace('_', ' ')}: {value}")
    return 0
