"""`svdedit generate` (text to image) and `svdedit reconstruct` (invert an image, resample it, report PSNR)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from svdedit.cli.args import bounded_int, bounded_number, command, engine_args, open_pipeline, progress_bar, prompt, seed
from svdedit.runtime.limits import LIMITS


def _common(p: argparse.ArgumentParser) -> None:
    engine_args(p)
    p.add_argument("--steps", type=bounded_int(1, LIMITS.max_steps), default=50, help="DDIM steps (default 50)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png",
                   help="where to write the image: .png, .jpg or .webp (the suffix names the format)")
    p.add_argument("--init-noise", metavar="FILE.npy",
                   help="start from this latent (B, C, h, w) instead of seeded noise / the inverted latent, so that "
                        "another implementation can be compared exactly")


GENERATE_DESCRIPTION = """\
Generate one image from a prompt with DDIM and classifier-free guidance, entirely through the
exported ONNX engines (no torch). The initial noise is drawn from NumPy's generator seeded with
--seed (so images differ from diffusers' torch-seeded ones; use --init-noise to compare).
"""

RECONSTRUCT_DESCRIPTION = """\
Encode an image with the VAE, invert it with DDIM (guidance 1) to noise, sample it back, decode, and
write the result. Prints one JSON line: the PSNR of the reconstruction against the input (after the
documented resize/crop), and that of the VAE round trip alone, its ceiling. Images are scaled to
cover the model's size and centre-cropped.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "generate", run_generate, "text to image through the engine dir (DDIM, classifier-free guidance)",
                description=GENERATE_DESCRIPTION)
    _common(p)
    p.add_argument("--prompt", required=True, type=prompt, help='the prompt; "" is the unconditional model')
    p.add_argument("--seed", type=seed, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--guidance", type=bounded_number(0, 100), default=7.5,
                   help="classifier-free guidance scale (default 7.5; 1 = off)")

    p = command(sub, "reconstruct", run_reconstruct, "invert an image with DDIM, resample it, report PSNR",
                description=RECONSTRUCT_DESCRIPTION)
    _common(p)
    p.add_argument("--image", required=True, help="the input image (PNG, JPEG, WebP, ...)")
    p.add_argument("--prompt", required=True, type=prompt,
                   help="the prompt that describes the image (used for both directions)")
    p.add_argument("--guidance", type=bounded_number(0, 100), default=1.0,
                   help="guidance of the resampling (default 1, as inverted)")


def _load_noise(path: str | None) -> np.ndarray | None:
    from svdedit.runtime.errors import SvdeditError

    if path is None:
        return None
    from pathlib import Path

    if not Path(path).is_file():
        raise SvdeditError(f"--init-noise {path} does not exist (or is not a file).")
    if Path(path).stat().st_size > LIMITS.max_file_bytes:
        raise SvdeditError(f"--init-noise {path} is {Path(path).stat().st_size} bytes; a latent is never that large "
                           f"(limit {LIMITS.max_file_bytes}).")
    try:
        noise = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise SvdeditError(f"--init-noise {path} is not a readable .npy array ({exc}).") from None
    if not isinstance(noise, np.ndarray) or noise.dtype.kind not in "fiu":
        raise SvdeditError(f"--init-noise {path} holds {getattr(noise, 'dtype', type(noise).__name__)}; it must be a "
                           f"real-valued array (float32).")
    return noise


def _check_output(args) -> None:
    from svdedit.runtime.files import check_output
    from svdedit.runtime.images import IMAGE_SUFFIXES

    check_output(args.output, "-o", suffixes=tuple(IMAGE_SUFFIXES))


def run_generate(args: argparse.Namespace) -> int:
    from svdedit.runtime.images import save_image, to_uint8

    _check_output(args)
    noise = _load_noise(args.init_noise)
    with open_pipeline(args) as pipe:
        bar, update = progress_bar("generate")
        latent = pipe.generate(args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                               init_noise=noise, progress=update)
        bar.close()
        image = to_uint8(pipe.decode(latent))[0]
        providers = pipe.providers
    save_image(image, args.output)
    print(json.dumps({"output": str(args.output), "prompt": args.prompt, "seed": args.seed, "steps": args.steps,
                      "guidance": args.guidance, "providers": providers}))
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    from svdedit.runtime.images import fit, load_image, psnr, save_image, to_uint8

    _check_output(args)
    noise = _load_noise(args.init_noise)
    img = load_image(args.image)
    with open_pipeline(args) as pipe:
        x = fit(img, pipe.size)[None]
        target = to_uint8(x)[0]
        z0 = pipe.encode(x)
        vae_only = to_uint8(pipe.decode(z0))[0]
        bar, update = progress_bar("invert")
        z_t = pipe.invert(z0, args.prompt, steps=args.steps, progress=update, originals=[img.size])[-1] \
            if noise is None else pipe.check_latent(noise, 1)
        bar.close()
        bar, update = progress_bar("resample")
        z = pipe.sample(z_t, args.prompt, steps=args.steps, guidance=args.guidance, progress=update,
                        originals=[img.size])
        bar.close()
        out = to_uint8(pipe.decode(z))[0]
        providers = pipe.providers
    save_image(out, args.output)
    print(json.dumps({"output": str(args.output), "psnr": round(psnr(out, target), 3),
                      "vae_round_trip_psnr": round(psnr(vae_only, target), 3), "steps": args.steps,
                      "providers": providers}))
    return 0
