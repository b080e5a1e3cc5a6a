"""``svdedit export``: a Stable Diffusion model -> a validated ONNX engine dir.

The story, top to bottom (``export_model``):

1. inspect the source without torch (source.py) and check that the output path may be written;
2. compute the cache key; an engine dir with the same key is already up to date (a no-op);
3. load the four networks in fp32 and, for each: wrap it so that its ONNX inputs/outputs are exactly
   those of runtime/contract.py, export it with torch's dynamo exporter (dynamic batch and spatial
   axes), run ``onnx.checker``, and compare onnxruntime (CPU provider) with torch on seeded random
   inputs of another batch and size than the trace used; a network over tolerance fails the export;
4. with ``--precision fp16``, convert the text encoder and the UNet to fp16 (fp32 I/O; Softmax and
   normalisation kept fp32, where SD overflows; the VAE stays fp32 for the same reason);
5. write tokenizer.json, schedule.json and manifest.json, all inside a temporary folder that is
   renamed into place only when everything passed (runtime/files.py: atomic_dir).
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from svdedit.export.source import Components, Source, inspect_source, load_components
from svdedit.runtime.contract import (
    FAMILIES,
    FORMAT_VERSION,
    MANIFEST_FILE,
    NETWORKS,
    SCHEDULE_FILE,
    TOKENIZER_FILE,
    ModelDims,
    NetworkSpec,
    network_io,
    read_manifest,
)
from svdedit.runtime.errors import EngineDirError, ExportError, SvdeditError
from svdedit.runtime.files import atomic_dir, sha256_file, sha256_json, write_json

SVDEDIT_VERSION = "0.1.0"
PRECISIONS = ("fp32", "fp16")
#: networks converted by --precision fp16; the VAE stays fp32 (SD's VAE overflows fp16)
FP16_NETWORKS = ("text_encoder", "unet")
#: ops kept in fp32 inside fp16 graphs: attention softmax and normalisation statistics overflow in SD
FP16_KEEP_FP32_OPS = ["Softmax", "GroupNormalization", "InstanceNormalization", "LayerNormalization", "ReduceMean", "Pow"]
#: above this many bytes of weights a graph keeps its tensors in one external .onnx.data file (protobuf caps at 2 GB)
EXTERNAL_DATA_BYTES = 1_500_000_000
PARITY_SEED = 1234


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    opset: int | None = None  # None: the exporter's default
    force: bool = False
    fuse: bool = True  # attention -> onnxruntime's MultiHeadAttention (export/fusion.py); False for TensorRT


# --------------------------------------------------------------------------------------------------
# 1. Wrappers: each network as a module whose forward() has exactly the contract's inputs and outputs.
# --------------------------------------------------------------------------------------------------
def _wrappers(c: Components) -> dict:
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, return_dict=False)[0]  # last_hidden_state

    class UNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            # the posterior mean: inversion needs a deterministic encoding, never latent_dist.sample()
            return self.m.encode(image, return_dict=False)[0].mean

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent):
            return self.m.decode(latent, return_dict=False)[0]

    return {
        "text_encoder": TextEncoder(c.text_encoder),
        "unet": UNet(c.unet),
        "vae_encoder": VaeEncoder(c.vae),
        "vae_decoder": VaeDecoder(c.vae),
    }


@dataclass(frozen=True)
class Geometry:
    """Sizes of one model, read from its configs."""

    dims: ModelDims
    vae_scale_factor: int  # image pixels per latent pixel (8 for SD)
    multiple_of: int  # image sides must be multiples of this (VAE factor x UNet downsampling)
    default_size: int  # the image side the model was trained at
    vocab_size: int

    def feeds(self, spec: NetworkSpec, batch: int, image_side: int, rng: np.random.Generator) -> dict:
        """Seeded random inputs for one network, shaped by the contract."""
        sizes = {
            "batch": batch,
            "height": image_side,
            "width": image_side,
            "latent_height": image_side // self.vae_scale_factor,
            "latent_width": image_side // self.vae_scale_factor,
        }
        feeds = {}
        for t in spec.inputs:
            shape = [sizes[d] if isinstance(d, str) else d for d in self.dims.resolve(t.dims)]
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(0, self.vocab_size, size=shape, dtype=np.int64)
            elif t.name == "timestep":
                feeds[t.name] = rng.integers(0, 1000, size=shape).astype(np.float32)
            elif t.name == "image":
                feeds[t.name] = rng.uniform(-1, 1, size=shape).astype(np.float32)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def _geometry(c: Components) -> Geometry:
    vae_factor = 2 ** (len(c.vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(c.unet.config.down_block_types) - 1)
    return Geometry(
        dims=ModelDims(
            sequence_length=int(c.tokenizer.model_max_length),
            hidden_size=int(c.text_encoder.config.hidden_size),
            latent_channels=int(c.vae.config.latent_channels),
        ),
        vae_scale_factor=vae_factor,
        multiple_of=vae_factor * unet_factor,
        default_size=int(c.unet.config.sample_size) * vae_factor,
        vocab_size=int(c.text_encoder.config.vocab_size),
    )


# --------------------------------------------------------------------------------------------------
# 2. One network: export, check, parity.
# --------------------------------------------------------------------------------------------------
def _export_onnx(spec: NetworkSpec, module, feeds: dict, path: Path, opset: int | None) -> None:
    import torch

    dims: dict = {}
    dynamic_shapes = {
        t.name: {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic_axes()[t.name].items()}
        for t in spec.inputs
    }
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, verbose=False, report=False,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic_shapes, **kwargs,
        )
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _parity(spec: NetworkSpec, module, path: Path, feeds: dict, precision: str) -> dict:
    """Max |onnxruntime - torch| over the outputs, on the CPU provider, against the contract's tolerance."""
    import torch

    with torch.no_grad():
        ref = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs)).numpy()
    out = _ort_session(path).run([spec.outputs[0].name], feeds)[0]
    if out.shape != ref.shape:
        raise ExportError(f"{spec.name}: onnxruntime returned shape {out.shape}, torch {ref.shape}; the export is broken.")
    max_abs = float(np.max(np.abs(out.astype(np.float64) - ref))) if np.all(np.isfinite(out)) else float("inf")
    ref_max = float(np.max(np.abs(ref)))
    tol = spec.tolerance(ref_max, precision)
    return {
        "max_abs": max_abs,
        "reference_max_abs": ref_max,
        "tolerance": tol,
        "passed": bool(max_abs <= tol),
        "provider": "CPUExecutionProvider",
        "precision": precision,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
    }


