"""The reliability report: the bad inputs of issue 18 through every command, and samples of mutations through
every loader, with how each ended.

    python -m benchmarks.reliability.reliability        # ~3 minutes: exports a tiny seeded SD 1.x pipeline first

Each command case is run as a user would (`python -m svdedit.cli ...` in a subprocess): it must end with exit
status 0 (where it should work) or 2 with one `svdedit COMMAND: error:` line naming the file or argument, never
a traceback. Each loader gets a fixed sample of mutations (tests/fuzzing.py: keys deleted, values of other
types, NaN, huge numbers, '..' paths, deep nesting) and must accept it or raise the project's own error; the
property-based tests (tests/runtime/...guard.py, 200 derandomized examples each) run the same properties in
`make test`. Writes benchmarks/results/reliability.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"


def cli(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "svdedit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("svdedit")]
    return {"exit": proc.returncode, "traceback": "Traceback" in proc.stderr,
            "message": (lines[-1] if lines else proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "")[:240]}


def damaged(engine: Path, work: Path, change) -> Path:
    """A copy of `engine` whose manifest `change` edits (change may also touch files)."""
    d = work / f"e{len(list(work.iterdir()))}"
    shutil.copytree(engine, d)
    m = json.loads((d / "manifest.json").read_text())
    change(m, d)
    (d / "manifest.json").write_text(json.dumps(m, allow_nan=True))
    return d


def command_cases(engine: Path, attr: Path, work: Path) -> list[tuple[str, str, dict]]:
    from svdedit.runtime.files import sha256_file

    out = work / "out"
    out.mkdir()
    (work / "file.txt").write_text("a file")
    outside = work / "outside.onnx"
    shutil.copy(engine / "unet.onnx", outside)
    from PIL import Image

    Image.new("L", (1, 200_000)).save(work / "strip.png")
    Image.new("1", (9000, 9000)).save(work / "bomb.png")
    (work / "ps.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    np.save(work / "complex.npy", np.zeros((1, 4, 8, 8), np.complex64))

    def unet_file(value, digest=None):
        def change(m, d):
            m["networks"]["unet"]["file"] = value
            if digest:
                m["networks"]["unet"]["sha256"] = digest
        return change

    def swap_unet(m, d):
        shutil.copy(d / "vae_decoder.onnx", d / "unet.onnx")
        m["networks"]["unet"]["sha256"] = sha256_file(d / "unet.onnx")

    manifest_cases = [
        ("unet file: an absolute path outside (hash updated)", unet_file(str(outside), sha256_file(outside))),
        ("unet file: ../outside.onnx", unet_file("../outside.onnx", sha256_file(outside))),
        ("text file: ../../../etc/passwd", lambda m, d: m["text"].update(file="../../../../../../etc/passwd")),
        ("unet.onnx a symlink out of the dir", lambda m, d: ((d / "unet.onnx").unlink(),
                                                            (d / "unet.onnx").symlink_to(outside))),
        ("latent missing", lambda m, d: m.pop("latent")),
        ("networks.unet a string", lambda m, d: m["networks"].update(unet="unet.onnx")),
        ("networks a list", lambda m, d: m.update(networks=[])),
        ("a file name that is a number", lambda m, d: m["networks"]["unet"].update(file=5)),
        ("image_size.default 0", lambda m, d: m["image_size"].update(default=0)),
        ("vae_scale_factor 0", lambda m, d: m["latent"].update(vae_scale_factor=0)),
        ("pad_id missing", lambda m, d: m["text"].pop("pad_id")),
        ("another network's graph under the UNet's name", swap_unet),
        ("an empty schedule", lambda m, d: ((d / "schedule.json").write_text(json.dumps(
            {**json.loads((d / "schedule.json").read_text()), "alphas_cumprod": []})),
            m["schedule"].update(sha256=sha256_file(d / "schedule.json")))),
        ("JSON nested 200000 deep", lambda m, d: m.update(deep="x")),
    ]
    cases = []
    for name, change in manifest_cases:
        d = damaged(engine, work, change)
        if name.startswith("JSON nested"):
            (d / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
        cases.append(("check", f"manifest: {name}", cli("check", d)))
        cases.append(("generate", f"manifest: {name}", cli("generate", "--engine", d, "--prompt", "x", "--steps", 2,
                                                           "-o", out / "g.png")))
    gen = ["generate", "--engine", engine, "--prompt", "x", "--steps", 2, "-o"]
    for name, target in (("-o /proc/x.png", "/proc/x.png"), ("-o under a file", work / "file.txt" / "x.png"),
                         ("-o an existing folder", out), ("-o ''", ""), ("-o x.gif", out / "x.gif")):
        cases.append(("generate", name, cli(*gen, target)))
    cases.append(("generate", "-o x.jpg writes a JPEG", cli(*gen, out / "x.jpg")))
    for name, extra in (("--guidance nan", ["--guidance", "nan"]), ("--seed -1", ["--seed", "-1"]),
                        ("--init-noise complex", ["--init-noise", work / "complex.npy"])):
        cases.append(("generate", name, cli("generate", "--engine", engine, "--prompt", "x", *extra, "-o", out / "g.png")))
    rec = ["reconstruct", "--engine", engine, "--prompt", "x", "--steps", 2, "-o", out / "r.png", "--image"]
    for name, image in (("a 1 x 200000 PNG", work / "strip.png"), ("a 9000 x 9000 PNG (a bomb)", work / "bomb.png"),
                        ("PostScript named .png", work / "ps.png")):
        cases.append(("reconstruct", name, cli(*rec, image)))
    learn = ["learn", "--engine", engine, "-o", out / "a.safetensors"]
    for name, extra in (("identical prompts", ["--source", "a red cat", "--target", "a red cat"]),
                        ("--hidden 1000000000", ["--source", "a red cat", "--target", "a blue cat", "--hidden", "1000000000"]),
                        ("--tail maybe", ["--source", "a red cat", "--target", "a blue cat", "--tail", "maybe"])):
        cases.append(("learn", name, cli(*learn, *extra)))
    edit = ["edit", "--engine", engine, "--attr", attr, "--prompt", "a red cat", "-o", out / "edits"]
    for name, extra in (("--seeds 0-9999999999", ["--seeds", "0-9999999999"]), ("--strength 1e300",
                        ["--seed", "1", "--strength", "1e300"])):
        cases.append(("edit", name, cli(*edit, *extra)))
    for name, meta_change in (("knobs.window -5", lambda m: m["knobs"].update(window=-5)),
                              ("knobs.steps \"50\"", lambda m: m["knobs"].update(steps="50")),
                              ("metadata a list", None)):
        bad = out / f"bad{len(cases)}.safetensors"
        write_attr(attr, bad, meta_change)
        cases.append(("edit", f"attribute file: {name}", cli("edit", "--engine", engine, "--attr", bad, "--prompt",
                                                               "a red cat", "--seed", "1", "-o", out / "e.png")))
    probe = ["probe", "subspace", "--engine", engine, "--prompt", "x"]
    for name, extra in (("--k -2", ["--k", "-2"]), ("--steps 1", ["--steps", "1"]), ("-o a folder name", [])):
        cases.append(("probe", name, cli(*probe, *extra, "-o", out / ("plots" if not extra else "p.png"))))
    return cases


def write_attr(good: Path, path: Path, change) -> None:
    from safetensors.numpy import load, save

    blob = good.read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    meta = json.loads(header["__metadata__"]["svdedit"])
    text = "[1, 2]" if change is None else (change(meta) or json.dumps(meta))
    path.write_bytes(save(load(blob), metadata={"svdedit": text}))


def loader_samples(engine: Path, attr: Path, work: Path, n: int = 60) -> dict:
    """How a fixed sample of mutations ended in each loader: accepted, or the project's own error (else: the
    exception's type, a failure of this report)."""
    from svdedit.runtime.ddim import Schedule
    from svdedit.runtime.editing.avi import Attribute
    from svdedit.runtime.engines.manifest import read_manifest
    from svdedit.runtime.errors import SvdeditError
    from svdedit.runtime.images import decode_image
    from svdedit.runtime.text import Tokenizer
    from tests.fuzzing import mutate, sample_mutations

    d = work / "loader"
    shutil.copytree(engine, d)
    raw = json.loads((engine / "manifest.json").read_text())
    schedule = json.loads((engine / "schedule.json").read_text())
    tokenizer = json.loads((engine / "tokenizer.json").read_text())
    tokenizer["model"] = {k: v for k, v in tokenizer["model"].items() if k not in ("vocab", "merges")}
    rng = np.random.default_rng(18)
    from io import BytesIO

    from PIL import Image

    png = BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)).save(png, format="PNG")
    png = png.getvalue()

    def run(kind: str, fn) -> dict:
        tally = {"accepted": 0, "svdedit error": 0, "other": []}
        for i, changes in enumerate(sample_mutations(n, seed=hash(kind) % 1000)):
            try:
                fn(i, changes)
                tally["accepted"] += 1
            except SvdeditError:
                tally["svdedit error"] += 1
            except Exception as exc:  # noqa: BLE001  (what the report is looking for)
                tally["other"].append(f"{type(exc).__name__}: {str(exc)[:80]}")
        return tally

    def manifest(i, changes):
        (d / "manifest.json").write_text(json.dumps(mutate(raw, changes), allow_nan=True))
        read_manifest(d)

    def sched(i, changes):
        (work / "s.json").write_text(json.dumps(mutate(schedule, changes), allow_nan=True))
        Schedule.from_json(work / "s.json")

    def tok(i, changes):
        (work / "t.json").write_text(json.dumps(mutate(tokenizer, changes), allow_nan=True))
        Tokenizer(work / "t.json", 77, 0)

    def attribute(i, changes):
        from safetensors.numpy import load, save

        good = attr.read_bytes()
        header = json.loads(good[8:8 + int.from_bytes(good[:8], "little")])
        meta = mutate(json.loads(header["__metadata__"]["svdedit"]), changes)
        (work / "a.safetensors").write_bytes(save(load(good), metadata={"svdedit": json.dumps(meta, allow_nan=True)}))
        Attribute.load(work / "a.safetensors")

    def image(i, changes):
        cut = png[: max(0, len(png) - 7 * i)] if i % 2 else png[:16] + bytes(rng.integers(0, 255, 64).astype(np.uint8))
        decode_image(cut, "the sample")

    return {"manifest.json (read_manifest)": run("manifest", manifest), "schedule.json (Schedule.from_json)": run("schedule", sched),
            "tokenizer.json (Tokenizer)": run("tokenizer", tok), "attribute file (Attribute.load)": run("attribute", attribute),
            "image bytes (decode_image)": run("image", image)}


