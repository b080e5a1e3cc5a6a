"""`svdedit check` (verify an engine dir, run each network once), `svdedit build` (TensorRT plans for it) and
`svdedit quantize` (an int8 UNet)."""

from __future__ import annotations

import argparse
import json
import sys

from svdedit.cli.args import PRECISION_HELP, PROVIDER_HELP, RUN_PRECISIONS, command, positive_int
from svdedit.runtime.engines.contract import BUILD_PRECISIONS

CHECK_DESCRIPTION = """\
Verify an engine dir: the manifest's format version, every file's sha256, then one call per network
(onnxruntime, or OpenVINO with --provider openvino) at the model's default size, checked against the
manifest's declared outputs. Prints one JSON line per network (with OpenVINO: its precision, whether the
compiled model came from the cache, and the CPU's bf16/AMX/VNNI flags), then one per TensorRT build of
the engine (`svdedit build`: where its plans are, and whether each is there with its recorded sha256).
Exit status 1 when a build's plans are not.
"""

BUILD_DESCRIPTION = """\
Build one TensorRT plan per network from the ONNX graphs of ENGINE_DIR, for this GPU and this
TensorRT version. Optimisation profiles cover batch 1 to --max-batch images (the UNet: an inversion
profile and a guided-sampling profile of up to 4x that many latents) and the --shapes given; with
fp16 the VAE stays fp32. ENGINE_DIR is only read: the plans, their record (builds.json) and a timing
cache that makes rebuilds fast go to the user cache, $XDG_CACHE_HOME/svdedit/engines/<engine>/tensorrt/
(~/.cache by default), where every svdedit command run by this user finds them. Plans are written
under a temporary name and renamed.
"""

BUILD_EXAMPLE = ("example: svdedit export sd15/ -o engines/sd15 --precision fp16 --no-fuse && "
                 "svdedit build engines/sd15 --shapes 512x512 --max-batch 4")


QUANTIZE_DESCRIPTION = """\
Write a copy of ENGINE_DIR whose UNet is int8 (onnxruntime's quantization tools, or NNCF's; export/svdedit/export/quantize.py).
static: QDQ, calibrated on the UNet's inputs recorded while the fp32 engine samples --prompts prompts
for --steps steps each (uint8 activations, int8 weights per channel; Conv and MatMul); dynamic:
MatMul weights int8, activations quantized per call, no calibration; tensorrt: calibrated like static, in the
QDQ TensorRT reads (int8 activations and weights, symmetric: zero points 0; biases fp32), which `svdedit build`
takes (from a --no-fuse export) and onnxruntime and OpenVINO run too; nncf: NNCF's hybrid int8 (optimum-intel's
recipe: every Conv and MatMul weight int8, activations quantized only in attention), calibrated like static and
written as an OpenVINO model (unet.xml + unet.bin) that runs on --provider openvino only (auto picks it); needs
pip install 'svdedit[nncf]'. On this project's CPU it errs 3-4x less than static and its UNet call is the
fastest (benchmarks/results/nncf_int8_*_cpu.md). The int8 graph is compared with
the fp32 one on held-out recorded inputs; the figures go into the manifest. Attribute files of the
fp32 engine work on the int8 one (same model identity). Torch-free. Measured speed and edit quality:
benchmarks/results/speed_*.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "check", run_check, "verify an engine dir and run each of its networks once",
                description=CHECK_DESCRIPTION)
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="a folder written by `svdedit export`, or svdedit:shapes (the embedded model, built in)")
    p.add_argument("--provider", default="auto", help=PROVIDER_HELP)
    p.add_argument("--precision", choices=RUN_PRECISIONS, default=None, help=PRECISION_HELP)

    p = command(sub, "build", run_build, "build TensorRT plans from an engine dir's ONNX graphs (NVIDIA GPU + TensorRT)",
                description=BUILD_DESCRIPTION, epilog=BUILD_EXAMPLE)
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="a folder written by `svdedit export`, or svdedit:shapes (the embedded model, built in)")
    p.add_argument("--precision", choices=BUILD_PRECISIONS, default=None,
                   help="default: the engine dir's (`svdedit export --precision`); TensorRT 11 builds only that one")
    p.add_argument("--shapes", default=None, metavar="HxW,...",
                   help="image sizes the plans must accept, e.g. 512x512,768x768 (default: the model's size); "
                        "the first is the one TensorRT optimises for")
    p.add_argument("--max-batch", type=positive_int, default=4, help="most images edited at once (default 4)")
    p.add_argument("--refittable", action="store_true",
                   help="build plans whose weights can be replaced later without a rebuild (TensorRT's refit: LoRA "
                        "weights swapped at run time); TensorRT's documentation warns that refittable plans can run slower (not measured here)")
    p.add_argument("--static", action="store_true",
                   help="one fixed image size (give one --shapes entry): faster plans, and the runner captures a "
                        "CUDA graph per input shape")

    p = command(sub, "quantize", run_quantize, "write a copy of an engine dir with an int8 UNet (onnxruntime or NNCF)",
                description=QUANTIZE_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="an fp32 engine dir written by `svdedit export`, or svdedit:shapes")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="the int8 engine dir to write")
    p.add_argument("--mode", choices=("static", "dynamic", "tensorrt", "nncf"), default="static",
                   help="static: calibrated QDQ for onnxruntime and OpenVINO (uint8 activations); dynamic: activations "
                        "quantized per call; tensorrt: calibrated QDQ as TensorRT reads it (int8 symmetric, zero "
                        "points 0, biases fp32), for `svdedit build` from a --no-fuse export; nncf: NNCF's hybrid "
                        "int8 as an OpenVINO model, for --provider openvino")
    p.add_argument("--prompts", type=positive_int, default=2, help="calibration prompts (static, tensorrt, nncf)")
    p.add_argument("--steps", type=positive_int, default=10, help="DDIM steps per calibration prompt")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image side of the calibration samples (default: the model's own; smaller needs less memory)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an engine dir")


def run_check(args: argparse.Namespace) -> int:
    from svdedit.runtime.engines.check import check_engine_dir

    lines = check_engine_dir(args.engine_dir, provider=args.provider, precision=args.precision)
    for line in lines:
        print(json.dumps(line))
    return 0 if all(line["ok"] for line in lines) else 1


def run_build(args: argparse.Namespace) -> int:
    from svdedit.export.build import BuildOptions, build_plans, parse_shapes

    options = BuildOptions(args.precision, parse_shapes(args.shapes) if args.shapes else (), args.max_batch, args.static,
                           refittable=args.refittable)
    plans = build_plans(args.engine_dir, options, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"engine_dir": args.engine_dir, "device": plans.key, "plans": str(plans.root / plans.key)}))
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from svdedit.export.quantize import QuantizeOptions, quantize_engine

    options = QuantizeOptions(args.mode, args.prompts, args.steps, args.size, force=args.force)
    manifest = quantize_engine(args.engine_dir, args.output, options, log=lambda m: print(m, file=sys.stderr))
    q = manifest.raw["quantization"]
    print(json.dumps({"engine_dir": args.output, "mode": q["mode"],
                      "parity_int8_max_abs": {n: r["parity_int8"]["max_abs"] for n, r in q["networks"].items()}}))
    return 0
