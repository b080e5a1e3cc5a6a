"""`svdedit export`: the command-line edge of the export stage. torch is imported only when it runs."""

from __future__ import annotations

import argparse
import json
import sys

from svdedit.cli.args import command, lora_args, lora_pairs
from svdedit.runtime.engines.contract import EXPORT_PRECISIONS

HELP = """\
Convert a Stable Diffusion model to an engine dir: four ONNX graphs (text_encoder, unet, vae_encoder,
vae_decoder; SDXL adds text_encoder_2 and tokenizer_2.json) with dynamic batch and image size, tokenizer.json,
schedule.json and manifest.json.

Every graph is checked with onnx.checker and compared with the torch model on onnxruntime's CPU
provider; the export fails, writing nothing, if any network is over tolerance. The result is written
under a temporary name and renamed into place, so an interrupted export leaves nothing half-written.
Exporting the same model with the same options again is a no-op unless --force.

Supported: SD 1.x, SD 2.x (epsilon and v-prediction) and SDXL base text-to-image pipelines (not SDXL's
refiner or inpainting). Needs the `export` extra (torch, diffusers, transformers, onnx) and onnxruntime.

examples:
  svdedit export models/shapes -o engines/shapes
  svdedit export v1-5-pruned-emaonly.safetensors --config sd15-configs/ -o engines/sd15 --precision fp16
  svdedit export sd15/ -o engines/sd15-style --lora style.safetensors --lora-scale 0.8    # fused
  svdedit export sd15/ -o engines/sd15 --lora-ready     # then: svdedit generate --engine engines/sd15 --lora style.safetensors
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "export", run, "convert an SD 1.x/2.x or SDXL model to a validated ONNX engine dir (needs torch)",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a diffusers pipeline folder, or an original-format .safetensors checkpoint (with --config)")
    p.add_argument("-o", "--output", metavar="ENGINE_DIR", required=True, help="the engine dir to write")
    p.add_argument("--config", metavar="DIR",
                   help="for a single-file checkpoint: a local diffusers pipeline folder of the same architecture "
                        "(its configs and tokenizer are used, not its weights)")
    p.add_argument("--precision", choices=EXPORT_PRECISIONS, default="fp32",
                   help="fp16 converts the text encoder and UNet for GPU use (fp32 I/O, softmax and normalisation "
                        "kept fp32; the VAE stays fp32). Default: fp32")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset to export (18-23). Default: the exporter's own")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep attention as plain ONNX operators. By default each attention is fused into onnxruntime's "
                        "MultiHeadAttention (SD 1.5 shape, CPU: UNet calls 1.25-1.7x faster, 1.9-5.2 GiB less peak "
                        "memory; benchmarks/results/session_memory_sd15_cpu.md). TensorRT cannot read fused graphs: export with --no-fuse for `svdedit build`")
    p.add_argument("--step-cache", action="store_true",
                   help="split the UNet in three (unet_in, unet_deep, unet_out; export/svdedit/export/step_cache.py) so that runs may "
                        "recompute its deep branch only every N steps (DeepCache): --cache-interval of generate, edit, "
                        "learn and serve. The weights are not duplicated; a full step equals the whole UNet")
    lora_args(p, "fused into the weights before the export (through diffusers' loader: every format it reads). The "
                 "manifest records each adapter's sha256 and scale; they are part of the engine's identity")
    p.add_argument("--lora-ready", action="store_true",
                   help="keep the weights a LoRA may touch (every Linear and Conv of the UNet and text encoders) "
                        "swappable, in NAME.lora.safetensors beside each graph, so that generate, edit, learn and "
                        "serve can apply --lora at run time without an export")
    p.add_argument("--force", action="store_true", help="export again even if ENGINE_DIR is up to date, and replace "
                                                         "an engine dir made from another model or with other options")


def run(args: argparse.Namespace) -> int:
    from svdedit.export.exporter import ExportOptions, export_model

    manifest = export_model(
        args.source, args.output, ExportOptions(precision=args.precision, opset=args.opset, force=args.force, fuse=args.fuse,
                                          step_cache=args.step_cache, lora=tuple(lora_pairs(args)),
                                          lora_ready=args.lora_ready),
        config=args.config, log=lambda message: print(message, file=sys.stderr),
    )
    summary = {
        "engine_dir": args.output,
        "family": manifest.family,
        "precision": manifest.precision,
        "parity_max_abs": {k: v.parity["max_abs"] for k, v in manifest.networks.items()},
    }
    print(json.dumps(summary))
    return 0
