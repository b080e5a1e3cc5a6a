"""``svdedit export``: a Stable Diffusion model -> a validated ONNX engine dir.

The story, top to bottom (``export_model``):

1. inspect the source without torch (source.py) and check that the output path may be written;
2. compute the cache key; an engine dir with the same key is already up to date (a no-op);
3. load the four networks in fp32 and, for each: wrap it so that its ONNX inputs/outputs are exactly
   those of the contract (runtime/svdedit/runtime/engines/contract.py; networks.py), export it with torch's dynamo exporter (dynamic batch and spatial
   axes), run ``onnx.checker``, and compare onnxruntime (CPU provider) with torch on seeded random
   inputs of another batch and size than the trace used; a network over tolerance fails the export;
   (with the attention fused into onnxruntime's MultiHeadAttention unless --no-fuse, fusion.py);
4. with ``--precision fp16``, convert the networks the contract's precision policy names (the text
   encoder and the UNet; fp32 I/O; Softmax and normalisation kept fp32, where SD overflows; the VAE
   stays fp32 for the same reason; fp16.py);
5. write tokenizer.json, schedule.json and manifest.json (checked as the runtime reads it), all inside
   a temporary folder that is renamed into place only when everything passed (runtime/svdedit/runtime/files.py: atomic_dir).

`svdedit build` (build.py), the other compile step, turns an engine dir's graphs into TensorRT plans.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from svdedit.export.fp16 import EXTERNAL_DATA_BYTES, convert_fp16
from svdedit.export.lora import (
    LORA_NETWORKS,
    fuse_adapters,
    make_ready,
    modules_of,
    torch_modules,
    unused_modules,
    weight_digests,
)
from svdedit.export.networks import Geometry, geometry, wrappers
from svdedit.export.source import Components, Source, inspect_source, load_components
from svdedit.runtime import __version__ as SVDEDIT_VERSION
from svdedit.runtime.engines.contract import (
    EXPORT_PRECISIONS,
    FAMILIES,
    FP16_KEEP_FP32_OPS,
    MANIFEST_FILE,
    SCHEDULE_FILE,
    TOKENIZER_2_FILE,
    TOKENIZER_FILE,
    NetworkSpec,
    format_version,
    network_io,
    network_precision,
    networks_for,
)
from svdedit.runtime.engines.lora import read_adapter
from svdedit.runtime.engines.manifest import Manifest, read_manifest, write_manifest
from svdedit.runtime.errors import EngineDirError, ExportError, ManifestFieldError, SvdeditError
from svdedit.runtime.files import atomic_dir, sha256_file, sha256_json, write_json

PARITY_SEED = 1234
#: the intervals an engine exported with --step-cache uses unless a run says otherwise: measured in
#: benchmarks/results/speed_*.md (sampling every 2nd step deep; the inversion, which the edit rests on, exact)
STEP_CACHE_INTERVAL = 2
STEP_CACHE_INVERT_INTERVAL = 1


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    opset: int | None = None  # None: the exporter's default
    force: bool = False
    fuse: bool = True  # attention -> onnxruntime's MultiHeadAttention (export/svdedit/export/fusion.py); False for TensorRT
    step_cache: bool = False  # the UNet split in three for step caching (export/svdedit/export/step_cache.py)
    lora: tuple[tuple[str, float], ...] = ()  # LoRA adapters (file, scale) fused into the weights (lora.py)
    lora_ready: bool = False  # the weights a LoRA may touch kept swappable at run time (lora.py)

    def check(self) -> "ExportOptions":
        if self.precision not in EXPORT_PRECISIONS:
            raise SvdeditError(f"--precision {self.precision!r} is not supported; choose one of "
                               f"{', '.join(EXPORT_PRECISIONS)}.")
        if self.opset is not None and not 18 <= self.opset <= 23:
            raise SvdeditError(f"--opset {self.opset} is out of range; torch's ONNX exporter writes opsets 18 to 23.")
        for file, scale in self.lora:
            if not Path(file).is_file():
                raise SvdeditError(f"--lora {file}: no such file. Give the path of a .safetensors LoRA file.")
        return self


# --------------------------------------------------------------------------------------------------
# 1. One network: export, check, parity.
# --------------------------------------------------------------------------------------------------
def _export_onnx(spec: NetworkSpec, module, feeds: dict, path: Path, opset: int | None) -> None:
    import torch

    # Axes named by strings: torch.onnx makes each a Dim.DYNAMIC, whose bounds and relations (a UNet's latent side a
    # multiple of 2 per level, a batch bound) torch.export infers, and names the ONNX axes after them. Named
    # torch.export.Dim objects instead made the first trace of three of SD's four networks fail on those constraints
    # and run again with torch's suggested fixes: each of those networks traced twice.
    dynamic_shapes = {t.name: dict(spec.dynamic_axes()[t.name]) for t in spec.inputs}
    args = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, verbose=False, report=False,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic_shapes, **kwargs,
        )
    _drop_stack_traces(program.model)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)


def _drop_stack_traces(model) -> None:
    """torch's exporter writes on every node the Python stack that made it, with absolute paths of this machine
    (the checkout, the venv's site-packages): 0.68 MB of a tiny UNet's 4 MB graph. An engine dir carries no machine
    path (its manifest does not either), and its graphs' bytes (their sha256, Manifest.graphs_key) must not depend on
    where the export ran. The other node metadata (name scopes, the FX node, the class hierarchy) stays."""
    from onnxscript import ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _torch_outputs(spec: NetworkSpec, module, feeds: dict) -> list[np.ndarray]:
    """The torch module's outputs on `feeds`: the reference the parity checks compare onnxruntime with."""
    import torch

    with torch.no_grad():
        refs = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    return [r.numpy() for r in (refs if isinstance(refs, tuple) else (refs,))]


def _parity(spec: NetworkSpec, refs: list[np.ndarray], path: Path, feeds: dict, precision: str) -> dict:
    """Max |onnxruntime - torch| over the outputs, on the CPU provider, against the contract's tolerance."""
    outs = _ort_session(path).run([t.name for t in spec.outputs], feeds)
    max_abs, ref_max, nonfinite = 0.0, float("inf"), []
    for t, out, ref in zip(spec.outputs, outs, refs):  # every output (the split UNet's parts have several)
        if out.shape != ref.shape:
            raise ExportError(f"{spec.name}: onnxruntime returned {t.name} of shape {out.shape}, torch {ref.shape}; the "
                              f"export is broken.")
        finite = bool(np.all(np.isfinite(out)))
        diff = float(np.max(np.abs(out.astype(np.float64) - ref))) if finite else float("inf")
        if not finite:
            nonfinite.append(t.name)
        max_abs, ref_max = max(max_abs, diff), min(ref_max, float(np.max(np.abs(ref))))
    tol = spec.tolerance(ref_max, precision)  # of the output with the smallest values: the strictest
    return {
        **({"nonfinite_outputs": nonfinite} if nonfinite else {}),
        "max_abs": max_abs,
        "reference_max_abs": ref_max,
        "tolerance": tol,
        "passed": bool(max_abs <= tol),
        "provider": "CPUExecutionProvider",
        "precision": precision,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
    }


@dataclass
class Exported:
    """One network's graph on disk, with the torch outputs its checks compare against (computed while the torch
    weights are loaded, so that they can be freed before onnxruntime loads the graph's)."""

    spec: NetworkSpec
    path: Path
    seconds: float
    feeds: dict           # the parity check's inputs: batch 1 at the model's own size
    probe_feeds: dict     # the attention fusion's probe: batch 1 at the smallest size (shapes only)
    refs: list


def _export_graph(spec: NetworkSpec, module, geo: Geometry, workdir: Path, options: ExportOptions) -> Exported:
    import onnx

    rng = np.random.default_rng(PARITY_SEED)
    # Trace at batch 2 and twice the smallest size; check parity at batch 1 and the model's own size,
    # so that the check also proves the dynamic axes work.
    trace_feeds = geo.feeds(spec, batch=2, image_side=2 * geo.multiple_of, rng=rng)
    check_feeds = geo.feeds(spec, batch=1, image_side=geo.default_size, rng=rng)
    path = workdir / f"{spec.name}.onnx"
    t0 = time.perf_counter()
    _export_onnx(spec, module, trace_feeds, path, options.opset)
    seconds = time.perf_counter() - t0
    onnx.checker.check_model(str(path))
    probe = geo.feeds(spec, batch=1, image_side=geo.multiple_of, rng=np.random.default_rng(PARITY_SEED))
    return Exported(spec, path, seconds, check_feeds, probe, _torch_outputs(spec, module, check_feeds))


def _check_graph(x: Exported, options: ExportOptions, log) -> dict:
    """Fuse the graph's attention (unless --no-fuse), check it against torch's outputs, convert it to fp16 where the
    precision policy says; the manifest's entry for it."""
    import onnx

    name, path = x.spec.name, x.path
    fused = 0
    if options.fuse:
        from svdedit.export.fusion import fuse_attention

        fused = fuse_attention(path, x.probe_feeds)
        log(f"  {name}: {fused} attention(s) fused into MultiHeadAttention")
    parity = _parity(x.spec, x.refs, path, x.feeds, "fp32")
    log(
        f"  {name}: exported in {x.seconds:.1f} s, onnx.checker ok, parity max|ort - torch| = "
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
        "export_seconds": round(x.seconds, 2),
    }
    if fused:
        entry["fused"] = {"MultiHeadAttention": fused}
    if network_precision(name, options.precision) == "fp16":
        convert_fp16(path)
        onnx.checker.check_model(str(path))
        entry["precision"] = "fp16"
        entry["parity_fp16"] = _fp16_parity(x.spec, x.refs, path, x.feeds, log)
    return entry


def _fp16_parity(spec: NetworkSpec, refs: list, path: Path, feeds: dict, log) -> dict:
    """fp16 parity on the CPU provider where it can run fp16 graphs; otherwise say it was not measured."""
    try:
        parity = _parity(spec, refs, path, feeds, "fp16")
    except Exception as exc:  # onnxruntime CPU lacks many fp16 kernels
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        log(f"  {spec.name}: fp16 parity not measurable with the CPU provider ({reason})")
        return {"measured": False, "reason": reason}
    log(f"  {spec.name}: fp16 parity {parity['max_abs']:.2e} (tolerance {parity['tolerance']:.1e})")
    if not parity["passed"]:
        nan = (f" its output {', '.join(parity['nonfinite_outputs'])} holds NaN or inf (an fp16 overflow);"
               if parity.get("nonfinite_outputs") else "")
        raise ExportError(
            f"{spec.name}: the fp16 graph differs from torch by {parity['max_abs']:.3g} (tolerance "
            f"{parity['tolerance']:.3g});{nan} fp16 overflows somewhere in this model. Export with --precision fp32."
        )
    return {"measured": True, **parity}


# --------------------------------------------------------------------------------------------------
# 2. The files beside the graphs.
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


def _write_tokenizer(tok, workdir: Path, file: str = TOKENIZER_FILE) -> dict:
    """The tokenizer as tokenizer.json (or SDXL's second, tokenizer_2.json), and the manifest's record of it."""
    tmp = workdir / ".tokenizer"
    tok.save_pretrained(tmp)
    if not (tmp / "tokenizer.json").is_file():
        raise ExportError(f"the tokenizer could not be saved as {file} (a fast tokenizer is needed).")
    shutil.move(str(tmp / "tokenizer.json"), workdir / file)
    shutil.rmtree(tmp)
    return {
        "file": file,
        "sha256": sha256_file(workdir / file),
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
# 3. The whole export.
# --------------------------------------------------------------------------------------------------
def export_model(
    source: str | Path,
    out_dir: str | Path,
    options: ExportOptions = ExportOptions(),
    config: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Manifest:
    """Export SOURCE to the engine dir OUT_DIR; return its manifest. See the module docstring.
    `log` receives one line per step (the command line prints them on stderr)."""
    options.check()
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    src = inspect_source(source, config)                                                          # 1.
    adapters = [read_adapter(f, s) for f, s in options.lora]  # checked before any model loads: a pickle, bad keys
    source_sha = src.sha256()
    cache_key = sha256_json({"format": format_version(src.family), "svdedit": SVDEDIT_VERSION, "source": source_sha,
                             "precision": options.precision, "opset": options.opset, "fuse": options.fuse,
                             **({"step_cache": True} if options.step_cache else {}),
                             **({"lora": [(a.sha256, a.scale) for a in adapters]} if adapters else {}),
                             **({"lora_ready": True} if options.lora_ready else {})})
    if _up_to_date(out_dir, cache_key, options.force):                                            # 2.
        log(f"{out_dir} is up to date (same model, same options); nothing to do. Pass --force to export again.")
        return read_manifest(out_dir, verify="none")
    _require_onnxruntime()
    log(f"source: {src.path} ({FAMILIES[src.family]}, {src.prediction_type})")
    components = load_components(src)
    fused = fuse_adapters(components, adapters, log) if adapters else []
    models = torch_modules(components)  # by LoRA component
    digests = {component: weight_digests(module) for component, module in models.items()} if options.lora_ready else None
    geo = geometry(components, step_cache=options.step_cache)
    modules = wrappers(components, step_cache=options.step_cache)
    specs = networks_for(src.family)
    # the UNet last, and its torch weights freed before onnxruntime loads its graph (_free_weights)
    order = [n for n in modules if not n.startswith("unet")] + [n for n in modules if n.startswith("unet")]
    try:
        with atomic_dir(out_dir, replace=out_dir.exists()) as work:  # 5. (out_dir exists: --force, or empty)
            networks, unet = {}, {}
            for i, name in enumerate(order, 1):                                                      # 3., 4.
                log(f"[{i}/{len(order)}] {name}")
                exported = _export_graph(specs[name], modules[name], geo, work, options)
                if name.startswith("unet"):
                    unet[name] = exported
                else:
                    networks[name] = _network_entry(specs[name], _checked(exported, options, log, digests, (
                        modules[name], models.get(LORA_NETWORKS.get(name)))), geo, work)
            composed = _composed_reference(components, geo) if options.step_cache else None
            _free_weights(components.unet)
            del modules
            for name, exported in unet.items():
                networks[name] = _network_entry(specs[name], _checked(exported, options, log, digests), geo, work)
            networks = {name: networks[name] for name in _in_contract_order(specs, networks)}
            step_cache = _step_cache_entry(composed, specs, work, log) if options.step_cache else None
            manifest = _write_engine_files(work, src, source_sha, components, geo, networks, cache_key, options, t_start,
                                           step_cache, fused)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise ExportError(
            f"I/O error while writing the engine dir: {exc.strerror or exc}{where}. Nothing was written to {out_dir}; "
            f"free some space or choose another -o, then run the export again."
        ) from None
    log(f"wrote {out_dir} in {manifest.raw['export_seconds']:.1f} s")
    return manifest


def _composed_reference(c: Components, geo: Geometry) -> tuple[dict, np.ndarray]:
    """The whole torch UNet's output on the parity check's inputs: what the split UNet, composed in onnxruntime,
    must give (_step_cache_entry)."""
    spec = networks_for(c.family)["unet"]
    feeds = geo.feeds(spec, batch=1, image_side=geo.default_size, rng=np.random.default_rng(PARITY_SEED))
    return feeds, _torch_outputs(spec, wrappers(c)["unet"], feeds)[0]


def _free_weights(module) -> None:
    """Release a torch module's weights (moved to the meta device): the export needs only the outputs it already
    computed, and onnxruntime is about to load the same weights again. For SDXL's UNet (10.3 GB in fp32) this is
    what keeps the export within 24 GiB."""
    import gc

    module.to("meta")
    gc.collect()


def _in_contract_order(specs: dict, networks: dict) -> list[str]:
    """The networks in the contract's order (the manifest's), whatever order they were exported in."""
    return [n for n in specs if n in networks]


def _step_cache_entry(composed: tuple[dict, np.ndarray], specs: dict, work: Path, log) -> dict:
    """The split UNet composed in onnxruntime (unet_in -> unet_deep -> unet_out) against the whole torch UNet, on the
    parity check's inputs; the manifest's step_cache record. Over tolerance, the export fails."""
    feeds, ref = composed
    first = dict(zip(("hidden", "skips", "emb"), _ort_session(work / "unet_in.onnx").run(None, feeds)))
    text = feeds["encoder_hidden_states"]
    deep = _ort_session(work / "unet_deep.onnx").run(None, {"hidden": first["hidden"], "emb": first["emb"],
                                                              "encoder_hidden_states": text})[0]
    out = _ort_session(work / "unet_out.onnx").run(None, {"deep": deep, "skips": first["skips"], "emb": first["emb"],
                                                           "encoder_hidden_states": text})[0]
    max_abs = float(np.max(np.abs(out.astype(np.float64) - ref))) if np.all(np.isfinite(out)) else float("inf")
    tol = specs["unet"].tolerance(float(np.max(np.abs(ref))), "fp32")
    log(f"  step cache: unet_in -> unet_deep -> unet_out against the whole UNet: max|ort - torch| = {max_abs:.2e} "
        f"(tolerance {tol:.1e}) {'ok' if max_abs <= tol else 'FAILED'}")
    if not max_abs <= tol:
        raise ExportError(f"the split UNet differs from the whole by {max_abs:.3g} (tolerance {tol:.3g}); this UNet "
                          f"cannot be split for step caching. Export it without --step-cache.")
    return {"interval": STEP_CACHE_INTERVAL, "invert_interval": STEP_CACHE_INVERT_INTERVAL,
            "composed_parity": {"max_abs": max_abs, "tolerance": tol, "passed": True,
                                "input_shapes": {k: list(v.shape) for k, v in feeds.items()}}}


def _up_to_date(out_dir: Path, cache_key: str, force: bool) -> bool:
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
        manifest = read_manifest(out_dir, verify="all")
    except EngineDirError as exc:
        if force:
            return False
        raise SvdeditError(f"ENGINE_DIR {out_dir} holds a damaged engine dir ({exc}) Pass --force to replace it.") from None
    if manifest.cache_key == cache_key and not force:
        return True
    if not force:
        src = manifest.source or {}
        origin = f"{src.get('name') or src.get('path') or 'another model'} (source sha256 {str(src.get('sha256'))[:12]})"
        raise SvdeditError(
            f"ENGINE_DIR {out_dir} already holds an engine dir exported from {origin} with other options or another "
            f"model version. Pass --force to replace it, or choose another -o."
        )
    return False


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401  (the parity check needs it)
    except ImportError:
        raise SvdeditError(
            "the export's parity check needs onnxruntime, which is not installed. Install `svdedit[export,cpu]` "
            "(or `[export,gpu]` on an NVIDIA machine)."
        ) from None


def _checked(x: Exported, options: ExportOptions, log, digests: dict | None, torch_model: tuple = (None, None)) -> dict:
    """_check_graph, then (--lora-ready) the weights a LoRA may touch moved beside the graph (lora.make_ready).
    `torch_model`: (the network's torch wrapper, its component's model) while they are loaded (not the UNet's, freed
    by then): the component's modules whose weights the graph does not hold are then recorded as lora_unused if no
    gradient reaches them (a LoRA layer there changes nothing), and stay refused otherwise."""
    entry = _check_graph(x, options, log)
    component = LORA_NETWORKS.get(x.spec.name)
    if digests is not None and component in digests:
        entry.update(make_ready(x.path, digests[component]))
        wrapper, model = torch_model
        unmatched = sorted(modules_of(digests[component]) - set(entry["lora_targets"]))
        if unmatched and wrapper is not None:
            unused = unused_modules(wrapper, model, unmatched, [x.feeds[t.name] for t in x.spec.inputs])
            if unused:
                entry["lora_unused"] = unused
        log(f"  {x.spec.name}: {len(entry['lora_targets'])} layer(s) kept swappable for run-time LoRA"
            + (f", {len(entry['lora_unused'])} not in the graph" if entry.get("lora_unused") else ""))
    return entry


def _network_entry(spec: NetworkSpec, entry: dict, geo: Geometry, work: Path) -> dict:
    """The manifest's record of one exported network: its files and their hashes, its I/O, how it was made."""
    path = work / f"{spec.name}.onnx"
    data = path.with_name(path.name + ".data")
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        **({"external_data": data.name, "external_data_sha256": sha256_file(data)} if data.exists() else {}),
        **network_io(spec, geo.dims),
        **entry,
        **({"lora_weights_sha256": sha256_file(work / entry["lora_weights"])} if "lora_weights" in entry else {}),
    }


def _write_engine_files(work: Path, src: Source, source_sha: str, c: Components, geo: Geometry, networks: dict,
                        cache_key: str, options: ExportOptions, t_start: float, step_cache: dict | None,
                        fused: list[dict]) -> Manifest:
    """tokenizer.json, schedule.json and manifest.json beside the graphs; the manifest is checked before it is
    written, so that the export never writes one the runtime would refuse."""
    tokenizer = _write_tokenizer(c.tokenizer, work)
    write_json(work / SCHEDULE_FILE, _schedule(c, geo, src.prediction_type))
    xl = {}
    if c.is_xl:
        xl = {"text_2": {"sequence_length": geo.dims.sequence_length, "hidden_size": geo.dims.hidden_size_2,
                         **_write_tokenizer(c.tokenizer_2, work, TOKENIZER_2_FILE)},
              "added_conditioning": {"hidden_sizes": [geo.dims.hidden_size_1, geo.dims.hidden_size_2],
                                     "pooled_size": geo.dims.pooled_size, "time_ids": geo.dims.time_ids_size,
                                     "force_zeros_for_empty_prompt": c.force_zeros_for_empty_prompt}}
    raw = {
        "format_version": format_version(src.family),
        "cache_key": cache_key,
        "family": src.family,
        "prediction_type": src.prediction_type,
        "precision": options.precision,
        # the source by name and content, never by machine path: an engine dir is copied, packaged and shared
        "source": {"kind": src.kind, "name": src.path.resolve().name, "config": src.config_dir.resolve().name,
                   "sha256": source_sha},
        "latent": {"channels": geo.dims.latent_channels, "vae_scale_factor": geo.vae_scale_factor,
                   "vae_scaling_factor": float(c.vae.config.scaling_factor)},
        "text": {"sequence_length": geo.dims.sequence_length, "hidden_size": geo.dims.hidden_size, **tokenizer},
        "image_size": {"default": geo.default_size, "multiple_of": geo.multiple_of, "min": geo.multiple_of,
                       "max": 2 * geo.default_size},
        "schedule": {"file": SCHEDULE_FILE, "sha256": sha256_file(work / SCHEDULE_FILE)},
        "networks": networks,
        "fp16": {"networks": [n for n in networks if network_precision(n, "fp16") == "fp16"],
                 "kept_fp32_ops": FP16_KEEP_FP32_OPS} if options.precision == "fp16" else None,
        "options": {"precision": options.precision, "opset": options.opset, "fuse": options.fuse,
                    "step_cache": options.step_cache, "lora_ready": options.lora_ready},
        **({"lora": {"fused": fused}} if fused else {}),
        **({"step_cache": step_cache} if step_cache else {}),
        **xl,
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "export_seconds": round(time.perf_counter() - t_start, 1),
    }
    try:
        manifest = Manifest.from_dict(raw)
    except ManifestFieldError as exc:
        raise ExportError(f"the export made a manifest this runtime cannot read ({exc}); this is a bug.") from None
    write_manifest(work, manifest)
    return manifest