def _drop_duplicate_nodes(graph) -> None:
    """Remove exact repeats of a node (same name, op, inputs, outputs, attributes).

    onnxruntime's fp16 converter inserts one Cast per *consumer* of a blocked op's fp16 input, all with
    the same name and output; the dynamo exporter shares constants between many nodes, so one
    constant gets dozens of identical Casts, which onnxruntime refuses ("two nodes with same node
    name"). The converter also appends its Casts after their consumers, so the kept nodes are then
    put back in topological order (onnx.checker requires it).
    """
    seen: set[bytes] = set()
    kept = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    outputs = [o for n in kept for o in n.output if o]
    if len(outputs) != len(set(outputs)):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise ExportError(f"the fp16 conversion produced two nodes writing {dup!r}; export with --precision fp32.")
    del graph.node[:]
    graph.node.extend(_topological_order(kept))


def _topological_order(nodes: list) -> list:
    """Kahn's algorithm over tensor names (the converter appends its Casts after their consumers)."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ExportError("the fp16 conversion produced a graph with a cycle; export with --precision fp32.")
    return [nodes[i] for i in order]


def _convert_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    external = path.with_name(path.name + ".data")
    model = onnx.load(str(path), load_external_data=True)
    model16 = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32_OPS
    )
    del model
    _drop_duplicate_nodes(model16.graph)
    if external.exists():
        external.unlink()
    if model16.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model16, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external.name)
    else:
        onnx.save_model(model16, str(path))


def _export_network(name: str, module, geo: Geometry, workdir: Path, options: ExportOptions, log) -> dict:
    import onnx

    spec = NETWORKS[name]
    rng = np.random.default_rng(PARITY_SEED)
    # Trace at batch 2 and twice the smallest size; check parity at batch 1 and the model's own size,
    # so that the check also proves the dynamic axes work.
    trace_feeds = geo.feeds(spec, batch=2, image_side=2 * geo.multiple_of, rng=rng)
    check_feeds = geo.feeds(spec, batch=1, image_side=geo.default_size, rng=rng)
    path = workdir / f"{name}.onnx"
    t0 = time.perf_counter()
    _export_onnx(spec, module, trace_feeds, path, options.opset)
    t_export = time.perf_counter() - t0
    onnx.checker.check_model(str(path))
    fused = 0
    if options.fuse:
        from svdedit.export.fusion import fuse_attention

        fused = fuse_attention(path, check_feeds)
        log(f"  {name}: {fused} attention(s) fused into MultiHeadAttention")
    parity = _parity(spec, module, path, check_feeds, "fp32")
    log(
        f"  {name}: exported in {t_export:.1f} s, onnx.checker ok, parity max|ort - torch| = "
        f"{parity['max_abs']:.2e} (tolerance {parity['tolerance']:.1e}) {'ok' if parity['passed'] else 'FAILED'}"
    )
    if not parity["passed"]:
        raise ExportError(
            f"{name}: onnxruntime differs from torch by {parity['max_abs']:.3g}, over the tolerance "
            f"{parity['tolerance']:.3g}. The ONNX graph does not compute what the model computes; no engine dir was "
            f"written. Try another --opset, and report the model if it persists."
        )
    model = onnx.load(str(path), load_external_data=False)
    entry = {
        "precision": "fp32",
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "parity": parity,
        "export_seconds": round(t_export, 2),
    }
    if fused:
        entry["fused"] = {"MultiHeadAttention": fused}
    if options.precision == "fp16" and name in FP16_NETWORKS:
        _convert_fp16(path)
        onnx.checker.check_model(str(path))
        entry["precision"] = "fp16"
        entry["parity_fp16"] = _fp16_parity(spec, module, path, check_feeds, log)
    return entry


def _fp16_parity(spec: NetworkSpec, module, path: Path, feeds: dict, log) -> dict:
    """fp16 parity on the CPU provider where it can run fp16 graphs; otherwise say it was not measured."""
    try:
        parity = _parity(spec, module, path, feeds, "fp16")
    except Exception as exc:  # onnxruntime CPU lacks many fp16 kernels
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        log(f"  {spec.name}: fp16 parity not measurable with the CPU provider ({reason})")
        return {"measured": False, "reason": reason}
    log(f"  {spec.name}: fp16 parity {parity['max_abs']:.2e} (tolerance {parity['tolerance']:.1e})")
    if not parity["passed"]:
        raise ExportError(
            f"{spec.name}: the fp16 graph differs from torch by {parity['max_abs']:.3g} (tolerance "
            f"{parity['tolerance']:.3g}); fp16 overflows somewhere in this model. Export with --precision fp32."
        )
    return {"measured": True, **parity}


# --------------------------------------------------------------------------------------------------
# 3. The files beside the graphs.
# --------------------------------------------------------------------------------------------------
def _schedule(c: Components, geo: Geometry, prediction_type: str) -> dict:
    """Everything the runtime's DDIM needs, with betas and alphas_cumprod as diffusers computes them."""
    from diffusers import DDIMScheduler

    cfg = c.scheduler_config
    ddim = DDIMScheduler.from_config(cfg)
    return {
        "num_train_timesteps": int(ddim.config.num_train_timesteps),
        "beta_schedule": ddim.config.beta_schedule,
        "beta_start": float(ddim.config.beta_start),
        "beta_end": float(ddim.config.beta_end),
        "prediction_type": prediction_type,
        "timestep_spacing": ddim.config.timestep_spacing,
        "steps_offset": int(ddim.config.steps_offset),
        "set_alpha_to_one": bool(cfg.get("set_alpha_to_one", True)),
        "clip_sample": bool(ddim.config.clip_sample),
        "rescale_betas_zero_snr": bool(ddim.config.rescale_betas_zero_snr),
        "vae_scaling_factor": float(c.vae.config.scaling_factor),
        "vae_scale_factor": geo.vae_scale_factor,
        "betas": ddim.betas.tolist(),
        "alphas_cumprod": ddim.alphas_cumprod.tolist(),
        "source_scheduler": cfg.get("_class_name"),
    }


