"""The knob sweep that chose AVI's defaults (T_x, source-loss weight, k), on fewer seeds than the benchmark.

    python -m benchmarks.quality.sweep_edit_knobs [--engine DIR] [--seeds 24]

For each knob setting and each attribute pair of bench_edit_quality, learn the attribute from its one
prompt pair and edit --seeds held-out seeds (50000...); prints "pair success-and-identity/PSNR
outside (dB)" per setting. Results of the run that set the defaults: results/edit_knob_sweep.txt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.quality.scoring import MODEL, PAIRS, prompts_for, summarise
from benchmarks.engines import ensure_engine
from models.shapes_data import score_edit

SETTINGS = [(0.5, 0.25, 4), (0.5, 0.1, 4), (0.5, 0.0, 4), (0.6, 0.1, 4), (0.4, 0.1, 4), (0.5, 0.1, 8), (0.5, 0.1, 2)]


def main(argv: list[str] | None = None) -> int:
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.pipeline import Pipeline

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path)
    ap.add_argument("--seeds", type=int, default=24)
    args = ap.parse_args(argv)
    with Pipeline(ensure_engine(MODEL, args.engine)) as pipe:
        ed = Editor(pipe)
        for t_edit, w_source, k in SETTINGS:
            kn = Knobs(t_edit=t_edit, w_source=w_source, k=k)
            row = []
            for pair in PAIRS:
                a = learn(ed, pair.learn_prompt, pair.learn_prompt.replace(pair.source, pair.target), 0, kn)
                prompts, _ = prompts_for(pair, args.seeds, seed=900 + PAIRS.index(pair))
                r = ed.edit_seeds([a], prompts, list(range(50000, 50000 + args.seeds)), batch=24)
                s = summarise([score_edit(x, y, pair.attribute, pair.target) for x, y in zip(r.source, r.edited)])
                row.append(f"{pair.attribute[:5]} {s['success_and_identity']:.2f}/{s['psnr_outside_median_db']:.1f}")
            print(f"t={t_edit} ws={w_source} k={k}: " + "  ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
