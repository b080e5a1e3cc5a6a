"""`svdedit learn` (an attribute from one prompt pair), `svdedit edit` (apply attributes to seeds or images) and
`svdedit probe` (the paper's analysis tools)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from svdedit.cli.args import (
    about,
    bounded_int,
    bounded_number,
    command,
    engine_args,
    knob_args,
    knobs_from,
    number,
    numbers,
    open_pipeline,
    progress_bar,
    prompt,
    seed,
    seeds,
    whole_number,
    whole_numbers,
)
from svdedit.runtime.editing.request import MAX_ATTRIBUTES, MAX_STRENGTHS
from svdedit.runtime.limits import LIMITS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

LEARN_DESCRIPTION = """\
Learn an attribute from ONE pair of prompts: sample both from the same seed to T_x, take the
channel-wise SVD of the two latents, and fit the small MLP that predicts the edited singular values
(four losses, Adam, NumPy; runtime/svdedit/runtime/editing/avi.py). Writes one .safetensors file: the MLP's weights,
and the prompts, knobs, format version and the engine's manifest hash as JSON metadata.
"""

EDIT_DESCRIPTION = """\
Apply one or more learned attributes. Generated images: --prompt and --seed/--seeds (the source
image is generated too). Real images: --image FILE or a folder, with --prompt as their caption if you
have one (they are DDIM-inverted first). The target prompt of each image is its prompt with the
attribute's word change applied (red -> blue), unless --target-prompt gives it; an image whose caption
does not contain the attribute's word (or has none) is edited along the attribute's own prompt pair
instead, at the attribute's --uncaptioned-guidance. Writes the edited image and a 'source | edited'
strip per image, and prints one JSON line per image saying which prompts were used.
With several strengths (--strength 0,0.25,0.5,0.75,1) each image is inverted (or sampled) once and
re-edited at each strength through the edit cache; the files are <name>_s<strength>.png and the strip
'source | each strength' (-o OUT.png with one image: OUT.png is the strip).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "learn", run_learn, "learn an attribute from one prompt pair (AVI)",
                description=LEARN_DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    engine_args(p)
    p.add_argument("--source", required=True, help=about("source"))
    p.add_argument("--target", required=True, help=about("target"))
    p.add_argument("--seed", type=whole_number, default=0, help=about("seed", "; both prompts are sampled from it"))
    p.add_argument("-o", "--output", required=True, metavar="ATTR.safetensors", help="the attribute file to write")
    knob_args(p)

    p = command(sub, "edit", run_edit, "apply attributes to generated or real images", description=EDIT_DESCRIPTION)
    engine_args(p)
    p.add_argument("--attr", required=True, action="append", metavar="ATTR",
                   help=about("attributes", f"; an attribute file, repeatable (at most {MAX_ATTRIBUTES})"))
    p.add_argument("--prompt", default="",
                   help=about("prompt", ". Without one, an image is inverted without a caption and edited along the "
                                        "attributes' own prompt pairs; the JSON line says so"))
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=seeds, dest="seeds", help="seed of the generated source image")
    what.add_argument("--seeds", type=seeds, dest="seeds", help=about("seeds", "; several: 0-99, 1,5,9"))
    what.add_argument("--image", metavar="IMG|DIR", help=about("images", "; an image file, or a folder of them"))
    p.add_argument("--target-prompt", help=about("target_prompt"))
    p.add_argument("--strength", type=numbers, default=[1.0],
                   help=about("strengths", f"; default 1; e.g. 0,0.25,0.5,0.75,1 (at most {MAX_STRENGTHS}): the "
                                           f"strip shows them left to right (runtime/svdedit/runtime/editing/cache.py)"))
    p.add_argument("--batch", type=whole_number, default=16, help=about("batch", "; default 16"))
    p.add_argument("--timings", action="store_true",
                   help="print one more JSON line: seconds spent in each stage (text, vae_encode, invert, "
                        "sample_to_edit, svd_avi, sample_rest, vae_decode) over all images")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT.png (or .jpg, .webp) for one image, else a folder (created) for <name>.png and "
                        "<name>_strip.png")

    probe = sub.add_parser("probe", help="look inside the latent SVD: singular-value sweeps, subspace drift, rank mobility",
                           description="Analysis tools of the paper (and debugging aids).")
    psub = probe.add_subparsers(dest="probe", metavar="PROBE", required=True)
    for name, helptext in (("sweep", "scale chosen singular values at T_x, finish sampling, save a labelled grid"),
                           ("subspace", "Grassmann distance between top-k singular subspaces across steps (plot + JSON)"),
                           ("rank", "rank of the source->target direction among the singular vectors, per step")):
        q = psub.add_parser(name, help=helptext, description=helptext)
        engine_args(q)
        q.add_argument("--prompt", required=True, type=prompt)
        q.add_argument("--seed", type=seed, default=0)
        q.add_argument("--steps", type=bounded_int(2, LIMITS.max_steps), default=50)
        q.add_argument("--guidance", type=bounded_number(0, 100), default=3.0)
        q.add_argument("-o", "--output", required=True, metavar="OUT.png",
                       help="the image to write: .png, .jpg or .webp (its JSON next to it)")
        if name == "sweep":
            q.add_argument("--t-edit", type=number, default=0.5, help="step to scale at, as a fraction of T")
            q.add_argument("--index", type=whole_numbers, default=[0, 1, 2, 3], help="singular value indices (rows), e.g. 0,1,2")
            q.add_argument("--channels", type=whole_numbers, help="latent channels to scale (default: all)")
            q.add_argument("--factors", type=numbers, default=[0.0, 0.5, 1.0, 1.5, 2.0], help="scale factors (columns)")
        elif name == "subspace":
            q.add_argument("--k", type=bounded_int(1, 64), default=4, help="subspace dimension")
        else:
            q.add_argument("--target-prompt", required=True, type=prompt,
                           help="defines the direction: top singular vector of z - x")
            q.add_argument("--t-ref", type=number, default=0.5, help="step where the direction is taken (fraction of T)")
        q.set_defaults(run=run_probe)