def _write_tokenizer(c: Components, workdir: Path) -> dict:
    tmp = workdir / ".tokenizer"
    c.tokenizer.save_pretrained(tmp)
    if not (tmp / "tokenizer.json").is_file():
        raise ExportError("the tokenizer could not be saved as tokenizer.json (a fast tokenizer is needed).")
    shutil.move(str(tmp / "tokenizer.json"), workdir / TOKENIZER_FILE)
    shutil.rmtree(tmp)
    tok = c.tokenizer
    return {
        "file": TOKENIZER_FILE,
        "sha256": sha256_file(workdir / TOKENIZER_FILE),
        "model_max_length": int(tok.model_max_length),
        "pad_id": int(tok.pad_token_id),
        "bos_id": int(tok.bos_token_id),
        "eos_id": int(tok.eos_token_id),
    }


def _versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    return {
        "svdedit": SVDEDIT_VERSION,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# --------------------------------------------------------------------------------------------------
# 4. The whole export.
# --------------------------------------------------------------------------------------------------
def _check_output(out_dir: Path, cache_key: str, force: bool) -> bool:
    """True when out_dir already holds this exact export. Raises if out_dir may not be written."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise SvdeditError(f"ENGINE_DIR {out_dir} is a file. Choose a folder path for -o.")
    if not any(out_dir.iterdir()):
        return False
    if not (out_dir / MANIFEST_FILE).is_file():
        raise SvdeditError(
            f"ENGINE_DIR {out_dir} already holds files that are not an svdedit engine dir (no {MANIFEST_FILE}). "
            f"svdedit will not overwrite them, not even with --force: choose another -o, or empty the folder yourself."
        )
    try:
        manifest = read_manifest(out_dir, verify_hashes=True)
    except EngineDirError as exc:
        if force:
            return False
        raise SvdeditError(f"ENGINE_DIR {out_dir} holds a damaged engine dir ({exc}) Pass --force to replace it.") from None
    if manifest.get("cache_key") == cache_key and not force:
        return True
    if not force:
        src = manifest.get("source", {}).get("path")
        raise SvdeditError(
            f"ENGINE_DIR {out_dir} already holds an engine dir exported from {src} with other options or another "
            f"model version. Pass --force to replace it, or choose another -o."
        )
    return False


def export_model(
    source: str | Path,
    out_dir: str | Path,
    options: ExportOptions = ExportOptions(),
    config: str | Path | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """Export SOURCE to the engine dir OUT_DIR; return its manifest. See the module docstring."""
    if options.precision not in PRECISIONS:
        raise SvdeditError(f"--precision {options.precision!r} is not supported; choose one of {', '.join(PRECISIONS)}.")
    if options.opset is not None and not 18 <= options.opset <= 23:
        raise SvdeditError(f"--opset {options.opset} is out of range; torch's ONNX exporter writes opsets 18 to 23.")
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    src: Source = inspect_source(source, config)
    source_sha = src.sha256()
    cache_key = sha256_json(
        {"format": FORMAT_VERSION, "svdedit": SVDEDIT_VERSION, "source": source_sha, "precision": options.precision,
         "opset": options.opset, "fuse": options.fuse}
    )
    if _check_output(out_dir, cache_key, options.force):
        log(f"{out_dir} is up to date (same model, same options); nothing to do. Pass --force to export again.")
        return read_manifest(out_dir, verify_hashes=False)
    try:
        import onnxruntime  # noqa: F401  (the parity check needs it)
    except ImportError:
        raise SvdeditError(
            "the export's parity check needs onnxruntime, which is not installed. Install `svdedit[export,cpu]` "
            "(or `[export,gpu]` on an NVIDIA machine)."
        ) from None

    log(f"source: {src.path} ({FAMILIES[src.family]}, {src.prediction_type})")
    components = load_components(src)
    geo = _geometry(components)
    modules = _wrappers(components)
    try:
        with atomic_dir(out_dir, replace=True) as work:
            networks = {}
            for i, name in enumerate(NETWORKS, 1):
                log(f"[{i}/{len(NETWORKS)}] {name}")
                entry = _export_network(name, modules[name], geo, work, options, log)
                path = work / f"{name}.onnx"
                data = path.with_name(path.name + ".data")
                networks[name] = {
                    "file": path.name,
                    "sha256": sha256_file(path),
                    **({"external_data": data.name, "external_data_sha256": sha256_file(data)} if data.exists() else {}),
                    **network_io(NETWORKS[name], geo.dims),
                    **entry,
                }
            tokenizer = _write_tokenizer(components, work)
            write_json(work / SCHEDULE_FILE, _schedule(components, geo, src.prediction_type))
            manifest = {
                "format_version": FORMAT_VERSION,
                "cache_key": cache_key,
                "family": src.family,
                "prediction_type": src.prediction_type,
                "precision": options.precision,
                "source": {"kind": src.kind, "path": str(src.path.resolve()), "config": str(src.config_dir.resolve()),
                           "sha256": source_sha},
                "latent": {"channels": geo.dims.latent_channels, "vae_scale_factor": geo.vae_scale_factor,
                           "vae_scaling_factor": float(components.vae.config.scaling_factor)},
                "text": {"sequence_length": geo.dims.sequence_length, "hidden_size": geo.dims.hidden_size, **tokenizer},
                "image_size": {"default": geo.default_size, "multiple_of": geo.multiple_of, "min": geo.multiple_of,
                               "max": 2 * geo.default_size},
                "schedule": {"file": SCHEDULE_FILE, "sha256": sha256_file(work / SCHEDULE_FILE)},
                "networks": networks,
                "fp16": {"networks": list(FP16_NETWORKS), "kept_fp32_ops": FP16_KEEP_FP32_OPS}
                if options.precision == "fp16" else None,
                "options": {"precision": options.precision, "opset": options.opset, "fuse": options.fuse},
                "versions": _versions(),
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
                "export_seconds": round(time.perf_counter() - t_start, 1),
            }
            write_json(work / MANIFEST_FILE, manifest)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise ExportError(
            f"I/O error while writing the engine dir: {exc.strerror or exc}{where}. Nothing was written to {out_dir}; "
            f"free some space or choose another -o, then run the export again."
        ) from None
    log(f"wrote {out_dir} in {manifest['export_seconds']:.1f} s")
    return manifest
