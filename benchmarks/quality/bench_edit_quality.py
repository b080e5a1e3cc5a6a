"""Does the edit work? AVI on the embedded model, scored by the exact attribute reader.

    python -m benchmarks.quality.bench_edit_quality [--engine DIR] [--seeds 100] [--renders 20]

For each of four attribute pairs (colour red -> blue, size small -> large, shape circle -> square,
position left -> right) one attribute is learned from ONE prompt pair at seed 0, then applied to
--seeds held-out seeds (noise seeds 10000..., prompts with random other attributes) and to --renders
real renders of the shapes world (DDIM-inverted first). Every method below runs on the same seeds,
in the same run:

- AVI (our defaults, runtime/svdedit/runtime/editing/knobs.py Knobs) at strength 1, and at 0.25 / 0.5 / 0.75 / 1.5;
- AVI with each of its four losses switched off in turn (the paper's ablation);
- AVI as the paper reads literally: continuing with the *source* prompt after T_x;
- (a) regenerating with the target prompt from the same noise;
- (b) DDIM-inverting the source image (guidance 1) and sampling the target prompt (guidance as AVI);
- (c) no injection: the source prompt to T_x, then the target prompt (y = x): what switching the prompt
  alone does, so that AVI's rows show what the learned injection adds;
- (d) the untrained MLP (--iters 0: S = f, x plus z's top-k part).

Then the studies of benchmarks/quality/edit_studies.py on the same attributes: strength (a continuous reading at
strengths 0 to 1, raw blend against the calibrated scale, with strips of images), transfer (every prompt
of the world with the source attribute) and real images without their caption.

Scores (models/shapes_data.score_edit): success = the target attribute is read on the edited image;
identity = the three other attributes read as on the source image; PSNR outside both shapes (grown by
3 px). Writes benchmarks/results/edit_quality.{json,md}, edit_quality_examples.png and edit_strength.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.quality import edit_studies as studies
from benchmarks.quality.scoring import MODEL, PAIRS, SEED0, EditPair, prompts_for, summarise
from benchmarks.engines import ensure_engine
from benchmarks.machine import describe
from models.shapes_data import render, sample_attributes, score_edit

RESULTS = Path(__file__).resolve().parents[1] / "results"
RENDER_SEED = 30_000
STRENGTHS = (0.25, 0.5, 0.75, 1.5)
ABLATIONS = {"no target loss": "w_target", "no source loss": "w_source",
             "no target-sv loss": "w_target_sv", "no source-sv loss": "w_source_sv"}



def run_pair(editor, pair: EditPair, n_seeds: int, n_renders: int, batch: int, log,
             ablations: bool = True) -> tuple[dict, dict]:
    """Learn the pair's attribute (and, with `ablations`, its ablations and the paper's literal reading), score
    every method on generated images and on renders."""
    from svdedit.runtime.editing.learn import calibrate, learn
    from svdedit.runtime.editing.knobs import Knobs

    knobs = Knobs()
    learn_target = pair.learn_prompt.replace(pair.source, pair.target)
    t0 = time.perf_counter()
    attr = learn(editor, pair.learn_prompt, learn_target, seed=0, knobs=knobs.replace(calibration_seeds=0))
    learn_s = time.perf_counter() - t0
    attr = dataclasses.replace(attr, knobs=knobs)
    attr = dataclasses.replace(attr, strength_map=calibrate(editor, attr))  # what learn(knobs) does, timed apart
    calibrate_s = time.perf_counter() - t0 - learn_s
    variants = {}
    if ablations:
        variants = {"AVI, " + name: learn(editor, pair.learn_prompt, learn_target, seed=0,
                                          knobs=knobs.replace(**{w: 0.0}, calibration_seeds=0))
                    for name, w in ABLATIONS.items()}
        variants["AVI, source continuation (paper, literal)"] = dataclasses.replace(
            attr, knobs=knobs.replace(continuation="source"))
        variants["(d) untrained MLP (--iters 0)"] = learn(editor, pair.learn_prompt, learn_target, seed=0,
                                                          knobs=knobs.replace(iters=0, calibration_seeds=0))
    generated, examples = _on_generated(editor, pair, attr, variants, n_seeds, batch, log)
    real, real_pictures = _on_renders(editor, pair, attr, n_renders, batch)
    return {"learn_prompt": pair.learn_prompt, "learn_target": learn_target, "learn_seconds": learn_s,
            "calibrate_seconds": calibrate_s, "losses": attr.losses, "strength_map": attr.strength_map, "generated": generated, "real_renders": real,
            "attribute": attr}, {"examples": examples, "real": real_pictures}


def _on_generated(editor, pair: EditPair, attr, variants: dict, n_seeds: int, batch: int, log) -> tuple[dict, list]:
    """Every method on the same held-out seeds: one pair (x, z) per seed, shared by the AVI variants."""
    from svdedit.runtime.editing.edit import Recipe, edit_step
    from svdedit.runtime.images import to_uint8

    pipe, knobs = editor.pipe, attr.knobs
    prompts, _ = prompts_for(pair, n_seeds, seed=100 + PAIRS.index(pair))
    seeds = list(range(SEED0, SEED0 + n_seeds))
    methods: dict[str, list] = {}
    examples = []
    _, i_z = edit_step(pipe.schedule, knobs)
    for b0 in range(0, n_seeds, batch):
        sp, sd = prompts[b0:b0 + batch], seeds[b0:b0 + batch]
        n = len(sp)
        e = pipe.encode_prompt(sp + editor.targets([attr], sp))
        e_src, e_tgt = e[:n], e[n:]
        x, z = editor.sample_pair(np.concatenate([pipe.noise(s) for s in sd]), e_src, e_tgt, knobs)
        out = {}
        out["AVI (strength 1)"], x_end = editor.edit_latents(Recipe.for_all([attr], 1.0, n), x, z, e_src, e_tgt, knobs,
                                                             with_source=True)
        for a in STRENGTHS:
            out[f"AVI strength {a}"], _ = editor.edit_latents(Recipe.for_all([attr], a, n), x, z, e_src, e_tgt, knobs)
        for name, variant in variants.items():
            out[name], _ = editor.edit_latents(Recipe.for_all([variant], 1.0, n), x, z, e_src, e_tgt, variant.knobs)
        out["(c) no injection: switch the prompt at T_x"], _ = editor.finish(Recipe.for_all([attr], 1.0, n), x, z, x,
                                                                             e_src, e_tgt, knobs)
        out["(a) regenerate with target prompt"] = pipe.denoise(z, e_tgt, knobs.steps, knobs.guidance, start=i_z).latent
        src_img = pipe.decode(x_end)
        traj = pipe.invert_latents(pipe.encode(src_img), e_src, knobs.steps, 1.0)
        out["(b) invert, sample target prompt"] = pipe.denoise(traj[-1], e_tgt, knobs.steps, knobs.guidance).latent
        src_u8 = to_uint8(src_img)
        for name, lat in out.items():
            imgs = to_uint8(pipe.decode(lat))
            methods.setdefault(name, []).extend(score_edit(s, e_, pair.attribute, pair.target)
                                                for s, e_ in zip(src_u8, imgs))
            if b0 == 0 and name in ("AVI (strength 1)", "(a) regenerate with target prompt",
                                    "(b) invert, sample target prompt"):
                examples.append((name, imgs[:6]))
        if b0 == 0:
            examples.insert(0, ("source", src_u8[:6]))
        log(f"  {pair.attribute}: {min(b0 + batch, n_seeds)}/{n_seeds} seeds")
    result = {name: summarise(s) for name, s in methods.items()}
    result["source image shows the source attribute"] = float(np.mean(
        [s["source_read"][pair.attribute] == pair.source for s in methods["AVI (strength 1)"]]))
    return result, examples


def _on_renders(editor, pair: EditPair, attr, n_renders: int, batch: int) -> tuple[dict, tuple]:
    """AVI and (b) on real renders of the shapes world, DDIM-inverted first."""
    from svdedit.runtime.images import to_uint8

    pipe, knobs = editor.pipe, attr.knobs
    rng = np.random.default_rng(RENDER_SEED + len(pair.attribute))
    attrs = [sample_attributes(rng).replace(**{pair.attribute: pair.source}) for _ in range(n_renders)]
    renders = np.stack([render(a, rng) for a in attrs])
    images = (renders.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)
    rp = [a.caption() for a in attrs]
    r = editor.edit_images([attr], images, rp, strength=1.0, batch=batch)
    real = {"AVI (strength 1)": [score_edit(s, e_, pair.attribute, pair.target) for s, e_ in zip(renders, r.edited)]}
    e = pipe.encode_prompt(rp + r.target_prompts)
    traj = pipe.invert_latents(pipe.encode(images), e[:n_renders], knobs.steps, 1.0)
    b_img = to_uint8(pipe.decode(pipe.denoise(traj[-1], e[n_renders:], knobs.steps, knobs.guidance).latent))
    real["(b) invert, sample target prompt"] = [score_edit(s, e_, pair.attribute, pair.target)
                                                for s, e_ in zip(renders, b_img)]
    return {name: summarise(s) for name, s in real.items()}, (renders[:6], r.edited[:6])


def grid_png(pictures: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    rows = []
    for attr, pics in pictures.items():
        for name, imgs in pics["examples"]:
            rows.append((f"{attr}: {name}", imgs))
    cell, label_w = 64, 230
    canvas = Image.new("RGB", (label_w + 6 * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        draw.text((4, r * cell + 26), label, fill="black")
        for c, img in enumerate(imgs):
            canvas.paste(Image.fromarray(img), (label_w + c * cell, r * cell))
    canvas.save(path)


def markdown(res: dict) -> str:
    lines = ["# Edit quality on the embedded model", "",
             f"{res['seeds']} held-out seeds per pair, {res['renders']} real renders per pair, {res['knobs']['steps']} "
             f"DDIM steps, guidance {res['knobs']['guidance']}, T_x = {res['knobs']['t_edit']} T. Machine: "
             f"{res['machine'].get('cpu', '')}. Produced by `python -m benchmarks.quality.bench_edit_quality`.", "",
             "success = target attribute read on the edit; identity = the other three attributes unchanged; "
             "both = success and identity; PSNR outside both shapes (grown 3 px), median.", ""]
    for attr, r in res["pairs"].items():
        lines += [f"## {attr}: {r['learn_prompt']!r} -> {r['learn_target']!r} (learned in {r['learn_seconds']:.2f} s, "
                  f"strength scale calibrated in {r['calibrate_seconds']:.1f} s)", "",
                  f"Source images showing the source attribute: {r['generated']['source image shows the source attribute']:.0%}", "",
                  "| generated images | success | identity | both | PSNR outside (dB) |", "|---|---|---|---|---|"]
        for name, s in r["generated"].items():
            if isinstance(s, dict):
                lines.append(f"| {name} | {s['success']:.0%} | {s['identity']:.0%} | {s['success_and_identity']:.0%} | "
                             f"{s['psnr_outside_median_db']:.1f} |")
        lines += ["", "| real renders (inverted) | success | identity | both | PSNR outside (dB) |", "|---|---|---|---|---|"]
        for name, s in r["real_renders"].items():
            lines.append(f"| {name} | {s['success']:.0%} | {s['identity']:.0%} | {s['success_and_identity']:.0%} | "
                         f"{s['psnr_outside_median_db']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from dataclasses import asdict

    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.pipeline import Pipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="engine dir of models/shapes (default: export to a temp dir)")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--renders", type=int, default=20)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--strength-seeds", type=int, default=12, help="held-out seeds of the strength study")
    ap.add_argument("--transfer-seeds", type=int, default=2, help="seeds per prompt of the transfer study")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    engine = ensure_engine(MODEL, args.engine)
    t0 = time.perf_counter()
    res = {"machine": describe(), "seeds": args.seeds, "renders": args.renders, "knobs": asdict(Knobs()), "pairs": {}}
    pictures = {}
    strips = {}
    log = lambda m: print(m, flush=True)  # noqa: E731
    with Pipeline(engine) as pipe:
        editor = Editor(pipe)
        for pair in PAIRS:
            r, pictures[pair.attribute] = run_pair(editor, pair, args.seeds, args.renders, args.batch, log)
            attr = r.pop("attribute")
            r["strength"], strips[pair.attribute] = studies.strength(editor, pair, attr, args.strength_seeds)
            log(f"  {pair.attribute}: strength done")
            r["transfer"] = studies.transfer(editor, pair, attr, args.transfer_seeds, args.batch)
            log(f"  {pair.attribute}: transfer done")
            r["captions"] = studies.captions(editor, pair, attr, args.renders, args.batch)
            res["pairs"][pair.attribute] = r
    res["wall_seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edit_quality.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "edit_quality.md").write_text(markdown(res) + studies.markdown(res))
    grid_png(pictures, args.out / "edit_quality_examples.png")
    studies.strip_png(strips, args.out / "edit_strength.png")
    print(markdown(res) + studies.markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
