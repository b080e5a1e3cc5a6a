"""The README's tables of results, made from the result files (never edited by hand).

    python -m benchmarks tables          # rewrite them in README.md
    python -m benchmarks tables --check  # exit 1 if README.md is not what the result files say

In README.md each such table sits between two markers,

    <!-- table: NAME (python -m benchmarks tables; from benchmarks/results/FILE) -->
    ...
    <!-- /table -->

and TABLES names the function that writes it from its result file. tests/benchmarks/test_tables.py runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
REGION = re.compile(r"^(?P<indent>[ ]*)(?P<open><!-- table: (?P<name>[\w-]+) [^\n]*-->\n)(?P<body>.*?)^(?P=indent)<!-- /table -->",
                    re.S | re.M)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


# ---- one function per table ----
QUALITY_METHODS = [("AVI (strength 1)", "AVI"), ("(c) no injection: switch the prompt at T_x", "(c) no injection: switch "
                   "the prompt at T_x"), ("(d) untrained MLP (--iters 0)", "(d) untrained MLP"),
                   ("(a) regenerate with target prompt", "(a) regenerate with target"),
                   ("(b) invert, sample target prompt", "(b) invert + target"),
                   ("AVI, source continuation (paper, literal)", "paper's literal reading")]


def edit_quality() -> str:
    """Success / identity / PSNR outside the shape per pair and method (quality/bench_edit_quality.py)."""
    res = _load("edit_quality.json")
    rows = []
    for name, pair in res["pairs"].items():
        cells = []
        for key, _ in QUALITY_METHODS:
            s = pair["generated"][key]
            cells.append(f"{s['success']:.0%} / {s['identity']:.0%} / {s['psnr_outside_median_db']:.1f}")
        src, tgt = pair["learn_prompt"], pair["learn_target"]
        old, new = next((a, b) for a, b in zip(src.split(), tgt.split()) if a != b)
        rows.append([f"{name} {old} -> {new}"] + cells)
    return _rows(["pair (generated images)"] + [label for _, label in QUALITY_METHODS], rows)


def strength() -> str:
    """How evenly the strength scale moves the image (quality/edit_studies.py): the largest step of the median reading
    as a fraction of the whole change, raw against calibrated; the target is at most 0.25 and monotone."""
    res = _load("edit_quality.json")
    rows = []
    for name, pair in res["pairs"].items():
        study = pair["strength"]
        raw, cal = study["raw blend"], study["calibrated"]
        if cal["meets_target"]:
            verdict = f"**{cal['largest_step']:.2f}**, monotone: met"
        elif cal["monotone"]:
            verdict = f"{cal['largest_step']:.2f}, monotone: missed by {cal['largest_step'] - 0.25:.2f}"
        else:
            verdict = f"{cal['largest_step']:.2f}, not monotone"
        rows.append([f"{name}, {study['reading'].replace('_', ' ')}", f"{raw['largest_step']:.2f}", verdict,
                     f"{cal['largest_step_per_image_median']:.2f}"])
    return _rows(["pair, reading", "raw blend (alpha = strength)", "calibrated scale",
                  "each image's own largest step (calibrated, median)"], rows)


def edit_sd15() -> str:
    """One edit of a real image on the SD 1.5 shape, stage by stage, against its peers (speed/bench_edit.py)."""
    return edit_table(_load("edit_sd15_fp32_cpu.json"))


def edit_sdxl() -> str:
    """The same on the SDXL shape at 512 px."""
    return edit_table(_load("edit_sdxl_512_fp32_cpu.json"))


def edit_table(res: dict) -> str:
    impls = res["implementations"]
    first = [next(b for b in i["batches"] if b["batch"] == 1) for i in impls]
    groups = [("text + VAE encode", ("text", "vae_encode")), (f"{res['steps']} inversion steps", ("invert",)),
              (f"{res['steps']} guided steps", ("sample_to_edit", "sample_rest")), ("SVD + AVI", ("svd_avi",)),
              ("VAE decode", ("vae_decode",))]
    rows = []
    for label, stages in groups:
        values = [sum(b["stages_median_s"][s] for s in stages) for b in first]
        rows.append([label] + [f"{v:.3f}" if v < 0.1 else f"{v:.2f}" for v in values])
    ours = first[0]["seconds_median"]
    rows.append(["**one edit**"] + [f"**{b['seconds_median']:.1f}**" + ("" if k == 0 else f" ({b['seconds_median'] / ours:.2f}x "
                                                                       f"svdedit's time)")
                                    for k, b in enumerate(first)])
    top = max(b["batch"] for b in impls[0]["batches"])
    rates = [next(b for b in i["batches"] if b["batch"] == top)["edits_per_second"] for i in impls]
    rows.append([f"edits/s at batch {top}"] + [f"{r:.4f}" + ("" if k == 0 else f" (svdedit {rates[0] / r:.2f}x)")
                                              for k, r in enumerate(rates)])
    rss = [i["peak_rss_gib"] for i in impls]
    rows.append(["peak RSS, GiB"] + [f"{r:.2f}" + ("" if k == 0 else f" (svdedit {rss[0] / r:.2f}x)")
                                     for k, r in enumerate(rss)])
    return _rows([f"seconds, batch 1"] + [i["impl"] for i in impls], rows)


def _quality_of(quality: dict, label: str) -> dict:
    """A configuration's quality against the exact path's (speed_report.quality_fields), from `quality` ({label: row}
    of speed_report.quality_rows); {} where no quality run has the label."""
    from benchmarks.speed.speed_report import quality_fields

    return quality_fields(quality[label], quality["exact (fp32)"]) if label in quality else {}


def _quality_cells(r: dict) -> list[str]:
    """success, identity, reconstruction dB of a speed_report row ("not measured" where no quality run has it)."""
    if "success" not in r:
        return ["not measured", "-", "-"]
    recon = f"{r['reconstruction_db']:.2f}"
    if not r["quality_ok"]:
        recon += f" ({r['d_reconstruction_db']:+.2f}: outside)"
    return [f"{r['success']:.3f}", f"{r['identity']:.3f}", recon]


def configurations() -> str:
    """Each fast configuration's speed (speed/bench_speed.py) against its quality (quality/speed_quality.py), joined by
    speed/speed_report.py; the peers' rows from the same speed run."""
    report, speed = _load("speed_report.json"), _load("speed_sd15_cpu.json")
    peers = {r["label"]: r for r in speed["rows"] if not r["impl"].startswith("svdedit")}
    diffusers, optimum = peers["diffusers (torch)"], peers["optimum (onnxruntime)"]
    rows = []
    for r in report["rows"]:
        if r.get("edit_s") is None:
            speed_cells = ["-"] * 4
        else:
            speed_cells = [f"{r['edit_s']:.1f}", f"{r['vs_optimum']:.2f}x", f"{r['vs_diffusers']:.2f}x",
                           f"{r['peak_rss_gib']:.2f} ({r['rss_vs_diffusers']:.2f})"]
        rows.append([r["label"]] + speed_cells + _quality_cells(r))
    base = diffusers["seconds_median"]
    for label, p in (("diffusers (torch)", diffusers), ("Optimum (onnxruntime)", optimum)):
        rows.append([label, f"{p['seconds_median']:.1f}", f"{optimum['seconds_median'] / p['seconds_median']:.2f}x",
                     f"{base / p['seconds_median']:.2f}x",
                     f"{p['peak_rss_gib']:.2f} ({p['peak_rss_gib'] / diffusers['peak_rss_gib']:.2f})", "", "", ""])
    return _rows(["configuration", "edit s", "vs Optimum", "vs diffusers", "peak RSS GiB (/ diffusers')", "success",
                  "identity", "reconstruction dB"], rows)


