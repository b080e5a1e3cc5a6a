"""What ``svdedit export`` is given: find, validate and load a Stable Diffusion model.

``inspect_source`` reads only JSON configs and safetensors headers (no torch), so every user mistake
is reported in a second or two, before the slow part starts. ``load_components`` then loads the four
networks with diffusers/transformers in fp32.

Supported: SD 1.x and SD 2.x (epsilon or v-prediction) text-to-image pipelines, given either as a
diffusers pipeline folder or as one original-format ``.safetensors`` checkpoint plus ``--config DIR``
(a local diffusers pipeline folder of the same architecture, whose configs and tokenizer are used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from svdedit.runtime.engines.contract import FAMILIES
from svdedit.runtime.errors import SourceError
from svdedit.runtime.files import check_safetensors, sha256_file, sha256_json

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")
SUPPORTED = "; ".join(f"{k}: {v}" for k, v in FAMILIES.items())
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" or "single_file"
    path: Path  # the pipeline folder, or the .safetensors checkpoint
    config_dir: Path  # where the component configs and the tokenizer come from
    family: str  # a key of contract.FAMILIES
    prediction_type: str  # "epsilon" or "v_prediction"
    files: tuple[Path, ...]  # every file that defines the model (configs, tokenizer, weights)

    def sha256(self) -> str:
        """One hash for the whole model: its files' hashes by relative name."""
        base = self.config_dir if self.kind == "single_file" else self.path
        entries = {}
        for f in self.files:
            key = f.name if f == self.path else str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
            entries[key] = sha256_file(f)
        return sha256_json(entries)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        return data
    except FileNotFoundError:
        raise SourceError(f"{what}: {path} is missing.") from None
    except (ValueError, RecursionError) as exc:
        raise SourceError(f"{what}: {path} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}).") from None


