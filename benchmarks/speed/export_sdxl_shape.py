"""Export an SDXL-architecture pipeline (SDXL base's configs, seeded random weights: a 2.57 G-parameter UNet, 10.3 GB
in fp32) through the product's own `export_model` on a 24 GiB machine, and record time per network, peak RSS and
file sizes.

No pretrained weights can be fetched here, so the pipeline is built from SDXL base's configs (UNet, VAE, CLIP ViT-L,
OpenCLIP ViT-bigG with projection) with random weights; the graphs, their sizes and the export's memory are those of
the real model. The random pipeline is built and saved by a child process, so that the peak RSS recorded is the
export's alone (its own process: `ru_maxrss` of RUSAGE_SELF).

What keeps the export within 24 GiB (export/svdedit/export/exporter.py): the UNet is exported last; every network's
torch outputs for the parity check are computed right after its graph is written, and the UNet's torch weights
are freed (moved to the meta device) before onnxruntime loads its graph for the fusion probe (at the smallest
size) and the parity check; graphs over 1.5 GB keep their weights in external data, written tensor by tensor.

    python -m benchmarks.speed.export_sdxl_shape [--work DIR] [--keep]

Writes benchmarks/results/export_sdxl_shape_fp32.json. Not part of CI (~20 min, ~30 GB of disk).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe

RESULTS = Path(__file__).resolve().parents[1] / "results"


def build_sdxl_shape(out: Path, seed: int = 0) -> int:
    """Save SDXL base's architecture with random weights under `out`; return the UNet's parameter count."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from svdedit.export.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048, norm_num_groups=32)
    parameters = sum(p.numel() for p in unet.parameters())
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=1024, scaling_factor=0.13025, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)

    def clip(width, layers, heads, act, pad, **extra):
        return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              hidden_act=act, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=pad, **extra)
    text = CLIPTextModel(clip(768, 12, 12, "quick_gelu", EOS_ID))
    text_2 = CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu", 0, projection_dim=1280))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2,
                                     tokenizer=build_clip_tokenizer(), tokenizer_2=build_clip_tokenizer(pad_token="!"),
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out, safe_serialization=True)
    return parameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (the pipeline and the engine dir)")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.build_only:
        print(build_sdxl_shape(args.build_only))
        return

    from svdedit.export.exporter import ExportOptions, export_model

    work = args.work or Path(tempfile.mkdtemp(prefix="sdxlshape-"))
    try:
        t0 = time.perf_counter()
        pipe = work / "pipeline"
        child = subprocess.run([sys.executable, "-m", "benchmarks.speed.export_sdxl_shape", "--build-only", str(pipe)],
                               capture_output=True, text=True, check=True)
        unet_parameters = int(child.stdout.split()[-1])
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        manifest = export_model(pipe, work / "engine", ExportOptions(),
                                log=lambda message: print(message, file=sys.stderr, flush=True))
        t_export = time.perf_counter() - t0
        peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        files = {p.name: p.stat().st_size for p in sorted((work / "engine").iterdir())}
        pipeline_bytes = sum(p.stat().st_size for p in pipe.rglob("*") if p.is_file())
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "export_sdxl_shape",
        "precision": "fp32",
        "machine": describe(),
        "versions": manifest.versions,
        "unet_parameters": unet_parameters,
        "pipeline_bytes": pipeline_bytes,
        "build_random_pipeline_s": round(t_build, 1),
        "export_total_s": round(t_export, 1),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "networks": {
            name: {"export_s": net.export_seconds, "parity_max_abs": net.parity["max_abs"],
                   "parity_tolerance": net.parity["tolerance"], "parity_input_shapes": net.parity["input_shapes"],
                   "opset": net.opset, "fused": net.fused}
            for name, net in manifest.networks.items()
        },
        "file_bytes": files,
        "engine_dir_bytes": sum(files.values()),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "export_sdxl_shape_fp32.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
