"""Optimum's own ONNX export of a diffusers pipeline folder (SD 1/2 or SDXL), for the Optimum peer of the edit
benchmarks.

    /path/to/optimum-venv/bin/python -m benchmarks.speed.optimum_export PIPELINE OUT [--max-rss-gib 21]

Runs in a venv of its own (optimum-onnx 0.1.0 pins transformers<4.58 and diffusers<=0.39, facts.md). A pipeline
saved by transformers 5 stores its tokenizers as tokenizer.json alone (read here as fast tokenizers) and the
CLIP text weights without their `text_model.` prefix, and transformers 4.57 then loads random text weights with
only a warning: the text encoders are re-keyed and loaded explicitly, checked to be complete, and saved in a
temporary folder beside links to the pipeline's other parts (the UNet is not loaded twice); Optimum exports that.
Prints the export's seconds and peak RSS (this process, with Optimum's) as the last line, in JSON.

With --max-rss-gib the export runs in a child process whose resident memory is polled every 0.2 s; past the
limit it is stopped and the JSON says so (`fits: false`, the RSS reached, the seconds), rather than letting the
kernel's OOM killer pick a process on a shared 24 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

#: {folder: (transformers class, tokenizer folder, its pad token)}
TEXT_PARTS = {"text_encoder": ("CLIPTextModel", "tokenizer", "<|endoftext|>"),
              "text_encoder_2": ("CLIPTextModelWithProjection", "tokenizer_2", "!")}


def rekeyed_text_encoder(cls, folder: Path):
    """The CLIP text encoder in `folder`, its weights re-keyed for transformers 4.57 and checked to be complete."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig

    model = cls(CLIPTextConfig.from_pretrained(folder))
    expected = set(model.state_dict())
    keyed = {k if k in expected else f"text_model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing = expected - set(keyed) - {"text_model.embeddings.position_ids"}
    if missing:
        sys.exit(f"{folder.name} weights missing after re-keying: {sorted(missing)[:5]}")
    model.load_state_dict(keyed, strict=False)
    return model


def main(pipeline: str, out: str) -> None:
    import torch
    import transformers
    from optimum.exporters.onnx import main_export
    from transformers import CLIPTokenizerFast

    root = Path(pipeline)
    index = json.loads((root / "model_index.json").read_text())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for part in index:
            if part.startswith("_") or not (root / part).is_dir():
                continue
            if part in TEXT_PARTS:
                cls, tok, pad = TEXT_PARTS[part]
                rekeyed_text_encoder(getattr(transformers, cls), root / part).save_pretrained(work / part)
                CLIPTokenizerFast(tokenizer_file=str(root / tok / "tokenizer.json"), bos_token="<|startoftext|>",
                                  eos_token="<|endoftext|>", pad_token=pad, unk_token="<|endoftext|>",
                                  model_max_length=77).save_pretrained(work / tok)
                index[tok] = ["transformers", "CLIPTokenizerFast"]
            elif part not in {t for _, t, _ in TEXT_PARTS.values()}:
                (work / part).symlink_to((root / part).resolve(), target_is_directory=True)
        (work / "model_index.json").write_text(json.dumps(index))
        with torch.no_grad():
            main_export(tmp, output=out, task="text-to-image", device="cpu")
    seconds = time.perf_counter() - t0
    print(json.dumps({"optimum_export_s": round(seconds, 1),
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


def watched(pipeline: str, out: str, limit_gib: float) -> dict:
    """main() in a child process, stopped if its RSS passes `limit_gib`."""
    from benchmarks.machine import run_watched

    t0 = time.perf_counter()
    proc, stopped = run_watched([sys.executable, "-m", "benchmarks.speed.optimum_export", pipeline, out], limit_gib)
    if stopped:
        return {"fits": False, **stopped}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"fits": None, "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
                "stderr_tail": proc.stderr[-2000:]}
    return {"fits": True, **json.loads(lines[-1]), "limit_gib": limit_gib}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline")
    ap.add_argument("out")
    ap.add_argument("--max-rss-gib", type=float, help="stop the export past this resident memory (see above)")
    args = ap.parse_args()
    if args.max_rss_gib:
        print(json.dumps(watched(args.pipeline, args.out, args.max_rss_gib)))
    else:
        main(args.pipeline, args.out)
