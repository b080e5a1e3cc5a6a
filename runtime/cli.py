"""The runtime's subcommands (torch-free): check, build, generate, reconstruct."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def engine_args(p: argparse.ArgumentParser) -> None:
    """--engine and --provider, as every command that runs an engine dir takes them."""
    p.add_argument("--engine", required=True, metavar="DIR", help="an engine dir written by `svdedit export`")
    p.add_argument("--provider", default="auto",
                   help="what runs the networks: auto (TensorRT plans from `svdedit build` when this GPU has them, "
                        "else onnxruntime's TensorRT, CUDA, then CPU provider), tensorrt (the plans), "
                        "ort-tensorrt, cuda or cpu")


def _common(p: argparse.ArgumentParser) -> None:
    engine_args(p)
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default 50)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="where to write the PNG")
    p.add_argument("--init-noise", metavar="FILE.npy",
                   help="start from this latent (B, C, h, w) instead of seeded noise / the inverted latent, so that "
                        "another implementation can be compared exactly")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="verify an engine dir and run each of its networks once",
        description="Verify an engine dir: the manifest's format version, every file's sha256, then one "
                    "onnxruntime call per network at the model's default size, checked against the manifest's "
                    "declared outputs. Prints one JSON line per network.",
    )
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="a folder written by `svdedit export`")
    p.add_argument("--provider", default="auto", help="onnxruntime execution provider (default: auto)")
    p.set_defaults(run=run_check)

    p = sub.add_parser(
        "build", help="build TensorRT plans from an engine dir's ONNX graphs (NVIDIA GPU + TensorRT)",
        description="Build one TensorRT plan per network from the ONNX graphs of ENGINE_DIR, for this GPU and this "
                    "TensorRT version, and record them in its manifest. Optimisation profiles cover batch 1 to "
                    "--max-batch images (the UNet: an inversion profile and a guided-sampling profile of up to 4x "
                    "that many latents) and the --shapes given; with fp16 the VAE stays fp32. A timing cache in "
                    "ENGINE_DIR/tensorrt/ makes rebuilds fast. Plans are written under a temporary name and renamed.",
        epilog="example: svdedit export sd15/ -o engines/sd15 --precision fp16 --no-fuse && "
               "svdedit build engines/sd15 --shapes 512x512 --max-batch 4",
    )
    p.add_argument("engine_dir", metavar="ENGINE_DIR", help="a folder written by `svdedit export`")
    p.add_argument("--precision", choices=("fp16", "bf16", "fp32"), default=None,
                   help="default: the engine dir's (`svdedit export --precision`); TensorRT 11 builds only that one")
    p.add_argument("--shapes", default=None, metavar="HxW,...",
                   help="image sizes the plans must accept, e.g. 512x512,768x768 (default: the model's size); "
                        "the first is the one TensorRT optimises for")
    p.add_argument("--max-batch", type=_positive_int, default=4, help="most images edited at once (default 4)")
    p.add_argument("--static", action="store_true",
                   help="one fixed image size (give one --shapes entry): faster plans, and the runner captures a "
                        "CUDA graph per input shape")
    p.set_defaults(run=run_build)

    p = sub.add_parser(
        "generate", help="text to image through the engine dir (DDIM, classifier-free guidance)",
        description="Generate one image from a prompt with DDIM and classifier-free guidance, entirely through the "
                    "exported ONNX engines (no torch). The initial noise is drawn from NumPy's generator seeded with "
                    "--seed (so images differ from diffusers' torch-seeded ones; use --init-noise to compare).",
    )
    _common(p)
    p.add_argument("--prompt", required=True, help='the prompt; "" is the unconditional model')
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5; 1 = off)")
    p.set_defaults(run=run_generate)

    p = sub.add_parser(
        "reconstruct", help="invert an image with DDIM, resample it, report PSNR",
        description="Encode an image with the VAE, invert it with DDIM (guidance 1) to noise, sample it back, "
                    "decode, and write the result. Prints one JSON line: the PSNR of the reconstruction against the "
                    "input (after the documented resize/crop), and that of the VAE round trip alone, its ceiling. "
                    "Images are scaled to cover the model's size and centre-cropped.",
    )
    _common(p)
    p.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP, ...)")
    p.add_argument("--prompt", required=True, help="the prompt that describes the image (used for both directions)")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance of the resampling (default 1, as inverted)")
    p.set_defaults(run=run_reconstruct)


def run_check(args: argparse.Namespace) -> int:
    from svdedit.runtime.engine import smoke_test

    for line in smoke_test(args.engine_dir, provider=args.provider):
        print(json.dumps(line))
    return 0


def run_build(args: argparse.Namespace) -> int:
    from svdedit.runtime.tensorrt import BuildOptions, build_plans, parse_shapes

    options = BuildOptions(args.precision, parse_shapes(args.shapes) if args.shapes else (), args.max_batch, args.static)
    manifest = build_plans(args.engine_dir, options, log_fn=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"engine_dir": args.engine_dir, "tensorrt": list(manifest["tensorrt"])}))
    return 0


def progress_bar(desc: str, unit: str = "step"):
    """A tqdm bar on stderr (off when it is not a terminal) and its update(done, total) callback."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _load_noise(path: str | None) -> np.ndarray | None:
    from svdedit.runtime.errors import SvdeditError

    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SvdeditError(f"--init-noise {path} is not a readable .npy array ({exc}).") from None


def run_generate(args: argparse.Namespace) -> int:
    from svdedit.runtime.images import save_png, to_uint8
    from svdedit.runtime.pipeline import Pipeline

    noise = _load_noise(args.init_noise)
    with Pipeline(args.engine, args.provider) as pipe:
        bar, update = progress_bar("generate")
        latent = pipe.generate(args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                               init_noise=noise, progress=update)
        bar.close()
        image = to_uint8(pipe.decode(latent))[0]
        providers = pipe.providers
    save_png(image, args.output)
    print(json.dumps({"output": str(args.output), "prompt": args.prompt, "seed": args.seed, "steps": args.steps,
                      "guidance": args.guidance, "providers": providers}))
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from svdedit.runtime.images import fit, load_image, psnr, save_png, to_uint8
    from svdedit.runtime.pipeline import Pipeline

    noise = _load_noise(args.init_noise)
    img = load_image(args.image)
    with Pipeline(args.engine, args.provider) as pipe:
        x = fit(img, pipe.size)[None]
        target = to_uint8(x)[0]
        z0 = pipe.encode(x)
        vae_only = to_uint8(pipe.decode(z0))[0]
        bar, update = progress_bar("invert")
        z_t = pipe.invert(z0, args.prompt, steps=args.steps, progress=update)[-1] if noise is None \
            else pipe.check_latent(noise, 1)
        bar.close()
        bar, update = progress_bar("resample")
        z = pipe.sample(z_t, args.prompt, steps=args.steps, guidance=args.guidance, progress=update)
        bar.close()
        out = to_uint8(pipe.decode(z))[0]
        providers = pipe.providers
    save_png(out, args.output)
    print(json.dumps({"output": str(args.output), "psnr": round(psnr(out, target), 3),
                      "vae_round_trip_psnr": round(psnr(vae_only, target), 3), "steps": args.steps,
                      "providers": providers}))
    return 0
