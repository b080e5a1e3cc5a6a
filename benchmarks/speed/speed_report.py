"""Speed against edit quality per configuration: benchmarks/results/speed_sd15_cpu.json (bench_speed.py, the SD 1.5
shape) joined with speed_quality_shapes.json and the runs of speed_quality.py for later rows (QUALITY_FILES, the
embedded model; a label is read from the first file that has it).

    python -m benchmarks.speed.speed_report

Writes benchmarks/results/speed_report.md (one table, the bounds of issue 19 checked) and speed_report.png (speed
against success-and-identity, one point per configuration, the peers as vertical lines).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: the goals of issue 19 for the default fast configuration
GOALS = {"vs_optimum": 1.3, "vs_diffusers": 2.0, "rss_vs_diffusers": 0.8, "quality_points": 2.0, "reconstruction_db": 0.5}
#: speed_quality.py's result files (--name), the whole table first; each holds the exact path's row as well
QUALITY_FILES = ["speed_quality_shapes.json", "speed_quality_openvino_shapes.json", "speed_quality_tensorrt_int8.json",
                 "speed_quality_openvino_int8_shapes.json"]


def quality_rows(files: list[str] = QUALITY_FILES) -> tuple[dict, list[str]]:
    """({label: row} of every quality run in `files`, a label's row from the first file that has it; the commands that
    made them)."""
    rows, commands = {}, []
    for name in files:
        if (RESULTS / name).exists():
            res = json.loads((RESULTS / name).read_text())
            commands.append(res["command"])
            for r in res["rows"]:
                rows.setdefault(r["label"], r)
    return rows, commands


def quality_fields(q: dict, exact_q: dict) -> dict:
    """One configuration's quality row against the exact path's: scores, differences, and whether it is within the
    bounds of issue 19 (quality_ok)."""
    g, e = q["generated"], exact_q["generated"]
    out = dict(success=g["success"], identity=g["identity"], success_and_identity=g["success_and_identity"],
               reconstruction_db=q["reconstruction_psnr_db"], d_success=100 * (g["success"] - e["success"]),
               d_identity=100 * (g["identity"] - e["identity"]),
               d_reconstruction_db=q["reconstruction_psnr_db"] - exact_q["reconstruction_psnr_db"])
    out["quality_ok"] = (out["d_success"] >= -GOALS["quality_points"] and out["d_identity"] >= -GOALS["quality_points"]
                         and out["d_reconstruction_db"] >= -GOALS["reconstruction_db"])
    return out


def joined() -> tuple[list[dict], dict]:
    speed = json.loads((RESULTS / "speed_sd15_cpu.json").read_text())
    quality = json.loads((RESULTS / QUALITY_FILES[0]).read_text())
    rows = {r["label"]: r for r in speed["rows"]}
    q, commands = quality_rows()
    opt, dif, exact_q = rows.get("optimum (onnxruntime)"), rows["diffusers (torch)"], q["exact (fp32)"]
    out = []
    labels = [k for k, r in rows.items() if not r["impl"].startswith(("diffusers", "optimum"))]
    labels += [k for k in q if k not in rows]  # measured for quality only
    for label in labels:
        r = rows.get(label)
        row = {"label": label}
        if r is not None:
            row.update(edit_s=r["seconds_median"], invert_step_s=r["invert_step_s"], guided_step_s=r["guided_step_s"],
                       peak_rss_gib=r["peak_rss_gib"],
                       vs_optimum=opt["seconds_median"] / r["seconds_median"] if opt else None,
                       vs_diffusers=dif["seconds_median"] / r["seconds_median"],
                       rss_vs_diffusers=r["peak_rss_gib"] / dif["peak_rss_gib"])
        if label in q:
            row.update(quality_fields(q[label], exact_q))
        if r is not None:
            row["speed_ok"] = (row["vs_optimum"] or 0) >= GOALS["vs_optimum"] and \
                row["vs_diffusers"] >= GOALS["vs_diffusers"] and row["rss_vs_diffusers"] <= GOALS["rss_vs_diffusers"]
        out.append(row)
    peers = {"optimum": opt, "diffusers": dif}
    return out, {"speed": speed, "quality": quality, "quality_commands": commands, "peers": peers}


def markdown(rows: list[dict], ctx: dict) -> str:
    s, q = ctx["speed"], ctx["quality"]
    lines = ["# Speed against edit quality, per configuration", "",
             f"Speed: {s['model_label']}, {s['device_label']}, {s['steps']} inversion + {s['steps']} guided steps, one "
             f"edit, median of {s['repeats']} after a warm-up, each in its own process (`{s['command']}`; "
             f"[speed_sd15_cpu.md](speed_sd15_cpu.md)). Quality: the embedded model at 50 steps, {q['seeds']} held-out "
             f"seeds and {q['renders']} renders per attribute, four attributes (`{'`, `'.join(ctx['quality_commands'])}`; "
             f"[speed_quality_shapes.md](speed_quality_shapes.md)). Goals (issue 19): at least {GOALS['vs_optimum']}x "
             f"Optimum and {GOALS['vs_diffusers']}x diffusers, peak RSS at most {GOALS['rss_vs_diffusers']}x "
             f"diffusers'; success and identity within {GOALS['quality_points']:g} points of the exact path, "
             f"reconstruction within {GOALS['reconstruction_db']} dB.", "",
             "| configuration | edit s | vs Optimum | vs diffusers | RSS / diffusers' | success | identity | "
             "reconstruction dB | Δ success | Δ identity | Δ recon. dB | speed goals | quality bounds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        has_q = "success" in r
        speed = (f"{r['edit_s']:.1f} | {r['vs_optimum']:.2f}x | {r['vs_diffusers']:.2f}x | {r['rss_vs_diffusers']:.2f}"
                 if "edit_s" in r else "not measured | - | - | -")
        lines.append(
            f"| {r['label']} | {speed} | " +
            (f"{r['success']:.3f} | {r['identity']:.3f} | {r['reconstruction_db']:.2f} | {r['d_success']:+.1f} | "
             f"{r['d_identity']:+.1f} | {r['d_reconstruction_db']:+.2f} | " if has_q else "- | - | - | - | - | - | ") +
            f"{'-' if 'speed_ok' not in r else 'met' if r['speed_ok'] else 'missed'} | "
            f"{('within' if r['quality_ok'] else 'outside') if has_q else '-'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], ctx: dict, path: Path) -> None:
    """Speed relative to Optimum (x, SD 1.5 shape) against success-and-identity (y, embedded model), one point per
    configuration: green within the quality bounds, red outside; the peers and the speed goal as vertical lines."""
    from PIL import Image, ImageDraw

    pts = [r for r in rows if "success_and_identity" in r and "vs_optimum" in r]
    W, H, left, right, top, bottom = 980, 560, 70, 40, 50, 60
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    xmax = max(2.0, max(r["vs_optimum"] for r in pts) * 1.25)
    ylo = float(int(min(100 * r["success_and_identity"] for r in pts)) - 2)

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x / xmax * (W - left - right), top + (100.5 - y) / (100.5 - ylo) * (H - top - bottom)

    d.text((left, 12), "svdedit configurations: edit speed against edit quality (green: within the quality bounds "
                       "of issue 19)", fill="black")
    x0, y0 = xy(0, ylo)
    d.line([x0, y0, W - right, y0], fill="black")
    d.line([x0, y0, x0, top], fill="black")
    for k in range(0, int(xmax * 4) + 1):
        x = k / 4
        if k % 2 == 0:
            d.text((xy(x, ylo)[0] - 8, y0 + 5), f"{x:g}x", fill="black")
    for y in range(int(ylo) + 1, 101, 2):
        d.text((x0 - 30, xy(0, y)[1] - 6), f"{y}%", fill="black")
    d.text((left + 120, H - 25), "edit speed relative to Optimum's onnxruntime pipeline (SD 1.5 shape, 10+10 steps, CPU)",
           fill="black")
    d.text((5, top - 20), "success and identity (embedded model, 50 steps)", fill="black")
    opt, dif = ctx["peers"]["optimum"], ctx["peers"]["diffusers"]
    lines = [(1.0, (120, 120, 120), "Optimum"), (1.3, (0, 114, 178), "goal 1.3x Optimum")]
    if opt:
        lines.append((opt["seconds_median"] / dif["seconds_median"], (213, 94, 0), "diffusers"))
    for x, col, name in lines:
        xa = xy(x, ylo)[0]
        for ya in range(int(top), int(y0), 8):
            d.line([xa, ya, xa, ya + 4], fill=col)
        d.text((xa + 3, top), name, fill=col)
    for r in pts:
        x, y = xy(r["vs_optimum"], 100 * r["success_and_identity"])
        col = (0, 158, 115) if r["quality_ok"] else (200, 30, 30)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=col)
        d.text((x + 7, y - 6), r["label"], fill=col)
    im.save(path)


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows, ctx = joined()
    (RESULTS / "speed_report.json").write_text(json.dumps({"goals": GOALS, "rows": rows}, indent=2) + "\n")
    (RESULTS / "speed_report.md").write_text(markdown(rows, ctx))
    plot(rows, ctx, RESULTS / "speed_report.png")
    print(markdown(rows, ctx))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
