"""Optimum's own ONNX export of a diffusers pipeline folder, for the Optimum peer of the edit benchmarks.

    /path/to/optimum-venv/bin/python -m benchmarks.speed.optimum_export PIPELINE OUT

Runs in a venv of its own (optimum-onnx 0.1.0 pins transformers<4.58 and diffusers<=0.39, facts.md). A pipeline
saved by transformers 5 stores its tokenizer as tokenizer.json alone (read here as a fast tokenizer) and the
CLIP text weights without their `text_model.` prefix, and transformers 4.57
then loads random text weights with only a warning: the weights are re-keyed and loaded explicitly, checked
to be complete, and the pipeline is re-saved in a temporary folder before Optimum exports it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def main(pipeline: str, out: str) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from optimum.exporters.onnx import main_export
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    root = Path(pipeline)
    tokenizer = CLIPTokenizerFast(tokenizer_file=str(root / "tokenizer" / "tokenizer.json"), bos_token="<|startoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                  model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    weights = load_file(str(root / "text_encoder" / "model.safetensors"))
    expected = set(text.state_dict())
    keyed = {k if k in expected else f"text_model.{k}": v for k, v in weights.items()}
    missing = expected - set(keyed) - {"text_model.embeddings.position_ids"}
    if missing:
        sys.exit(f"text encoder weights missing after re-keying: {sorted(missing)[:5]}")
    text.load_state_dict(keyed, strict=False)
    pipe = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained(root / "vae"), text_encoder=text,
                                   tokenizer=tokenizer, unet=UNet2DConditionModel.from_pretrained(root / "unet"),
                                   scheduler=DDIMScheduler.from_pretrained(root / "scheduler"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        index = Path(tmp) / "model_index.json"
        data = json.loads(index.read_text())
        data["tokenizer"] = ["transformers", "CLIPTokenizerFast"]
        index.write_text(json.dumps(data))
        with torch.no_grad():
            main_export(tmp, output=out, task="text-to-image", device="cpu")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
