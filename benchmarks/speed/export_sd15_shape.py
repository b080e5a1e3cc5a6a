"""Export an SD 1.5-architecture pipeline (random weights: 859.5 M-parameter UNet) once, through the
product's own `export_model`, and record time per network, peak RSS and file sizes.

No pretrained weights can be fetched here, so the pipeline is built from SD 1.5's configs with seeded
random weights; the graphs, their sizes and the export's cost are those of the real model.

    python -m benchmarks.speed.export_sd15_shape [--precision fp32|fp16] [--work DIR]

Writes benchmarks/results/export_sd15_shape_<precision>.json. Not part of CI (minutes, ~10 GB disk).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe

RESULTS = Path(__file__).resolve().parents[1] / "results"


def build_sd15_shape(out: Path, seed: int = 0) -> int:
    """Save the pipeline under `out`; return the UNet's parameter count."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from svdedit.export.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's config
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in unet.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    args = ap.parse_args()

    from svdedit.export.exporter import ExportOptions, export_model

    work = args.work or Path(tempfile.mkdtemp(prefix="sd15shape-"))
    try:
        t0 = time.perf_counter()
        pipe = work / "pipeline"
        unet_parameters = build_sd15_shape(pipe)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = export_model(pipe, work / "engine", ExportOptions(precision=args.precision),
                                log=lambda message: print(message, file=sys.stderr))
        t_export = time.perf_counter() - t0
        peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        files = {p.name: p.stat().st_size for p in sorted((work / "engine").iterdir())}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "export_sd15_shape",
        "precision": args.precision,
        "machine": describe(),
        "versions": manifest.versions,
        "unet_parameters": unet_parameters,
        "build_random_pipeline_s": round(t_build, 1),
        "export_total_s": round(t_export, 1),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "networks": {
            name: {
                "export_s": net.export_seconds,
                "precision": net.precision,
                "parity_max_abs": net.parity["max_abs"],
                "parity_tolerance": net.parity["tolerance"],
                "parity_fp16": net.parity_fp16,
                "opset": net.opset,
            }
            for name, net in manifest.networks.items()
        },
        "file_bytes": files,
        "engine_dir_bytes": sum(files.values()),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"export_sd15_shape_{args.precision}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
