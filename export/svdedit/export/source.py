"""What ``svdedit export`` is given: find, validate and load a Stable Diffusion model.

``inspect_source`` reads only JSON configs and safetensors headers (no torch), so every user mistake
is reported in a second or two, before the slow part starts. ``load_components`` then loads the four
networks with diffusers/transformers in fp32.

Supported: SD 1.x and SD 2.x (epsilon or v-prediction) and SDXL base text-to-image pipelines, given either as a
diffusers pipeline folder or as one original-format ``.safetensors`` checkpoint plus ``--config DIR``
(a local diffusers pipeline folder of the same architecture, whose configs and tokenizer are used).
An SDXL pipeline adds text_encoder_2 and tokenizer_2 and a UNet with "text_time" added conditioning; its refiner
(image-to-image, aesthetic-score conditioning) and inpainting pipelines are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from svdedit.runtime.engines.contract import FAMILIES, TIME_IDS, XL_FAMILIES
from svdedit.runtime.errors import SourceError
from svdedit.runtime.files import check_safetensors, sha256_file, sha256_json

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")
XL_COMPONENTS = COMPONENTS + ("text_encoder_2", "tokenizer_2")
XL_WEIGHTED = WEIGHTED + ("text_encoder_2",)
XL_PIPELINE = "StableDiffusionXLPipeline"
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

    @property
    def is_xl(self) -> bool:
        return self.family in XL_FAMILIES

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
            f"Pass the folder that `StableDiffusionPipeline.save_pretrained` (or StableDiffusionXLPipeline's) wrote "
            f"(it holds model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
        )
    index = _read_json(index_path, what)
    xl = _check_index(folder, index, what)
    texts = ("text_encoder", "text_encoder_2") if xl else ("text_encoder",)
    configs = [index_path] + [folder / c / "config.json" for c in ("unet", "vae") + texts]
    unet, vae, *text = (_read_json(path, what) for path in configs[1:])
    if xl:
        _check_xl_architecture(folder, unet, vae, text[0], text[1], what)
    else:
        _check_architecture(folder, unet, vae, text[0], what)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    prediction = _read_json(sched_path, what).get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise SourceError(
            f"{what} {folder}: scheduler prediction_type {prediction!r} is not supported; svdedit's DDIM handles "
            f"'epsilon' and 'v_prediction'. Fix {sched_path} if it is wrong."
        )
    if xl:
        family = "sdxl"
    else:  # CLIP ViT-L (SD 1.x) uses quick_gelu; OpenCLIP ViT-H (SD 2.x) uses gelu.
        family = "sd1" if text[0].get("hidden_act", "quick_gelu") == "quick_gelu" else "sd2"
        if family == "sd2" and prediction == "v_prediction":
            family = "sd2-v"
    tokenizers = []
    for sub in ("tokenizer", "tokenizer_2") if xl else ("tokenizer",):
        tok = sorted(p for p in (folder / sub).glob("*") if p.is_file())
        if not tok:
            raise SourceError(f"{what} {folder}: {sub}/ is empty or missing; the pipeline folder is incomplete.")
        tokenizers += tok
    return family, prediction, configs + [sched_path] + tokenizers


def _check_index(folder: Path, index: dict, what: str) -> bool:
    """model_index.json: a Stable Diffusion (SD 1/2, or SDXL base) text-to-image pipeline with every component.
    Returns True for SDXL."""
    class_name = str(index.get("_class_name", ""))
    xl = "text_encoder_2" in index or "XL" in class_name
    if xl and class_name != XL_PIPELINE:
        kind = ("a refiner or image-to-image" if "Img2Img" in class_name or index.get("requires_aesthetics_score")
                else "an inpainting" if "Inpaint" in class_name else "another kind of")
        raise SourceError(
            f"{what} {folder} is {kind} SDXL pipeline ({class_name or 'no _class_name'}); svdedit exports the SDXL "
            f"base text-to-image pipeline ({XL_PIPELINE}). Supported families: {SUPPORTED}."
        )
    if xl and index.get("requires_aesthetics_score"):
        raise SourceError(f"{what} {folder}: requires_aesthetics_score is true, as in the SDXL refiner; svdedit exports "
                          f"the SDXL base pipeline. Supported families: {SUPPORTED}.")
    missing = [c for c in (XL_COMPONENTS if xl else COMPONENTS) if not (isinstance(index.get(c), list) and index[c][0])]
    if missing:
        raise SourceError(
            f"{what} {folder} is a {class_name or 'diffusers'} pipeline without {', '.join(missing)}, so it is not "
            f"a Stable Diffusion text-to-image pipeline. Supported families: {SUPPORTED}."
        )
    absent = [c for c in (XL_COMPONENTS if xl else COMPONENTS) if not (folder / c).is_dir()]
    if absent:
        raise SourceError(f"{what} {folder}: model_index.json names {', '.join(absent)} but the folder has no "
                          f"{absent[0]}/; the pipeline folder is incomplete.")
    return xl


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


def _check_xl_architecture(folder: Path, unet: dict, vae: dict, text: dict, text_2: dict, what: str) -> None:
    """SDXL base: a "text_time" UNet attending to both encoders' widths, a projecting second encoder, and added
    conditioning sized for TIME_IDS time ids and the second encoder's projection."""
    if unet.get("addition_embed_type") != "text_time":
        raise SourceError(f"{what} {folder}: an SDXL pipeline whose UNet has addition_embed_type "
                          f"{unet.get('addition_embed_type')!r}, not 'text_time'; the folder mixes components of two "
                          f"models. Supported families: {SUPPORTED}.")
    if unet.get("class_embed_type"):
        raise SourceError(f"{what} {folder}: its UNet takes class conditioning ({unet.get('class_embed_type')!r}), which "
                          f"SDXL base does not; svdedit does not support it.")
    _check_architecture(folder, {k: v for k, v in unet.items() if k != "addition_embed_type"} |
                        {"cross_attention_dim": text.get("hidden_size")}, vae, text, what)
    if text_2.get("model_type", "clip_text_model") != "clip_text_model" or \
            "CLIPTextModelWithProjection" not in (text_2.get("architectures") or ["CLIPTextModelWithProjection"]):
        raise SourceError(f"{what} {folder}: text_encoder_2 is not a CLIP text model with a projection "
                          f"({text_2.get('architectures')}); supported families: {SUPPORTED}.")
    widths = (text.get("hidden_size"), text_2.get("hidden_size"))
    if not all(isinstance(w, int) and w > 0 for w in widths) or unet.get("cross_attention_dim") != sum(widths):
        raise SourceError(f"{what} {folder}: the UNet attends to {unet.get('cross_attention_dim')}-wide text embeddings "
                          f"but its text encoders make {widths[0]} + {widths[1]}; the folder mixes components of two "
                          f"models.")
    pooled, time_dim = text_2.get("projection_dim"), unet.get("addition_time_embed_dim")
    added = unet.get("projection_class_embeddings_input_dim")
    if not all(isinstance(v, int) and v > 0 for v in (pooled, time_dim, added)) or added != TIME_IDS * time_dim + pooled:
        raise SourceError(
            f"{what} {folder}: the UNet's added conditioning takes {added} numbers, not {TIME_IDS} time ids of "
            f"{time_dim} plus text_encoder_2's {pooled}-wide projection; an SDXL refiner (aesthetic score) or mixed "
            f"components. svdedit exports the SDXL base pipeline.")
    if pooled + TIME_IDS > sum(widths):
        raise SourceError(f"{what} {folder}: the pooled embedding ({pooled}) and the time ids do not fit one "
                          f"{sum(widths)}-wide row of svdedit's conditioning array; this is not an SDXL shape.")


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
        weights = [w for c in (XL_WEIGHTED if family in XL_FAMILIES else WEIGHTED) for w in _component_weights(path, c)]
        return Source("folder", path, path, family, prediction, tuple(configs + weights))

    if path.suffix in PICKLE_SUFFIXES:
        raise SourceError(
            f"SOURCE {path} is a pickle checkpoint, which svdedit never loads (unpickling can run arbitrary code). "
            f"Use the model's .safetensors release, or convert the file to safetensors first."
        )
    if path.suffix != ".safetensors":
        raise SourceError(f"SOURCE {path} is neither a pipeline folder nor a .safetensors checkpoint.")
    header = check_safetensors(path)
    xl_checkpoint = any(k.startswith("conditioner.embedders.") for k in header)
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
    if xl_checkpoint != (family in XL_FAMILIES):
        raise SourceError(
            f"SOURCE {path} is {'an SDXL' if xl_checkpoint else 'an SD 1.x/2.x'} checkpoint but --config {config_dir} "
            f"is {FAMILIES[family]}: pass a --config folder of the checkpoint's own architecture.")
    _check_checkpoint_shapes(path, header, config_dir)
    return Source("single_file", path, config_dir, family, prediction, tuple(configs + [path]))