def openvino_edit() -> str:
    """The OpenVINO configurations' edits (speed/bench_speed.py --name speed_sd15_openvino_cpu) against optimum-intel's
    pipeline at its defaults and forced to fp32, in the same run, with their quality on the embedded model
    (quality/speed_quality.py's runs, joined as speed/speed_report.py does)."""
    from benchmarks.speed.speed_report import quality_rows

    speed = _load("speed_sd15_openvino_cpu.json")
    quality, _ = quality_rows()
    by_label = {r["label"]: r for r in speed["rows"]}
    ovi, ovi32 = by_label["optimum-intel (OpenVINO)"], by_label["optimum-intel (OpenVINO), forced to fp32"]

    def cells(r: dict) -> list[str]:
        return [r["label"], f"{r['seconds_median']:.1f}", f"{ovi['seconds_median'] / r['seconds_median']:.2f}x",
                f"{ovi32['seconds_median'] / r['seconds_median']:.2f}x",
                f"{r['peak_rss_gib']:.2f} ({r['peak_rss_gib'] / ovi['peak_rss_gib']:.2f})"]

    rows = [cells(r) + _quality_cells(_quality_of(quality, r["label"]))
            for r in speed["rows"] if r["impl"].startswith("svdedit")]
    rows += [cells(p) + ["", "", ""] for p in (ovi, ovi32)]
    return _rows(["configuration", "edit s", "vs optimum-intel", "vs optimum-intel fp32",
                  "peak RSS GiB (/ optimum-intel's)", "success", "identity", "reconstruction dB"], rows)