def markdown(result: dict) -> str:
    lines = ["# Reliability: bad inputs through every command and loader", "",
             "Produced by `python -m benchmarks.reliability.reliability` on the tiny seeded SD 1.x test pipeline. A user mistake "
             "must end with exit status 2 and one `svdedit COMMAND: error:` line naming the file or argument; "
             "where a case should work (a JPEG output) exit 0. The property-based tests of `make test` "
             "(hypothesis, 200 derandomized examples per loader; schemathesis on the service's API, 30 requests "
             "per operation) check the same properties; the kill-safety tests stop export, learn, edit and "
             "generate with SIGINT, SIGTERM and SIGKILL at several points.", "",
             "## Commands", "", "| command | case | exit | traceback | message |", "|---|---|---|---|---|"]
    for command, case, r in result["commands"]:
        lines.append(f"| {command} | {case} | {r['exit']} | {'yes' if r['traceback'] else 'no'} | "
                     f"{r['message'].replace('|', '/')} |")
    lines += ["", "## Loaders, on a fixed sample of mutations", "",
              "| loader | samples | accepted | the project's error | anything else |", "|---|---|---|---|---|"]
    for loader, t in result["loaders"].items():
        total = t["accepted"] + t["svdedit error"] + len(t["other"])
        lines.append(f"| {loader} | {total} | {t['accepted']} | {t['svdedit error']} | "
                     f"{len(t['other'])}{': ' + '; '.join(t['other'][:3]) if t['other'] else ''} |")
    bad = [c for c in result["commands"] if c[2]["traceback"] or c[2]["exit"] not in (0, 2)]
    lines += ["", f"Commands ending otherwise than 0 or 2 without a traceback: {len(bad)}. "
                  f"Loader samples ending in another exception: {sum(len(t['other']) for t in result['loaders'].values())}.", ""]
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from benchmarks.machine import describe
    from svdedit.export.exporter import export_model
    from tests.fixtures.tiny_sd import save_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    pipeline = save_tiny_pipeline("sd1", work / "pipeline")
    engine = work / "engine"
    export_model(pipeline, engine)
    attr = work / "attr.safetensors"
    assert cli("learn", "--engine", engine, "--source", "a red cat", "--target", "a blue cat", "--steps", 10,
               "--iters", 20, "-o", attr)["exit"] == 0
    cases = work / "cases"
    cases.mkdir()
    result = {"machine": describe(), "commands": command_cases(engine, attr, cases),
              "loaders": loader_samples(engine, attr, work)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (RESULTS / "reliability.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