def _check_pipeline_configs(folder: Path, what: str) -> tuple[str, str, list[Path]]:
    """Validate a diffusers pipeline folder's configs; return (family, prediction_type, config files)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise SourceError(
            f"{what} {folder} is not a diffusers Stable Diffusion pipeline folder: it has no model_index.json. "
            f"Pass the folder that `StableDiffusionPipeline.save_pretrained` wrote (it holds model_index.json, "
            f"unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
        )
    _check_index(folder, _read_json(index_path, what), what)
    configs = [index_path] + [folder / c / "config.json" for c in ("unet", "vae", "text_encoder")]
    unet, vae, text = (_read_json(path, what) for path in configs[1:])
    _check_architecture(folder, unet, vae, text, what)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    prediction = _read_json(sched_path, what).get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise SourceError(
            f"{what} {folder}: scheduler prediction_type {prediction!r} is not supported; svdedit's DDIM handles "
            f"'epsilon' and 'v_prediction'. Fix {sched_path} if it is wrong."
        )
    # CLIP ViT-L (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
    family = "sd1" if text.get("hidden_act", "quick_gelu") == "quick_gelu" else "sd2"
    if family == "sd2" and prediction == "v_prediction":
        family = "sd2-v"
    tok = sorted(p for p in (folder / "tokenizer").glob("*") if p.is_file())
    if not tok:
        raise SourceError(f"{what} {folder}: tokenizer/ is empty or missing; the pipeline folder is incomplete.")
    return family, prediction, configs + [sched_path] + tok


def _check_index(folder: Path, index: dict, what: str) -> None:
    """model_index.json: a Stable Diffusion text-to-image pipeline, not SDXL, with every component."""
    class_name = str(index.get("_class_name", ""))
    if "text_encoder_2" in index or "XL" in class_name:
        raise SourceError(
            f"{what} {folder} is an SDXL-family pipeline ({class_name}), which svdedit does not support. "
            f"Supported families: {SUPPORTED}."
        )
    missing = [c for c in COMPONENTS if not (isinstance(index.get(c), list) and index[c][0])]
    if missing:
        raise SourceError(
            f"{what} {folder} is a {class_name or 'diffusers'} pipeline without {', '.join(missing)}, so it is not "
            f"a Stable Diffusion text-to-image pipeline. Supported families: {SUPPORTED}."
        )


def _check_architecture(folder: Path, unet: dict, vae: dict, text: dict, what: str) -> None:
    """The UNet, VAE and text encoder configs: a plain text-to-image UNet over the VAE's latents, a CLIP text
    encoder of the width the UNet attends to."""
    for config, name, keys in ((unet, "unet", ("in_channels", "cross_attention_dim", "sample_size")),
                               (vae, "vae", ("latent_channels",)), (text, "text_encoder", ("hidden_size", "vocab_size"))):
        for key in keys:
            value = config.get(key)
            if key in config and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SourceError(f"{what} {folder}: {name}/config.json has {key} = {value!r}; it must be a positive "
                                  f"whole number. The config is damaged or of another kind of model.")
    for config, name, key in ((unet, "unet", "down_block_types"), (vae, "vae", "block_out_channels")):
        if key in config and not (isinstance(config[key], list) and config[key]):
            raise SourceError(f"{what} {folder}: {name}/config.json has {key} = {config[key]!r}; it must be a non-empty "
                              f"list. The config is damaged or of another kind of model.")
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise SourceError(
            f"{what} {folder}: its UNet takes extra conditioning (addition_embed_type="
            f"{unet.get('addition_embed_type')!r}, class_embed_type={unet.get('class_embed_type')!r}), as SDXL and "
            f"the SD upscalers do; svdedit does not support it. Supported families: {SUPPORTED}."
        )
    latent = vae.get("latent_channels", 4)
    if unet.get("in_channels") != latent or unet.get("out_channels", latent) != latent:
        raise SourceError(
            f"{what} {folder}: its UNet has {unet.get('in_channels')} input channels for {latent}-channel latents "
            f"(an inpainting or depth model); svdedit supports only text-to-image UNets. Supported families: {SUPPORTED}."
        )
    if text.get("model_type", "clip_text_model") != "clip_text_model":
        raise SourceError(
            f"{what} {folder}: its text encoder is {text.get('model_type')!r}, not CLIP; "
            f"supported families: {SUPPORTED}."
        )
    if unet.get("cross_attention_dim") != text.get("hidden_size"):
        raise SourceError(
            f"{what} {folder}: the UNet attends to {unet.get('cross_attention_dim')}-wide text embeddings but the "
            f"text encoder makes {text.get('hidden_size')}-wide ones; the folder mixes components of two models."
        )


def _component_weights(folder: Path, component: str) -> list[Path]:
    sub = folder / component
    files = sorted(p for p in sub.glob("*.safetensors") if ".fp16." not in p.name and ".non_ema." not in p.name)
    if not files:
        pickles = [p.name for p in sub.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise SourceError(
                f"{sub} holds its weights only as pickle ({', '.join(pickles)}), which svdedit never loads: "
                f"unpickling can run arbitrary code. Convert them once with "
                f"`DiffusionPipeline.from_pretrained(DIR).save_pretrained(DIR2, safe_serialization=True)`."
            )
        raise SourceError(f"{sub} has no .safetensors weights; the pipeline folder is incomplete.")
    for f in files:
        check_safetensors(f)
    return files


def inspect_source(source: str | Path, config: str | Path | None = None) -> Source:
    """Validate SOURCE (and --config) without torch; raise SourceError with a fix for any problem."""
    path = Path(source)
    if not path.exists():
        raise SourceError(
            f"SOURCE {path} does not exist. Pass a diffusers Stable Diffusion pipeline folder (with model_index.json), "
            f"or a single .safetensors checkpoint together with --config DIR."
        )
    if path.is_dir():
        if config is not None:
            raise SourceError(f"--config is only for a single-file checkpoint; {path} is a pipeline folder. Drop --config.")
        family, prediction, configs = _check_pipeline_configs(path, "SOURCE")
        weights = [w for c in WEIGHTED for w in _component_weights(path, c)]
        return Source("folder", path, path, family, prediction, tuple(configs + weights))

    if path.suffix in PICKLE_SUFFIXES:
        raise SourceError(
            f"SOURCE {path} is a pickle checkpoint, which svdedit never loads (unpickling can run arbitrary code). "
            f"Use the model's .safetensors release, or convert the file to safetensors first."
        )
    if path.suffix != ".safetensors":
        raise SourceError(f"SOURCE {path} is neither a pipeline folder nor a .safetensors checkpoint.")
    header = check_safetensors(path)
    if any(k.startswith("conditioner.embedders.") for k in header):
        raise SourceError(f"SOURCE {path} is an SDXL checkpoint, which svdedit does not support. Supported families: {SUPPORTED}.")
    if not any(k.startswith("model.diffusion_model.") for k in header):
        raise SourceError(
            f"SOURCE {path} is not an original-format Stable Diffusion checkpoint (no model.diffusion_model.* "
            f"tensors). For a diffusers-format model pass its pipeline folder instead."
        )
    if config is None:
        raise SourceError(
            f"SOURCE {path} is a single-file checkpoint, which carries no configs. Pass --config DIR: a local "
            f"diffusers pipeline folder of the same architecture (model_index.json, */config.json, tokenizer/; "
            f"its weights are not needed)."
        )
    config_dir = Path(config)
    if not config_dir.is_dir():
        raise SourceError(f"--config {config_dir} is not a folder. Pass a diffusers pipeline folder of the same architecture.")
    family, prediction, configs = _check_pipeline_configs(config_dir, "--config")
    return Source("single_file", path, config_dir, family, prediction, tuple(configs + [path]))


@dataclass
class Components:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict


def _require_complete(name: str, info: dict | None, where: Path) -> None:
    missing = (info or {}).get("missing_keys") or []
    if missing:
        raise SourceError(
            f"{where}: the {name} weights lack {len(missing)} tensors (e.g. {sorted(missing)[0]}); loading would "
            f"leave them random. The file belongs to another architecture or was saved by an incompatible version."
        )


def _quiet_libraries() -> None:
    """The libraries' own chatter (accelerate hints, loading bars, torchvision notices) is not for our users."""
    import logging

    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def load_components(src: Source) -> Components:
    """Load the four networks in fp32 (torch); refuse weights that would load incompletely."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    _quiet_libraries()

    scheduler_config = _read_json(src.config_dir / "scheduler" / "scheduler_config.json", "SOURCE")
    try:  # never the folder's own Python (auto_map): trust_remote_code=False
        tokenizer = AutoTokenizer.from_pretrained(src.config_dir / "tokenizer", local_files_only=True,
                                                  trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError, OSError, TypeError for broken tokenizer folders
        raise SourceError(f"{src.config_dir / 'tokenizer'} cannot be loaded as a tokenizer ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}).") from None
    if src.kind == "folder":
        kw = dict(use_safetensors=True, local_files_only=True, torch_dtype=torch.float32, output_loading_info=True)
        loaded = {}
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
            try:
                loaded[name], info = cls.from_pretrained(src.path, subfolder=name, **kw)
            except Exception as exc:  # diffusers/transformers: ValueError, RuntimeError (size mismatch), TypeError, ...
                raise SourceError(f"{src.path / name} cannot be loaded ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:300]}): its config and its weights do not agree, or the "
                                  f"config is not a {cls.__name__} config.") from None
            _require_complete(name, info, src.path / name)
        unet, vae, text_encoder = loaded["unet"], loaded["vae"], loaded["text_encoder"]
    else:
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(src.path), config=str(src.config_dir), local_files_only=True, torch_dtype=torch.float32,
                safety_checker=None, requires_safety_checker=False,
            )
        except Exception as exc:  # diffusers raises ValueError, KeyError, RuntimeError or SingleFileComponentError
            raise SourceError(
                f"SOURCE {src.path} could not be loaded with the configs of --config {src.config_dir} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Check that --config is a pipeline of "
                f"the same architecture as the checkpoint."
            ) from None
        unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    return Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler_config)