def _check_checkpoint_shapes(path: Path, header: dict, config_dir: Path) -> None:
    """The checkpoint's UNet agrees with --config's: conv_in's channels and the cross-attention's text width (read
    from the safetensors header, before torch)."""
    unet = _read_json(config_dir / "unet" / "config.json", "--config")
    conv_in = (header.get("model.diffusion_model.input_blocks.0.0.weight") or {}).get("shape")
    channels = (unet.get("block_out_channels") or [None])[0]
    if conv_in and channels is not None and conv_in[0] != channels:
        raise SourceError(f"SOURCE {path} does not match --config {config_dir}: its UNet's first block has {conv_in[0]} "
                          f"channels, the config's {channels}. Pass the --config of the checkpoint's architecture.")
    context = next(((k, v.get("shape")) for k, v in header.items() if k.endswith("attn2.to_k.weight")), None)
    if context and context[1] and len(context[1]) == 2 and context[1][1] != unet.get("cross_attention_dim"):
        raise SourceError(f"SOURCE {path} does not match --config {config_dir}: its UNet attends to "
                          f"{context[1][1]}-wide text embeddings, the config's to {unet.get('cross_attention_dim')}. "
                          f"Pass the --config of the checkpoint's architecture.")


@dataclass
class Components:
    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    family: str = "sd1"
    text_encoder_2: object = None  # SDXL
    tokenizer_2: object = None  # SDXL
    force_zeros_for_empty_prompt: bool = False  # SDXL: the pipeline's config (model_index.json)

    @property
    def is_xl(self) -> bool:
        return self.family in XL_FAMILIES


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


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:  # never the folder's own Python (auto_map): trust_remote_code=False
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError, OSError, TypeError for broken tokenizer folders
        raise SourceError(f"{folder} cannot be loaded as a tokenizer ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}).") from None


