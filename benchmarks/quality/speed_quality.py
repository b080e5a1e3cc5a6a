"""What each fast configuration costs in edit quality: the embedded model, read by the exact attribute reader.

    python -m benchmarks.quality.speed_quality [--seeds 40] [--renders 16]

The configurations of benchmarks/speed/bench_speed.py on models/shapes at the default knobs (50 steps, T_x = 0.4 T):
the exact path, step caching at N = 2, 3, 5 (and with the inversion cached too), int8 (static, dynamic) and
int8 with step caching, on onnxruntime; and on OpenVINO (--provider openvino): fp32, bf16 (where the CPU has bf16
units), bf16 with step caching, int8 (QDQ graphs, bf16 around them) and int8 with step caching. The four attributes of benchmarks/quality/bench_edit_quality.py (colour, size, shape,
position) are learned once on the exact engine (an attribute file belongs to the model, not to a
configuration) and applied by each configuration to the same held-out seeds and real renders. Scores:
success, identity and PSNR outside the shapes (models/shapes_data.score_edit), and the reconstruction PSNR of
inverted real renders (DDIM inversion with the caption at guidance 1, sampled back at guidance 1).

Writes benchmarks/results/speed_quality_shapes.{json,md} (--name: another name, for a subset of rows).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.quality.scoring import PAIRS, SEED0, prompts_for, summarise
from benchmarks.speed.bench_speed import configs, prepare
from benchmarks.machine import describe, write_result
from models.shapes_data import render, sample_attributes, score_edit

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"
RENDER_SEED = 40_000



def quality_configs() -> list[tuple]:
    """(label, engine, sampling interval, inversion interval, provider, precision): bench_speed's, and the inversion
    cached too."""
    speed = configs()
    return speed[:4] + [("step cache N=2, inversion N=2", "engine-fp32-stepcache", 2, 2, "cpu", None)] + speed[4:]


def renders(n: int, seed: int, attribute: str | None = None, value: str | None = None):
    rng = np.random.default_rng(seed)
    attrs = [sample_attributes(rng) for _ in range(n)]
    if attribute:
        attrs = [a.replace(**{attribute: value}) for a in attrs]
    images = np.stack([render(a, rng) for a in attrs])
    return images, (images.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2), [a.caption() for a in attrs]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def evaluate(engine: Path, intervals, provider: str, precision: str | None, attrs: dict, n_seeds: int,
             n_renders: int, log) -> dict:
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.images import to_uint8
    from svdedit.runtime.pipeline import Pipeline

    out = {"pairs": {}}
    t0 = time.perf_counter()
    with Pipeline(engine, provider, intervals=intervals, precision=precision) as pipe:
        editor = Editor(pipe)
        gen_all, real_all = [], []
        for pair in PAIRS:
            attr = attrs[pair.attribute]
            prompts, _ = prompts_for(pair, n_seeds, seed=100 + PAIRS.index(pair))
            r = editor.edit_seeds([attr], prompts, list(range(SEED0, SEED0 + n_seeds)), batch=25)
            gen = [score_edit(s, e, pair.attribute, pair.target) for s, e in zip(r.source, r.edited)]
            u8, images, captions = renders(n_renders, RENDER_SEED + PAIRS.index(pair), pair.attribute, pair.source)
            r = editor.edit_images([attr], images, captions, batch=25)
            real = [score_edit(s, e, pair.attribute, pair.target) for s, e in zip(u8, r.edited)]
            out["pairs"][pair.attribute] = {"generated": summarise(gen), "real_renders": summarise(real)}
            gen_all += gen
            real_all += real
        u8, images, captions = renders(n_renders, RENDER_SEED + 99)
        e = pipe.encode_prompt(captions)
        traj = pipe.invert_latents(pipe.encode(images), e, 50, 1.0)
        back = to_uint8(pipe.decode(pipe.denoise(traj[-1], e, 50, 1.0).latent))
        out["generated"], out["real_renders"] = summarise(gen_all), summarise(real_all)
        out["reconstruction_psnr_db"] = float(np.median([psnr(a, b) for a, b in zip(u8, back)]))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"  {out['generated']['success']:.3f} success, {out['generated']['identity']:.3f} identity, "
        f"reconstruction {out['reconstruction_psnr_db']:.2f} dB, {out['seconds']} s")
    return out


def markdown(res: dict) -> str:
    rows = res["rows"]
    exact = rows[0]
    lines = [f"# Edit quality per configuration: the embedded model, {res['device_label']}", "",
             f"Command: `{res['command']}`. Default knobs (50 steps, T_x = 0.4 T, guidance 3); four attributes learned "
             f"once on the exact engine, each applied to {res['seeds']} held-out seeds and {res['renders']} real "
             f"renders per attribute; reconstruction: {res['renders']} renders inverted and sampled back. Points: "
             f"percentage points against the exact path.", "",
             "| configuration | success | identity | success and identity | PSNR outside dB | real: success | "
             "real: identity | reconstruction dB | Δ success | Δ identity | Δ reconstruction dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, q = r["generated"], r["real_renders"]
        lines.append(
            f"| {r['label']} | {g['success']:.3f} | {g['identity']:.3f} | {g['success_and_identity']:.3f} | "
            f"{g['psnr_outside_median_db']:.1f} | {q['success']:.3f} | {q['identity']:.3f} | "
            f"{r['reconstruction_psnr_db']:.2f} | {100 * (g['success'] - exact['generated']['success']):+.1f} | "
            f"{100 * (g['identity'] - exact['generated']['identity']):+.1f} | "
            f"{r['reconstruction_psnr_db'] - exact['reconstruction_psnr_db']:+.2f} |")
    lines += ["", "The bounds for a default: success and identity within 2 points of the exact path, reconstruction "
              "within 0.5 dB (issue 19)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="where the engine dirs go (default: a temp dir)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--renders", type=int, default=16)
    ap.add_argument("--only", help="comma-separated labels (default: all)")
    ap.add_argument("--name", default="speed_quality_shapes",
                    help="the result files' name under benchmarks/results/ (default: speed_quality_shapes, which "
                         "speed_report.py reads; another name for a subset given with --only)")
    args = ap.parse_args(argv)
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing.edit import Editor
    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.runtime.pipeline import Intervals, Pipeline

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    work = args.work or Path(tempfile.mkdtemp(prefix="speed-quality-"))
    chosen = [c for c in quality_configs() if not args.only or c[0] in args.only.split(",")]
    dirs = prepare(MODEL, work, lambda m: None, {c[1] for c in chosen} | {"engine-fp32"})
    with Pipeline(dirs["engine-fp32"]) as pipe:
        editor = Editor(pipe)
        attrs = {p.attribute: learn(editor, p.learn_prompt, p.learn_prompt.replace(p.source, p.target), seed=0,
                                           knobs=Knobs()) for p in PAIRS}
    rows, all_configs = [], quality_configs()
    for label, engine, n, ni, provider, precision in all_configs:
        if (label, engine, n, ni, provider, precision) not in chosen and label != all_configs[0][0]:
            continue
        log(f"{label} ...")
        rows.append({"label": label, "engine": engine, "intervals": [n, ni], "provider": provider,
                     "precision": precision,
                     **evaluate(dirs[engine], Intervals(n, ni), provider, precision, attrs, args.seeds, args.renders,
                                log)})
    machine = describe()
    res = {"benchmark": "speed_quality", "command": "python -m benchmarks.quality.speed_quality " + " ".join(sys.argv[1:]),
           "device_label": f"{machine['cpu']}, {machine['cores']} cores", "seeds": args.seeds, "renders": args.renders,
           "machine": machine, "rows": rows}
    write_result(args.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