def openvino_generation(result: str = "speed_sd15_openvino_cpu.json") -> str:
    """Generation only (GenAI cannot invert): svdedit's exact path and fastest configurations against OpenVINO
    GenAI's Text2ImagePipeline, in the same run (speed/bench_speed.py; `result`: another run's)."""
    gen = _load(result)["generation"]
    genai = gen[-1]
    return _rows(["implementation", "seconds", "vs GenAI", "peak RSS GiB (/ GenAI's)"],
                 [[f"{g['label']} ({g['provider']})", f"{g['seconds_median']:.1f}",
                   f"{genai['seconds_median'] / g['seconds_median']:.2f}x",
                   f"{g['peak_rss_gib']:.2f} ({g['peak_rss_gib'] / genai['peak_rss_gib']:.2f})"] for g in gen])


def openvino_rounds(result: str = "speed_sd15_openvino_rounds_cpu.json") -> str:
    """The decisive rows interleaved with the peers' (speed/bench_speed.py --rounds; `result`: the Intel Xeon's run, or
    another machine's): each round ran every row once, so a round's ratio compares rows measured minutes apart on a
    drifting machine."""
    from benchmarks.speed.bench_speed import OPTIMUM_INTEL, round_cells

    res = _load(result)
    ovi = next(r for r in res["rows"] if r["label"] == OPTIMUM_INTEL)
    genai = res["generation"][-1]
    cells, generation = round_cells(res)
    rows = [c + [f"{r['peak_rss_gib']:.2f} ({r['peak_rss_gib'] / ovi['peak_rss_gib']:.2f})"]
            for c, r in zip(cells, res["rows"])]
    rows += [[f"generate: {label}", seconds, f"vs GenAI {vs}", "",
              f"{g['peak_rss_gib']:.2f} ({g['peak_rss_gib'] / genai['peak_rss_gib']:.2f} of GenAI's)"]
             for (label, seconds, vs), g in zip(generation, res["generation"])]
    return _rows(["row", "seconds per round", "vs optimum-intel, per round", "vs optimum-intel fp32, per round",
                  "peak RSS GiB (/ optimum-intel's)"], rows)


