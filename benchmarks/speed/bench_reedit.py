"""Invert once, edit many: the latency of a re-edit (another strength, another attribute) against a full edit.

    python -m benchmarks.speed.bench_reedit --model shapes                 # the embedded model, 5 repeats
    python -m benchmarks.speed.bench_reedit --model sd15 --work /tmp/sd15  # SD 1.5 shape (bench_speed.py's engine), 1 repeat

One real image at the default knobs (50 steps, T_x = 0.4 T, guidance 3) through Editor.edit_images with an
EditCache: the first edit is a full edit (encode, 50 inversion steps, the target prompt sampled to T_x, the
injection, the rest, decode) and fills the cache; then the same image at another strength (the injection, the
rest, decode), then with another attribute (z sampled again for its target prompt; the inversion reused).
On the embedded model every re-edit's image is compared with a full edit at that strength without a cache, in
the same batch composition (it must be byte-equal; on the SD 1.5 shape that would cost two more full edits). On the SD 1.5 shape the attributes' MLPs are those of bench_speed.py
(learned at 10 steps; the knobs set to 50 steps): the latency does not depend on what the MLP learned.

Writes benchmarks/results/reedit_<model>_cpu.json and appends nothing else; the README quotes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"


def attributes(args, engine: Path):
    """(red -> blue, red -> green) for the model."""
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing.avi import Attribute
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.pipeline import Pipeline

    src = "a large red circle in the middle"
    if args.model == "shapes":
        with Pipeline(engine) as pipe:
            editor = Editor(pipe)
            return [learn(editor, src, src.replace("red", c), seed=0, knobs=Knobs(calibration_seeds=0))
                    for c in ("blue", "green")]
    base = Attribute.load(args.work / "red2blue-10.safetensors")
    knobs = base.knobs.replace(steps=50)
    return [dataclasses.replace(base, knobs=knobs),
            dataclasses.replace(base, knobs=knobs, target=src.replace("red", "green"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("shapes", "sd15"), default="shapes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15"))
    ap.add_argument("--repeats", type=int, default=None, help="default: 5 (shapes), 1 (sd15)")
    args = ap.parse_args(argv)
    from benchmarks.speed.edit_peers import images, prompts
    from benchmarks.machine import describe
    from svdedit.export.exporter import export_model
    from svdedit.runtime.editing.cache import EditCache
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.pipeline import Pipeline

    if args.model == "shapes":
        engine = Path(tempfile.mkdtemp(prefix="reedit-")) / "engine"
        export_model(MODEL, engine)
    else:
        engine = args.work / "engine-fp32"
    repeats = args.repeats or (5 if args.model == "shapes" else 1)
    blue, green = attributes(args, engine)
    prompt = prompts(1)[0]  # the caption of the rendered image
    with Pipeline(engine) as pipe:
        img = images(1, pipe.size)
        plain = Editor(pipe)
        short = dataclasses.replace(blue, knobs=blue.knobs.replace(steps=2))
        plain.edit_images([short], img, [prompt], strength=1.0)  # warm-up: every session, 2 steps
        runs = []
        for _ in range(repeats):
            editor = Editor(pipe, cache=EditCache())
            row = {}
            t = time.perf_counter()
            editor.edit_images([blue], img, [prompt], strength=1.0)
            row["full_edit_s"] = time.perf_counter() - t
            t = time.perf_counter()
            again = editor.edit_images([blue], img, [prompt], strength=0.5)
            row["reedit_strength_s"] = time.perf_counter() - t
            t = time.perf_counter()
            other = editor.edit_images([green], img, [prompt], strength=1.0)
            row["reedit_attribute_s"] = time.perf_counter() - t
            runs.append(row)
        if args.model == "shapes":  # the same on the SD 1.5 shape would cost two more full edits (11 min here)
            full_half = plain.edit_images([blue], img, [prompt], strength=0.5)
            full_green = plain.edit_images([green], img, [prompt], strength=1.0)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    machine = describe()
    res = {"benchmark": "bench_reedit", "command": "python -m benchmarks.speed.bench_reedit " + " ".join(sys.argv[1:]),
           "model": args.model, "steps": blue.knobs.steps, "t_edit": blue.knobs.t_edit, "repeats": repeats,
           "machine": machine, "device_label": f"{machine['cpu']}, {machine['cores']} cores", "runs": runs,
           "median_s": med,
           "reedit_strength_fraction": med["reedit_strength_s"] / med["full_edit_s"],
           "reedit_attribute_fraction": med["reedit_attribute_s"] / med["full_edit_s"],
           "max_uint8_difference_vs_full_edit": {
               "strength": int(np.abs(again.edited.astype(int) - full_half.edited).max()),
               "attribute": int(np.abs(other.edited.astype(int) - full_green.edited).max())}
           if args.model == "shapes" else "not compared here (tests/runtime/editing/test_cache.py: byte-equal)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"reedit_{args.model}_cpu.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("median_s", "reedit_strength_fraction", "reedit_attribute_fraction",
                                          "max_uint8_difference_vs_full_edit")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