def run_learn(args: argparse.Namespace) -> int:
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing.request import LearnRequest
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.files import check_output

    request = LearnRequest(args.source, args.target, args.seed, knobs_from(args)).check()
    out = Path(args.output)
    if out.is_dir():
        raise SvdeditError(f"-o {out} is a folder; give a file name such as {out / 'attr.safetensors'}.")
    check_output(out, "-o", suffixes=(".safetensors",))
    with open_pipeline(args) as pipe:
        bar, update = progress_bar("learn", unit="iter")

        def progress(it, total, losses):
            bar.set_postfix({n[:9]: f"{v:.4f}" for n, v in losses.items()}, refresh=False)
            update(it, total)
        attr = learn(Editor(pipe), request.source, request.target, seed=request.seed, knobs=request.knobs,
                     progress=progress)
        bar.close()
    attr.save(out)
    print(json.dumps({"output": str(out), "source": attr.source, "target": attr.target, "losses": attr.losses,
                      "knobs": asdict(request.knobs)}))
    return 0


def _strip(source: np.ndarray, *edited: np.ndarray) -> np.ndarray:
    """source | edited | ..., side by side with a 2 px white gap, enlarged to at least 256 px high."""
    h = source.shape[0]
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts = [source]
    for e in edited:
        parts += [gap, e]
    strip = np.concatenate(parts, axis=1)
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
    from svdedit.runtime.editing.avi import Attribute
    from svdedit.runtime.editing.cache import EditCache
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.request import EditRequest
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.files import check_output
    from svdedit.runtime.images import IMAGE_SUFFIXES as WRITABLE
    from svdedit.runtime.images import fit, load_image, save_image, save_png
    from svdedit.runtime.timing import NO_STAGES, Stages

    files = _image_list(args.image) if args.image else None
    request = EditRequest(tuple(args.attr), args.prompt, seeds=tuple(args.seeds) if files is None else None,
                          images=tuple(files) if files is not None else None, strengths=tuple(args.strength),
                          target_prompt=args.target_prompt, cache_interval=args.cache_interval,
                          batch=args.batch).check()
    count = request.count
    out = Path(args.output)
    single = count == 1 and out.suffix.lower() in WRITABLE
    if not single and out.suffix.lower() in WRITABLE:
        raise SvdeditError(f"{count} images to write, but -o {out} names one image file; give a folder instead.")
    check_output(out, "-o", folder=not single, suffixes=tuple(WRITABLE))
    pipe = open_pipeline(args)  # the manifest, read once; the networks load on entering it, below
    attrs = [Attribute.load(a, engine=pipe.manifest.identities()) for a in request.attributes]  # before any network
    originals, fitted = [], []
    for f in files or ():  # one at full size at a time
        image = load_image(f)
        originals.append(image.size)
        fitted.append(fit(image, pipe.size))
    images = np.stack(fitted) if files else None
    stages = Stages() if args.timings else NO_STAGES
    strengths = request.strengths
    with pipe:
        editor = Editor(pipe, stages=stages, cache=EditCache() if len(strengths) > 1 else None)
        targets = [request.target_prompt] * count if request.target_prompt else None
        bar, progress = progress_bar("edit", unit="image")
        results = []
        for k, strength in enumerate(strengths):  # the first inverts (or samples); the others re-edit
            def report(done, total, k=k):
                progress(k * total + done, total * len(strengths))
            if files:
                results.append(editor.edit_images(attrs, images, [request.prompt] * count, strength=strength,
                                                  target_prompts=targets, batch=request.batch, progress=report,
                                                  originals=originals))
            else:
                results.append(editor.edit_seeds(attrs, [request.prompt] * count, request.seeds, strength=strength,
                                                 target_prompts=targets, batch=request.batch, progress=report))
        names = [f.stem for f in files] if files else [f"seed{s}" for s in request.seeds]
        bar.close()
    written = []
    try:
        for i, name in enumerate(names):
            source = results[0].source[i]
            strip_image = _strip(source, *(r.edited[i] for r in results))
            if len(strengths) == 1:
                path = out if single else out / f"{name}.png"
                strip = path.with_name(path.stem + "_strip.png")
                save_image(results[0].edited[i], path)
                outputs = [(path, strengths[0])]
            else:
                strip = out if single else out / f"{name}_strip.png"
                outputs = [] if single else [(out / f"{name}_s{s:g}.png", s) for s in strengths]
                for (path, _), r in zip(outputs, results):
                    save_image(r.edited[i], path)
            (save_png if strip.suffix.lower() == ".png" else save_image)(strip_image, strip)
            written.append(strip)
            for k, s in enumerate(strengths):
                line = {"output": str(outputs[k][0]) if outputs else None, "strip": str(strip),
                        "source_prompt": results[k].source_prompts[i], "target_prompt": results[k].target_prompts[i],
                        "strength": s}
                print(json.dumps(line))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while writing: {len(written)} of {count} images written, each complete "
                          f"({', '.join(p.name for p in written[:5])}{', ...' if len(written) > 5 else ''}); "
                          f"no partial file was left.") from None
    if args.timings:
        print(json.dumps({"seconds_per_stage": {k: round(v, 4) for k, v in stages.seconds.items()},
                          "images": count, "strengths": len(strengths), "providers": pipe.providers,
                          **({"cache": asdict(editor.cache.stats)} if editor.cache is not None else {})}))
    return 0


class Interrupted(KeyboardInterrupt):
    """An interrupt with a message of what was done (printed by the command line instead of its default)."""


def run_probe(args: argparse.Namespace) -> int:
    from svdedit.runtime.editing import probe
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.files import check_output
    from svdedit.runtime.images import IMAGE_SUFFIXES as WRITABLE

    check_output(args.output, "-o", suffixes=tuple(WRITABLE))
    if args.probe == "sweep" and len(args.index) * len(args.factors) > LIMITS.max_grid:
        raise SvdeditError(f"--index x --factors make a grid of {len(args.index) * len(args.factors)} images; the "
                           f"limit is {LIMITS.max_grid}.")
    common = {"seed": args.seed, "steps": args.steps, "guidance": args.guidance}
    with open_pipeline(args) as pipe:
        if args.probe == "sweep":
            info = probe.sweep(pipe, args.prompt, args.output, t_edit=args.t_edit, index=args.index,
                               channels=args.channels, factors=args.factors, **common)
        elif args.probe == "subspace":
            info = probe.subspace(pipe, args.prompt, args.output, k=args.k, **common)
        else:
            info = probe.rank(pipe, args.prompt, args.target_prompt, args.output, t_ref=args.t_ref, **common)
    print(json.dumps(info))
    return 0
