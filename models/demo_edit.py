"""The demo's last step: edit held-out images with a learned attribute, write a grid and the metrics.

    python -m models.demo_edit --engine DIR --attr ATTR --attribute colour --to blue -o OUT_DIR [--n 16]

Sources are generated from prompts never used for learning (random shape, size and position, the
attribute's source word), one seed each; the edit is read back with models/shapes_data's exact
reader. Writes OUT_DIR/grid.png (top row: sources, bottom row: edits) and OUT_DIR/metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.shapes_data import sample_attributes, score_edit


def main(argv: list[str] | None = None) -> int:
    from svdedit.runtime.editing.avi import Attribute
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.files import write_json
    from svdedit.runtime.images import save_png
    from svdedit.runtime.pipeline import Pipeline

    ap = argparse.ArgumentParser(prog="python -m models.demo_edit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--attr", required=True)
    ap.add_argument("--attribute", default="colour", help="which attribute the file edits (for scoring)")
    ap.add_argument("--to", default="blue", help="the value the edit should produce (for scoring)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=4242, help="first held-out seed")
    ap.add_argument("-o", "--output", required=True, type=Path)
    args = ap.parse_args(argv)
    with Pipeline(args.engine) as pipe:
        editor = Editor(pipe)
        attr = Attribute.load(args.attr, engine=editor.engine_ids)
        source_word = next(w for w in attr.source.split() if w not in attr.target.split())
        rng = np.random.default_rng(args.seed)
        prompts = [sample_attributes(rng).replace(**{args.attribute: source_word}).caption() for _ in range(args.n)]
        seeds = list(range(args.seed, args.seed + args.n))
        r = editor.edit_seeds([attr], prompts, seeds)
    scores = [score_edit(s, e, args.attribute, args.to) for s, e in zip(r.source, r.edited)]
    top, bottom = np.concatenate(list(r.source), axis=1), np.concatenate(list(r.edited), axis=1)
    grid = np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom], axis=0).repeat(2, 0).repeat(2, 1)
    save_png(grid, args.output / "grid.png")
    metrics = {"attribute": f"{attr.source!r} -> {attr.target!r}", "images": args.n,
               "success": float(np.mean([s["success"] for s in scores])),
               "identity": float(np.mean([s["identity"] for s in scores])),
               "psnr_outside_median_db": float(np.median([s["psnr_outside"] for s in scores])),
               "prompts": prompts, "seeds": seeds}
    write_json(args.output / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("prompts", "seeds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
