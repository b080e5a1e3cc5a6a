"""The editing subcommands (torch-free): learn, edit, probe."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from svdedit.runtime.avi import Knobs
from svdedit.runtime.cli import engine_args, progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---- argument types with messages that say what is allowed ----
def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.5, 1, 1.5)") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def _seeds(text: str) -> list[int]:
    """'7', '0-99' or '1,5,9' (or a mix: '0-3,10')."""
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed list; write e.g. 7, 0-99 or 1,5,9") from None
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r} names no seeds (is the range backwards?)")
    return out


def _floats(text: str) -> list[float]:
    return [_number(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers (e.g. 0,1,2)") from None


def _add_knobs(p: argparse.ArgumentParser) -> None:
    d = Knobs()
    g = p.add_argument_group("method knobs (defaults measured in benchmarks/results/edit_quality.md)")
    helps = {
        "steps": "DDIM steps of every trajectory", "guidance": "classifier-free guidance of sampling",
        "t_edit": "T_x as a fraction of the schedule (0 = clean image, 1 = pure noise)",
        "dtau": "take z this many DDIM steps earlier (noisier, >0) or later (<0) than x",
        "k": "singular triplets per channel taken from each of x and z",
        "tail": "keep x's residual beyond its top k (1) or drop it (0)",
        "continuation": "prompt after T_x: target (blended with --strength at edit time) or source (the paper, literally)",
        "window": "inject y at this many consecutive steps from T_x",
        "hidden": "MLP width", "w_target": "weight of the target loss L1 (0 = off)",
        "w_source": "weight of the source loss L2 (0 = off)", "w_target_sv": "weight of the target singular-value loss L3",
        "w_source_sv": "weight of the source singular-value loss L4", "iters": "Adam steps", "lr": "Adam learning rate",
        "inversion_guidance": "guidance of the DDIM inversion of real images",
    }
    for f in fields(Knobs):
        default = getattr(d, f.name)
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes", "on"), int: int, float: _number, str: str}[type(default)]
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                       choices=("target", "source") if f.name == "continuation" else None,
                       help=f"{helps[f.name]} (default {default})")


def _knobs(args: argparse.Namespace) -> Knobs:
    return Knobs(**{f.name: getattr(args, f.name) for f in fields(Knobs)}).check()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learn", help="learn an attribute from one prompt pair (AVI)",
        description="Learn an attribute from ONE pair of prompts: sample both from the same seed to T_x, take the "
                    "channel-wise SVD of the two latents, and fit the small MLP that predicts the edited singular "
                    "values (four losses, Adam, NumPy; runtime/avi.py). Writes one .safetensors file: the MLP's "
                    "weights, and the prompts, knobs, format version and the engine's manifest hash as JSON metadata.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine_args(p)
    p.add_argument("--source", required=True, help='the source prompt, e.g. "a large red circle in the middle"')
    p.add_argument("--target", required=True, help='the attribute prompt, e.g. "a large blue circle in the middle"')
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise both prompts are sampled from")
    p.add_argument("-o", "--output", required=True, metavar="ATTR.safetensors", help="the attribute file to write")
    _add_knobs(p)
    p.set_defaults(run=run_learn)

    p = sub.add_parser(
        "edit", help="apply attributes to generated or real images",
        description="Apply one or more learned attributes. Generated images: --prompt and --seed/--seeds (the "
                    "source image is generated too). Real images: --image FILE or a folder, with --prompt describing "
                    "them (they are DDIM-inverted first). The target prompt of each image is its prompt with the "
                    "attribute's word change applied (red -> blue), unless --target-prompt gives it. Writes the "
                    "edited image and a 'source | edited' strip per image, and prints one JSON line per image.")
    engine_args(p)
    p.add_argument("--attr", required=True, action="append", metavar="ATTR", help="an attribute file (repeatable)")
    p.add_argument("--prompt", required=True, help="the prompt of the source image(s)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=_seeds, dest="seeds", help="seed of the generated source image")
    what.add_argument("--seeds", type=_seeds, dest="seeds", help="several seeds: 0-99, 1,5,9")
    what.add_argument("--image", metavar="IMG|DIR", help="a real image, or a folder of images")
    p.add_argument("--target-prompt", help="the target prompt, instead of deriving it from the attribute")
    p.add_argument("--strength", type=_number, default=1.0,
                   help="0 = unchanged, 1 = the learned edit, >1 extrapolates (default 1)")
    p.add_argument("--batch", type=int, default=16, help="images per UNet call (default 16)")
    p.add_argument("--timings", action="store_true",
                   help="print one more JSON line: seconds spent in each stage (text, vae_encode, invert, "
                        "sample_to_edit, svd_avi, sample_rest, vae_decode) over all images")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT.png for one image, else a folder (created) for <name>.png and <name>_strip.png")
    p.set_defaults(run=run_edit)

    probe = sub.add_parser("probe", help="look inside the latent SVD: singular-value sweeps, subspace drift, rank mobility",
                           description="Analysis tools of the paper (and debugging aids).")
    psub = probe.add_subparsers(dest="probe", metavar="PROBE", required=True)
    for name, helptext in (("sweep", "scale chosen singular values at T_x, finish sampling, save a labelled grid"),
                           ("subspace", "Grassmann distance between top-k singular subspaces across steps (plot + JSON)"),
                           ("rank", "rank of the source->target direction among the singular vectors, per step")):
        q = psub.add_parser(name, help=helptext, description=helptext)
        engine_args(q)
        q.add_argument("--prompt", required=True)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--steps", type=int, default=50)
        q.add_argument("--guidance", type=_number, default=3.0)
        q.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write (JSON next to it)")
        if name == "sweep":
            q.add_argument("--t-edit", type=_number, default=0.5, help="step to scale at, as a fraction of T")
            q.add_argument("--index", type=_ints, default=[0, 1, 2, 3], help="singular value indices (rows), e.g. 0,1,2")
            q.add_argument("--channels", type=_ints, help="latent channels to scale (default: all)")
            q.add_argument("--factors", type=_floats, default=[0.0, 0.5, 1.0, 1.5, 2.0], help="scale factors (columns)")
        elif name == "subspace":
            q.add_argument("--k", type=int, default=4, help="subspace dimension")
        else:
            q.add_argument("--target-prompt", required=True, help="defines the direction: top singular vector of z - x")
            q.add_argument("--t-ref", type=_number, default=0.5, help="step where the direction is taken (fraction of T)")
        q.set_defaults(run=run_probe)


def run_learn(args: argparse.Namespace) -> int:
    from svdedit.runtime.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    knobs = _knobs(args)
    out = Path(args.output)
    if out.is_dir():
        from svdedit.runtime.errors import SvdeditError
        raise SvdeditError(f"-o {out} is a folder; give a file name such as {out / 'attr.safetensors'}.")
    with Pipeline(args.engine, args.provider) as pipe:
        bar, update = progress_bar("learn", unit="iter")

        def progress(it, total, losses):
            bar.set_postfix({n[:9]: f"{v:.4f}" for n, v in losses.items()}, refresh=False)
            update(it, total)
        attr = Editor(pipe).learn(args.source, args.target, seed=args.seed, knobs=knobs, progress=progress)
        bar.close()
    attr.save(out)
    print(json.dumps({"output": str(out), "source": attr.source, "target": attr.target, "losses": attr.losses,
                      "knobs": asdict(knobs)}))
    return 0


def _strip(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """source | edited, side by side with a 2 px white gap, enlarged to at least 256 px high."""
    h = source.shape[0]
    gap = np.full((h, 2, 3), 255, np.uint8)
    strip = np.concatenate([source, gap, edited], axis=1)
    scale = max(1, 256 // h)
    return strip.repeat(scale, 0).repeat(scale, 1)


def _image_list(path: str) -> list[Path]:
    from svdedit.runtime.errors import SvdeditError

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SvdeditError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        return files
    return [p]  # load_image says it if it does not exist


def run_edit(args: argparse.Namespace) -> int:
    from svdedit.runtime.avi import Attribute
    from svdedit.runtime.edit import Editor
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.images import fit, load_image, save_png
    from svdedit.runtime.pipeline import Pipeline
    from svdedit.runtime.timing import NO_STAGES, Stages

    if args.batch < 1:
        raise SvdeditError("--batch must be at least 1.")
    files = _image_list(args.image) if args.image else None
    loaded = [load_image(f) for f in files] if files else None  # a bad image fails before the engines load
    count = len(files) if files else len(args.seeds)
    out = Path(args.output)
    single = count == 1 and out.suffix.lower() == ".png"
    if not single and out.suffix.lower() == ".png":
        raise SvdeditError(f"{count} images to write, but -o {out} names one PNG; give a folder instead.")
    stages = Stages() if args.timings else NO_STAGES
    with Pipeline(args.engine, args.provider) as pipe:
        editor = Editor(pipe, stages=stages)
        attrs = [Attribute.load(a, engine=editor.engine_hash) for a in args.attr]
        targets = [args.target_prompt] * count if args.target_prompt else None
        bar, progress = progress_bar("edit", unit="image")
        if files:
            images = np.stack([fit(img, pipe.size) for img in loaded])
            result = editor.edit_images(attrs, images, [args.prompt] * count, strength=args.strength,
                                        target_prompts=targets, batch=args.batch, progress=progress)
            names = [f.stem for f in files]
        else:
            result = editor.edit_seeds(attrs, [args.prompt] * count, args.seeds, strength=args.strength,
                                       target_prompts=targets, batch=args.batch, progress=progress)
            names = [f"seed{s}" for s in args.seeds]
        bar.close()
    for i, name in enumerate(names):
        path = out if single else out / f"{name}.png"
        strip = path.with_name(path.stem + "_strip.png")
        save_png(result.edited[i], path)
        save_png(_strip(result.source[i], result.edited[i]), strip)
        print(json.dumps({"output": str(path), "strip": str(strip), "source_prompt": result.source_prompts[i],
                          "target_prompt": result.target_prompts[i], "strength": args.strength}))
    if args.timings:
        print(json.dumps({"seconds_per_stage": {k: round(v, 4) for k, v in stages.seconds.items()},
                          "images": count, "providers": pipe.providers}))
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from svdedit.runtime import probe
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(args.engine, args.provider) as pipe:
        info = getattr(probe, args.probe)(pipe, args)
    print(json.dumps(info))
    return 0
