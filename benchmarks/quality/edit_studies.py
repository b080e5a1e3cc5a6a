"""The studies of bench_edit_quality beyond success and identity: strength, transfer, real images without captions.

- strength: a continuous reading of the edited image (models/shapes_data.measure: hue, extent, centroid x,
  fill) at strengths 0 to 1 in steps of 0.125 on held-out seeds, for the raw blend (alpha = strength) and
  for the calibrated strength scale (Attribute.blend); the median per strength, the largest step as a
  fraction of the whole change (target: at most 0.25, monotone), and strips of images;
- transfer: the attribute applied to every prompt of the world whose source attribute matches (18 to 54
  prompts), several seeds each: success and identity per prompt, the spread and the worst prompts, and
  per value of every other attribute (e.g. the colour learned on a circle, applied to squares and triangles);
- captions: real renders edited with (i) their exact caption, (ii) a caption naming only the attribute
  ("a red shape"), as written and edited as uncaptioned, (iii) no caption at all.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from models.shapes_data import ATTRIBUTES, POSITION_WORDS, READINGS, all_attributes, measure, render, \
    sample_attributes, score_edit

STRENGTH_GRID = tuple(i / 8 for i in range(9))
STRENGTH_SEED0, TRANSFER_SEED0 = 40_000, 45_000
CAPTION_SEED = 30_000  # the renders of bench_edit_quality's real-image rows


def _summary(scores: list[dict]) -> dict:
    from benchmarks.quality.scoring import summarise

    return summarise(scores)


# ------------------------------------------------------------------------------------------------
def strength(editor, pair, attr, n_seeds: int) -> tuple[dict, dict]:
    """Readings against strength, raw and calibrated; and strips (two seeds x the strengths) for each."""
    from benchmarks.quality.scoring import prompts_for
    from svdedit.runtime.editing.edit import Recipe
    from svdedit.runtime.images import to_uint8

    pipe, knobs = editor.pipe, attr.knobs
    prompts, _ = prompts_for(pair, n_seeds, seed=500 + ATTRIBUTES.index(pair.attribute))
    seeds = list(range(STRENGTH_SEED0, STRENGTH_SEED0 + n_seeds))
    e = pipe.encode_prompt(prompts + editor.targets([attr], prompts))
    e_src, e_tgt = e[:n_seeds], e[n_seeds:]
    x, z = editor.sample_pair(np.concatenate([pipe.noise(s) for s in seeds]), e_src, e_tgt, knobs)
    key, unit = READINGS[pair.attribute]
    out = {"reading": key, "unit": unit, "strengths": list(STRENGTH_GRID), "seeds": n_seeds}
    strips = {}
    for scale, a in (("raw blend", dataclasses.replace(attr, strength_map=())), ("calibrated", attr)):
        readings, strip, source = [], [], None
        for st in STRENGTH_GRID:
            lat, x0 = editor.edit_latents(Recipe.for_all([a], st, n_seeds), x, z, e_src, e_tgt, knobs, with_source=True)
            images = to_uint8(pipe.decode(lat))
            readings.append([measure(im)[key] for im in images])
            strip.append(images[:2])
            if source is None:
                source = to_uint8(pipe.decode(x0))
        at_one = _summary([score_edit(s, e_, pair.attribute, pair.target) for s, e_ in zip(source, images)])
        r = np.array(readings)                                     # (strengths, seeds)
        med = np.nanmedian(r, axis=1)
        change = med[-1] - med[0]
        frac = (med - med[0]) / change if abs(change) > 1e-9 else np.zeros_like(med)
        steps = np.diff(frac)
        per_image = (r - r[0]) / np.where(np.abs(r[-1] - r[0]) > 1e-9, r[-1] - r[0], np.nan)
        out[scale] = {"median": [round(float(v), 2) for v in med], "fraction_of_change": [round(float(v), 3) for v in frac],
                      "largest_step": round(float(steps.max()), 3), "monotone": bool(np.all(steps >= -0.02)),
                      "meets_target": bool(np.all(steps >= -0.02) and steps.max() <= 0.25),
                      "largest_step_per_image_median": round(float(np.nanmedian(np.nanmax(np.diff(per_image, axis=0), axis=0))), 3),
                      "at_strength_1": at_one, "blend_at": [round(a.blend(st), 3) for st in STRENGTH_GRID]}
        strips[scale] = np.stack(strip)                            # (strengths, 2, H, W, 3)
    return out, strips


def strip_png(strips: dict, path) -> None:
    """Rows: each pair x {raw blend, calibrated} x two seeds; columns: strengths 0 to 1."""
    from PIL import Image, ImageDraw

    rows = [(f"{attr} {scale}, seed {k + 1}", arr[:, k]) for attr, scales in strips.items()
            for scale, arr in scales.items() for k in range(arr.shape[1])]
    cell, left, top = 64, 190, 18
    canvas = Image.new("RGB", (left + cell * len(STRENGTH_GRID), top + cell * len(rows)), "white")
    d = ImageDraw.Draw(canvas)
    for c, st in enumerate(STRENGTH_GRID):
        d.text((left + c * cell + 18, 3), f"{st:.3g}", fill="black")
    for r, (label, images) in enumerate(rows):
        d.text((4, top + r * cell + 26), label, fill="black")
        for c, im in enumerate(images):
            canvas.paste(Image.fromarray(im), (left + c * cell, top + r * cell))
    canvas.save(path)


# ------------------------------------------------------------------------------------------------
def transfer(editor, pair, attr, seeds_per_prompt: int, batch: int) -> dict:
    """The attribute on every prompt of the world that has its source value, `seeds_per_prompt` seeds each."""
    cells = [a for a in all_attributes() if getattr(a, pair.attribute) == pair.source]
    prompts = [c.caption() for c in cells for _ in range(seeds_per_prompt)]
    seeds = [TRANSFER_SEED0 + i for i in range(len(prompts))]
    r = editor.edit_seeds([attr], prompts, seeds, batch=batch)
    scores = [score_edit(s, e, pair.attribute, pair.target) for s, e in zip(r.source, r.edited)]
    per_cell = {}
    for c, i in zip(cells, range(0, len(scores), seeds_per_prompt)):
        per_cell[c.caption()] = _summary(scores[i:i + seeds_per_prompt])
    both = np.array([v["success_and_identity"] for v in per_cell.values()])
    by_value = {}
    for other in (k for k in ATTRIBUTES if k != pair.attribute):
        for value in sorted({getattr(c, other) for c in cells}):
            members = [s for c, i in zip(cells, range(0, len(scores), seeds_per_prompt)) if getattr(c, other) == value
                       for s in scores[i:i + seeds_per_prompt]]
            by_value[f"{other}={value}"] = _summary(members)
    worst = sorted(per_cell.items(), key=lambda kv: (kv[1]["success_and_identity"], kv[1]["success"]))[:5]
    return {"prompts": len(cells), "seeds_per_prompt": seeds_per_prompt, "overall": _summary(scores),
            "cells_both_min": float(both.min()), "cells_both_std": round(float(both.std()), 3),
            "cells_with_both_below_half": int((both < 0.5).sum()), "by_value": by_value,
            "worst": [{"prompt": k, **v} for k, v in worst], "per_prompt": per_cell}


# ------------------------------------------------------------------------------------------------
def attribute_only_caption(pair) -> str:
    """A caption naming only the attribute: "a red shape", "a small shape", "a circle", "a shape on the left"."""
    if pair.attribute == "shape":
        return f"a {pair.source}"
    if pair.attribute == "position":
        return f"a shape {POSITION_WORDS[pair.source]}"
    return f"a {pair.source} shape"


def captions(editor, pair, attr, n_renders: int, batch: int) -> dict:
    """Real renders edited with their exact caption, with the attribute only, and with none."""
    rng = np.random.default_rng(CAPTION_SEED + len(pair.attribute))
    attrs = [sample_attributes(rng).replace(**{pair.attribute: pair.source}) for _ in range(n_renders)]
    renders = np.stack([render(a, rng) for a in attrs])
    images = (renders.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2)
    partial = attribute_only_caption(pair)
    modes = {"(i) exact caption": ([a.caption() for a in attrs], None),
             f"(ii) the attribute only, {partial!r}, rewritten": ([partial] * n_renders, None),
             f"(ii) the attribute only, {partial!r}, edited as uncaptioned": ([partial] * n_renders, [None] * n_renders),
             "(iii) no caption": ([""] * n_renders, None)}
    out = {}
    for mode, (caps, targets) in modes.items():
        r = editor.edit_images([attr], images, caps, target_prompts=targets, batch=batch)
        scores = [score_edit(s, e, pair.attribute, pair.target) for s, e in zip(renders, r.edited)]
        out[mode] = {**_summary(scores), "caption": caps[0], "target": r.target_prompts[0]}
    return out


# ------------------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    lines = ["# Strength: a slider that slides", "",
             "Median of a continuous reading of the edited image over held-out seeds, at strengths 0 to 1 (raw: "
             "alpha = strength; calibrated: the attribute's strength scale, measured on its learning pair when it is "
             "learned). Largest step: the largest move between two neighbouring strengths, as a fraction of the whole "
             "change (target: at most 0.25, and monotone). Per image: the median over seeds of each image's own "
             "largest step (1.0 = the image switches at one strength). Strips: edit_strength.png.", ""]
    for attr, r in res["pairs"].items():
        s = r["strength"]
        lines += [f"## {attr}: {s['reading']} ({s['unit']}), {s['seeds']} seeds", "",
                  "| scale | " + " | ".join(f"{v:g}" for v in s["strengths"]) + " | largest step | per image | monotone |"
                  " success / identity at 1 |", "|---|" + "---|" * (len(s["strengths"]) + 4)]
        for scale in ("raw blend", "calibrated"):
            c = s[scale]
            lines.append(f"| {scale} | " + " | ".join(f"{v:g}" for v in c["median"]) +
                         f" | {c['largest_step']:.2f} | {c['largest_step_per_image_median']:.2f} | "
                         f"{'yes' if c['monotone'] else 'no'} | {c['at_strength_1']['success']:.0%} / "
                         f"{c['at_strength_1']['identity']:.0%} |")
        lines.append("| calibrated alpha | " + " | ".join(f"{v:g}" for v in s["calibrated"]["blend_at"]) + " | | | | |")
        lines.append("")
    lines += ["# Transfer: learned once, applied to every prompt", ""]
    lines += ["| attribute | prompts x seeds | success | identity | both | worst prompt (both) | prompts below 50% | spread (std) |",
              "|---|---|---|---|---|---|---|---|"]
    for attr, r in res["pairs"].items():
        t = r["transfer"]
        o, w = t["overall"], t["worst"][0]
        lines.append(f"| {attr} | {t['prompts']} x {t['seeds_per_prompt']} | {o['success']:.0%} | {o['identity']:.0%} | "
                     f"{o['success_and_identity']:.0%} | {w['prompt']!r} ({w['success_and_identity']:.0%}) | "
                     f"{t['cells_with_both_below_half']} | {t['cells_both_std']:.2f} |")
    lines += ["", "By the value of each other attribute (success and identity, both):", ""]
    for attr, r in res["pairs"].items():
        parts = [f"{k} {v['success_and_identity']:.0%}" for k, v in r["transfer"]["by_value"].items()]
        lines.append(f"- {attr} (learned on {r['learn_prompt']!r}): " + ", ".join(parts))
    lines += ["", "# Real images without their caption", "",
              "Real renders, DDIM-inverted. An image whose caption does not contain the attribute's word is edited "
              "along the attribute's own prompt pair (e(target) - e(source) added to its caption's embedding) at "
              "knobs.uncaptioned_guidance.", "",
              "| attribute | caption | success | identity | both | target used |", "|---|---|---|---|---|---|"]
    for attr, r in res["pairs"].items():
        for mode, c in r["captions"].items():
            lines.append(f"| {attr} | {mode} | {c['success']:.0%} | {c['identity']:.0%} | {c['success_and_identity']:.0%} | "
                         f"{c['target'][:60]} |")
    return "\n".join(lines) + "\n"