def load_components(src: Source) -> Components:
    """Load the networks in fp32 (torch); refuse weights that would load incompletely."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _quiet_libraries()

    scheduler_config = _read_json(src.config_dir / "scheduler" / "scheduler_config.json", "SOURCE")
    tokenizers = [_load_tokenizer(src.config_dir / sub) for sub in (("tokenizer", "tokenizer_2") if src.is_xl
                                                                     else ("tokenizer",))]
    if src.kind == "folder":
        kw = dict(use_safetensors=True, local_files_only=True, torch_dtype=torch.float32, output_loading_info=True)
        classes = [("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)]
        if src.is_xl:
            classes.append(("text_encoder_2", CLIPTextModelWithProjection))
        loaded = {}
        for name, cls in classes:
            try:
                loaded[name], info = cls.from_pretrained(src.path, subfolder=name, **kw)
            except Exception as exc:  # diffusers/transformers: ValueError, RuntimeError (size mismatch), TypeError, ...
                raise SourceError(f"{src.path / name} cannot be loaded ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:300]}): its config and its weights do not agree, or the "
                                  f"config is not a {cls.__name__} config.") from None
            _require_complete(name, info, src.path / name)
    else:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        extra = {} if src.is_xl else dict(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = (StableDiffusionXLPipeline if src.is_xl else StableDiffusionPipeline).from_single_file(
                str(src.path), config=str(src.config_dir), local_files_only=True, torch_dtype=torch.float32, **extra)
        except Exception as exc:  # diffusers raises ValueError, KeyError, RuntimeError or SingleFileComponentError
            raise SourceError(
                f"SOURCE {src.path} could not be loaded with the configs of --config {src.config_dir} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Check that --config is a pipeline of "
                f"the same architecture as the checkpoint."
            ) from None
        loaded = {name: getattr(pipe, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                  if getattr(pipe, name, None) is not None}
    index = _read_json(src.config_dir / "model_index.json", "SOURCE")
    text_2 = loaded.get("text_encoder_2")
    return Components(loaded["unet"].eval(), loaded["vae"].eval(), loaded["text_encoder"].eval(), tokenizers[0],
                      scheduler_config, family=src.family, text_encoder_2=None if text_2 is None else text_2.eval(),
                      tokenizer_2=tokenizers[1] if src.is_xl else None,
                      force_zeros_for_empty_prompt=bool(src.is_xl and index.get("force_zeros_for_empty_prompt", True)))