def every_row(result: str = "speed_sd15_all_epyc.json", quality_first: str = "speed_quality_openvino_epyc.json") -> str:
    """Every configuration and every peer in one run on one machine (speed/bench_speed.py without --only): each row
    against Optimum's onnxruntime pipeline, optimum-intel's at its defaults and diffusers, with its edit quality on the
    embedded model (`quality_first`, this machine's run, before the other quality runs) and whether that is within
    issue 19's bounds."""
    from benchmarks.speed.bench_speed import OPTIMUM_INTEL
    from benchmarks.speed.speed_report import QUALITY_FILES, quality_rows

    res = _load(result)
    quality, _ = quality_rows([quality_first, *QUALITY_FILES])
    ref = {r["label"]: r for r in res["rows"]}
    peers = [ref[label] for label in ("optimum (onnxruntime)", OPTIMUM_INTEL, "diffusers (torch)")]

    def quality_cells(label: str) -> list[str]:
        q = _quality_of(quality, label)
        if not q:
            return ["-", "-", "-", ""]
        return [f"{q['success']:.3f}", f"{q['identity']:.3f}", f"{q['d_reconstruction_db']:+.2f}",
                "yes" if q["quality_ok"] else "**no**"]

    rows = [[r["label"], r["impl"].split("(")[-1].rstrip(")"), f"{r['seconds_median']:.1f}"]
            + [f"{p['seconds_median'] / r['seconds_median']:.2f}x" for p in peers] + [f"{r['peak_rss_gib']:.2f}"]
            + (quality_cells(r["label"]) if r["impl"].startswith("svdedit") else ["", "", "", ""])
            for r in res["rows"]]
    return _rows(["row", "runtime", "edit s", "vs Optimum", "vs optimum-intel", "vs diffusers", "peak RSS GiB",
                  "success", "identity", "Δ reconstruction dB", "within issue 19's bounds"], rows)


def open_time() -> str:
    """Opening an engine dir (speed/bench_open.py): every file hashed against only the changed ones."""
    res = _load("open_sd15_cpu.json")
    t = res["pipeline_open_s"]
    return _rows(["`Pipeline(dir)`, SD 1.5 shape", "seconds (median)", "ratio"],
                 [[f"every file hashed ({res['engine_dir_bytes'] / 1e9:.2f} GB; svdedit up to this release)",
                   f"{t['every_file_hashed']:.2f}", "1"],
                  ["changed files hashed (the verification record)", f"{t['changed_files_hashed']:.3f}",
                   f"{res['ratio']:.0f}x faster"]])


def serve_batching() -> str:
    """The server's dynamic batching against the Python API doing the same edits one after another
    (serving/bench_serve.py)."""
    res = _load("serve_batching.json")
    api = res["python_api"]
    rows = [["Python API, one edit after another", f"{api['edits_per_second']:.2f}", "1.00x",
             f"{api['latency_p50_s']:.2f} / {api['latency_p99_s']:.2f} s", "1"]]
    for s in res["server"]:
        rows.append([f"server, {s['clients']} client{'s' if s['clients'] > 1 else ''}", f"{s['edits_per_second']:.2f}",
                     f"{s['throughput_vs_python_api']:.2f}x", f"{s['latency_p50_s']:.2f} / {s['latency_p99_s']:.2f} s",
                     f"{s['batch_images_max']}"])
    return _rows(["", "edits/s", "vs the Python API", "latency p50 / p99", "images per batch"], rows)


TABLES = {"serve-batching": serve_batching, "edit-quality": edit_quality, "strength": strength, "edit-sd15": edit_sd15,
          "edit-sdxl": edit_sdxl, "configurations": configurations, "open-time": open_time,
          "openvino-edit": openvino_edit, "openvino-generation": openvino_generation,
          "openvino-rounds": openvino_rounds,
          "openvino-rounds-epyc": lambda: openvino_rounds("speed_sd15_openvino_rounds_epyc.json"),
          "every-row-epyc": every_row,
          "every-row-generation-epyc": lambda: openvino_generation("speed_sd15_all_epyc.json")}


def render(readme: str) -> str:
    """README's text with every marked table made anew from its result file."""
    def one(m: re.Match) -> str:
        if m["name"] not in TABLES:
            raise SystemExit(f"README.md names a table {m['name']!r}; the tables are {', '.join(TABLES)}")
        body = "".join(m["indent"] + line for line in TABLES[m["name"]]().splitlines(keepends=True))
        return m["indent"] + m["open"] + body + m["indent"] + "<!-- /table -->"
    return REGION.sub(one, readme)


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("README.md's tables are not what the result files say: run `python -m benchmarks tables`.",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"{len(REGION.findall(new))} tables written into {README.relative_to(ROOT)}")
    return 0
