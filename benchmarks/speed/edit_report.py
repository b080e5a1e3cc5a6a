"""bench_edit's results as a markdown table and a plot (time per stage at the first batch size; throughput
against batch size)."""

from __future__ import annotations

from pathlib import Path

from svdedit.runtime.timing import EDIT_STAGES

def plot(result: dict, path: Path) -> None:
    """Left: seconds per stage of one edit at batch 1 (stacked bars, one per implementation).
    Right: edits per second against batch size."""
    from PIL import Image, ImageDraw

    colours = {"text": (140, 140, 140), "vae_encode": (86, 180, 233), "invert": (0, 114, 178),
               "sample_to_edit": (230, 159, 0), "svd_avi": (204, 121, 167), "sample_rest": (213, 94, 0),
               "vae_decode": (0, 158, 115)}
    impls = result["implementations"]
    W, H, pad = 900, 420, 60
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((pad, 10), f"one edit, {result['model_label']}, {result['steps']}+{result['steps']} steps, "
                      f"{result['device_label']}", fill="black")
    # stacked bars
    b1 = [next(r for r in i["batches"] if r["batch"] == result["batches"][0]) for i in impls]
    top = max(r["seconds_median"] for r in b1) * 1.1
    x0, y0, y1 = pad, H - pad, 50
    for k, (impl, r) in enumerate(zip(impls, b1)):
        left = x0 + 20 + k * 95
        acc = 0.0
        for s in EDIT_STAGES:
            v = r["stages_median_s"][s]
            ya, yb = y0 - (acc + v) / top * (y0 - y1), y0 - acc / top * (y0 - y1)
            d.rectangle([left, ya, left + 70, yb], fill=colours[s])
            acc += v
        d.text((left, y0 + 5), impl["impl"].split()[0], fill="black")
        d.text((left, y0 - acc / top * (y0 - y1) - 14), f"{r['seconds_median']:.2f} s", fill="black")
    d.line([x0, y0, x0 + 300, y0], fill="black")
    d.text((x0 - 50, y1 - 20), f"seconds per edit (batch {result['batches'][0]})", fill="black")
    for j, s in enumerate(EDIT_STAGES):
        d.rectangle([x0 + 310, y1 + 18 * j, x0 + 322, y1 + 12 + 18 * j], fill=colours[s])
        d.text((x0 + 328, y1 + 18 * j), s, fill="black")
    # throughput
    px0, px1 = 520, W - 30
    tmax = max(r["edits_per_second"] for i in impls for r in i["batches"]) * 1.15
    bs = result["batches"]
    d.line([px0, y0, px1, y0], fill="black")
    d.line([px0, y0, px0, y1], fill="black")
    d.text((px0, y1 - 20), "edits per second", fill="black")
    d.text((px1 - 60, y0 + 20), "batch size", fill="black")
    xs = {b: px0 + 20 + (px1 - px0 - 40) * (j / max(1, len(bs) - 1)) for j, b in enumerate(bs)}
    for b, xb in xs.items():
        d.text((xb - 3, y0 + 5), str(b), fill="black")
    for impl, col in zip(impls, [(0, 114, 178), (213, 94, 0), (0, 158, 115)]):
        pts = [(xs[r["batch"]], y0 - r["edits_per_second"] / tmax * (y0 - y1)) for r in impl["batches"]]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for (x, y), r in zip(pts, impl["batches"]):
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
            d.text((x + 5, y - 14), f"{r['edits_per_second']:.2g}", fill=col)
        d.text((pts[-1][0] - 80, pts[-1][1] + 6), impl["impl"].split()[0], fill=col)
    im.save(path)


def markdown(result: dict) -> str:
    impls = result["implementations"]
    ours, peers = impls[0], impls[1:]
    b0 = result["batches"][0]
    head = " | ".join(f"{i['impl']} s" for i in impls)
    ratios = " | ".join(f"{p['impl'].split()[0]} / svdedit" for p in peers)
    lines = [f"# One edit end to end: {result['model_label']}, {result['device_label']}", "",
             f"Command: `{result['command']}`. {result['steps']} inversion + {result['steps']} guided steps "
             f"(guidance {result['guidance']}), median of {result['repeats']} runs after a warm-up; each "
             f"implementation in its own process, the same images, prompts and attribute. The final images differ "
             f"from svdedit's by at most {result['max_abs_image_difference_uint8']} (uint8 levels).", "",
             f"| stage (batch {b0}) | {head} | {ratios} |", "|---|" + "---|" * (len(impls) + len(peers))]
    rows = [i["batches"][0] for i in impls]
    for st in EDIT_STAGES:
        v = [r["stages_median_s"][st] for r in rows]
        lines.append(f"| {st} | " + " | ".join(f"{x:.3f}" for x in v) + " | "
                     + " | ".join(f"{x / v[0]:.2f}x" if v[0] else "-" for x in v[1:]) + " |")
    t = [r["seconds_median"] for r in rows]
    lines.append("| **edit** | " + " | ".join(f"**{x:.3f}**" for x in t) + " | "
                 + " | ".join(f"**{x / t[0]:.2f}x**" for x in t[1:]) + " |")
    lines += ["", "| batch | " + " | ".join(f"{i['impl'].split()[0]} edits/s" for i in impls) + " | "
              + " | ".join(f"svdedit / {p['impl'].split()[0]}" for p in peers) + " |",
              "|---|" + "---|" * (len(impls) + len(peers))]
    for k, b in enumerate(result["batches"]):
        e = [i["batches"][k]["edits_per_second"] for i in impls]
        lines.append(f"| {b} | " + " | ".join(f"{x:.4f}" for x in e) + " | "
                     + " | ".join(f"{e[0] / x:.2f}x" for x in e[1:]) + " |")
    lines += ["", "| | " + " | ".join(i["impl"].split()[0] for i in impls) + " |", "|---|" + "---|" * len(impls),
              "| peak host RSS (GiB) | " + " | ".join(f"{i['peak_rss_gib']:.2f}" for i in impls) + " |",
              "| svdedit's RSS / this one's | " + " | ".join(f"{ours['peak_rss_gib'] / i['peak_rss_gib']:.2f}x"
                                                          for i in impls) + " |",
              "| load (s) | " + " | ".join(f"{i['load_s']:.1f}" for i in impls) + " |"]
    if ours["peak_device_mib"] is not None:
        lines.append("| peak device memory (MiB) | " + " | ".join(str(i["peak_device_mib"]) for i in impls) + " |")
    for name, why in result.get("peers_not_run", {}).items():
        lines += ["", f"Not measured: {name}: {why['why']}; it does not fit this machine's memory."]
    return "\n".join(lines) + "\n"
