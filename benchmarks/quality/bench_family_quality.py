"""Does AVI edit as well on the SDXL architecture as on SD 1.x's? The same four attribute pairs, the same held-out
seeds, prompts and renders, the exact attribute reader, on two models trained on the same shapes world:

- models/shapes (SD 1.x architecture: one CLIP text encoder, cross-attention; models/train_shapes.py);
- models/shapes_xl (SDXL architecture: two text encoders, penultimate states concatenated, the pooled vector and
  size ids as added conditioning, zeros as the unconditional input; models/train_shapes_xl.py, the same VAE).

    python -m benchmarks.quality.bench_family_quality [--seeds 100] [--renders 20] [--sd-engine DIR] [--xl-engine DIR]

Per model and pair: the attribute is learned from ONE prompt pair at seed 0 with the default knobs (as
benchmarks/quality/bench_edit_quality.py, without its ablations and studies), then applied to the held-out seeds
(AVI at strength 1 and 0.25 to 1.5; the baselines (a) regenerate with the target prompt, (b) invert and sample the
target prompt, (c) switch the prompt at T_x without injection) and to real renders, DDIM-inverted first.

Writes benchmarks/results/family_quality.{json,md} and family_quality_examples_xl.png (the SDXL model's edits).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.engines import ensure_engine
from benchmarks.machine import describe
from benchmarks.quality.bench_edit_quality import grid_png, run_pair
from benchmarks.quality.scoring import MODEL, PAIRS

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODELS = {"SD 1.x architecture (models/shapes)": MODEL, "SDXL architecture (models/shapes_xl)": MODEL.parent / "shapes_xl"}
ROWS = ("AVI (strength 1)", "AVI strength 1.5", "(c) no injection: switch the prompt at T_x",
        "(a) regenerate with target prompt", "(b) invert, sample target prompt")


def run_model(engine: Path, seeds: int, renders: int, batch: int, log) -> tuple[dict, dict]:
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    pairs, pictures = {}, {}
    with Pipeline(engine) as pipe:
        editor = Editor(pipe)
        family = pipe.manifest.family
        for pair in PAIRS:
            r, pictures[pair.attribute] = run_pair(editor, pair, seeds, renders, batch, log, ablations=False)
            r.pop("attribute")
            pairs[pair.attribute] = r
    return {"family": family, "pairs": pairs}, pictures


def markdown(res: dict) -> str:
    names = list(res["models"])
    lines = ["# AVI on the SD 1.x and SDXL architectures, the same shapes world", "",
             f"{res['seeds']} held-out seeds and {res['renders']} real renders per pair, {res['knobs']['steps']} DDIM "
             f"steps, guidance {res['knobs']['guidance']}, T_x = {res['knobs']['t_edit']} T; each attribute learned "
             f"from one prompt pair at seed 0. Machine: {res['machine'].get('cpu', '')}, {res['machine'].get('cores')} "
             f"cores. Produced by `python -m benchmarks.quality.bench_family_quality` in {res['wall_seconds'] / 60:.1f} min.",
             "", "success = the target attribute is read on the edit; identity = the other three attributes unchanged; "
             "both = success and identity (models/shapes_data.score_edit, an exact reader).", ""]
    short = {n: n.split(" (")[0] for n in names}
    for attr in res["models"][names[0]]["pairs"]:
        learn = res["models"][names[0]]["pairs"][attr]
        lines += [f"## {attr}: {learn['learn_prompt']!r} -> {learn['learn_target']!r}", "",
                  "| method | " + " | ".join(f"{short[n]}: success / identity / both" for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        for where, rows in (("generated", ROWS), ("real_renders", ("AVI (strength 1)", "(b) invert, sample target prompt"))):
            for row in rows:
                cells = []
                for n in names:
                    s = res["models"][n]["pairs"][attr][where].get(row)
                    cells.append(f"{s['success']:.0%} / {s['identity']:.0%} / {s['success_and_identity']:.0%}" if s else "")
                label = row if where == "generated" else f"real renders: {row}"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## AVI at strength 1, all four pairs", "", "| model | pair | generated: both | real renders: both |",
              "|---|---|---|---|"]
    for n in names:
        for attr, r in res["models"][n]["pairs"].items():
            lines.append(f"| {short[n]} | {attr} | {r['generated']['AVI (strength 1)']['success_and_identity']:.0%} | "
                         f"{r['real_renders']['AVI (strength 1)']['success_and_identity']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from svdedit.runtime.editing.knobs import Knobs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--renders", type=int, default=20)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--sd-engine", type=Path, help="engine dir of models/shapes (default: exported to a temp dir)")
    ap.add_argument("--xl-engine", type=Path, help="engine dir of models/shapes_xl (default: exported to a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    res = {"machine": describe(), "seeds": args.seeds, "renders": args.renders, "knobs": asdict(Knobs()), "models": {}}
    pictures_xl = None
    for (name, model), given in zip(MODELS.items(), (args.sd_engine, args.xl_engine)):
        log(f"{name} ...")
        res["models"][name], pictures = run_model(ensure_engine(model, given), args.seeds, args.renders, args.batch, log)
        pictures_xl = pictures
    res["wall_seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "family_quality.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "family_quality.md").write_text(markdown(res))
    grid_png(pictures_xl, args.out / "family_quality_examples_xl.png")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
