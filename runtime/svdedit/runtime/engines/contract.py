"""The engine dir: the contract between the export stage and the runtime.

An engine dir is one folder per exported model::

    manifest.json     what is here, how it was made, and how well it matched the torch model
    schedule.json     everything DDIM needs: betas, alphas_cumprod, spacing, prediction type, VAE scale
    tokenizer.json    the CLIP BPE tokenizer, loadable by `tokenizers` alone
    text_encoder.onnx unet.onnx vae_encoder.onnx vae_decoder.onnx   (+ one .onnx.data each above 2 GB)
    (SDXL: also tokenizer_2.json and text_encoder_2.onnx; format version 2, see FORMAT_VERSIONS)
    (exported with --step-cache: unet_in.onnx unet_deep.onnx unet_out.onnx in place of unet.onnx)
    (quantized by NNCF, `svdedit quantize --mode nncf`: unet.xml + unet.bin, an OpenVINO model, in place of unet.onnx)
    tensorrt/         TensorRT plans of svdedit 0.1's `svdedit build` (now in the user cache: plans.py)

This module holds, once each:

1. each network's inputs and outputs, as data (``NETWORKS``): the exporter names its ONNX inputs from
   it, the parity check builds its feeds from it, and every runner checks every call against it.
   Dimensions are fixed model constants (``sequence_length``, ``hidden_size``, ``latent_channels``,
   resolved per model by ``ModelDims``) or dynamic axes (``batch``, ``height``, ...), whose sizes for
   one call come from ``axis_sizes``;
2. the precision policy (``network_precision``), read by the export and the TensorRT build alike.

What one engine dir holds is its manifest, typed and read in manifest.py.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The engine-dir format of SD 1.x/2.x engine dirs (unchanged since svdedit 0.1, so that an older runtime still opens
#: them), and of SDXL ones: version 2 adds the second tokenizer and text encoder and the UNet's added conditioning.
#: An older runtime meets a version-2 dir with "format version 2; this svdedit reads version 1" (manifest.py).
FORMAT_VERSION = 1
FORMAT_VERSION_XL = 2
FORMAT_VERSIONS = (FORMAT_VERSION, FORMAT_VERSION_XL)
MANIFEST_FILE = "manifest.json"
SCHEDULE_FILE = "schedule.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_2_FILE = "tokenizer_2.json"
#: how an OpenVINO model's graph file ends (its weights are the .bin of the same name beside it): NNCF's int8 UNet,
#: which only OpenVINO runs (onnxruntime and TensorRT read ONNX)
OPENVINO_MODEL_SUFFIX = ".xml"
#: TensorRT's folder in an engine dir: plans of `svdedit build` under <device key>/, their timing caches, ORT-TRT's caches
TENSORRT_DIR = "tensorrt"

#: Axes that vary from call to call. Everything else is a constant of the model.
DYNAMIC_AXES = ("batch", "height", "width", "latent_height", "latent_width")

#: Model families the product supports, as recorded in the manifest.
FAMILIES = {
    "sd1": "Stable Diffusion 1.x (CLIP ViT-L text encoder, epsilon prediction)",
    "sd2": "Stable Diffusion 2.x base (OpenCLIP text encoder, epsilon prediction)",
    "sd2-v": "Stable Diffusion 2.x 768-v (OpenCLIP text encoder, v-prediction)",
    "sdxl": "Stable Diffusion XL base (CLIP ViT-L and OpenCLIP ViT-bigG text encoders, pooled and size conditioning)",
}
#: the families whose UNet takes SDXL's added conditioning (text_embeds, time_ids) and that have two text encoders
XL_FAMILIES = ("sdxl",)
#: SDXL's size conditioning: original height and width, crop top and left, target height and width
TIME_IDS = 6


def format_version(family: str) -> int:
    """The format version an engine dir of `family` is written in."""
    return FORMAT_VERSION_XL if family in XL_FAMILIES else FORMAT_VERSION


# --------------------------------------------------------------------------------------------------
# 1. Each network's inputs and outputs, declared once
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    dims: tuple[str | int, ...]  # dimension names (see module docstring) or literal sizes


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: parity tolerance against torch, relative to max(1, max|reference|), by precision
    rtol: dict

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis index: axis name}} for every dynamic axis, as ONNX export wants it."""
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if d in DYNAMIC_AXES}
            for t in self.inputs + self.outputs
        }

    def tolerance(self, reference_max_abs: float, precision: str) -> float:
        return self.rtol[precision] * max(1.0, float(reference_max_abs))


@dataclass(frozen=True)
class ModelDims:
    """The fixed sizes of one model, which turn dimension names into numbers."""

    sequence_length: int  # tokens per prompt (77 for SD)
    hidden_size: int  # the text embedding width the UNet attends to (768 SD1, 1024 SD2, 2048 SDXL)
    latent_channels: int  # 4 for SD
    image_channels: int = 3
    # SDXL (0 for the other families): each text encoder's width (768 + 1280 = hidden_size) and the pooled width
    hidden_size_1: int = 0
    hidden_size_2: int = 0
    pooled_size: int = 0   # text_encoder_2's projection (1280)
    time_ids_size: int = TIME_IDS
    # the UNet split for step caching (--step-cache; 0 when the engine has no split UNet)
    time_embed_dim: int = 0   # the timestep embedding's width (1280 for SD 1.5)
    block_channels: int = 0   # channels of the full-resolution blocks (320)
    skip_channels: int = 0    # the full-resolution skip connections, concatenated (conv_in + each layer: 3 x 320)
    deep_channels: int = 0    # channels of the deep branch's output, upsampled to full resolution (640)

    def resolve(self, dims: tuple[str | int, ...]) -> list[str | int]:
        """Replace model-constant names by their sizes; dynamic axes stay names."""
        return [d if (isinstance(d, int) or d in DYNAMIC_AXES) else getattr(self, d) for d in dims]


_LATENT = ("batch", "latent_channels", "latent_height", "latent_width")
_IMAGE = ("batch", "image_channels", "height", "width")
_TEXT = ("batch", "sequence_length", "hidden_size")

NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            "text_encoder",
            inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence_length")),),
            outputs=(TensorSpec("last_hidden_state", "float32", _TEXT),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        NetworkSpec(
            "unet",
            inputs=(
                TensorSpec("sample", "float32", _LATENT),
                TensorSpec("timestep", "float32", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", _TEXT),
            ),
            # epsilon or v, as the manifest's prediction_type says
            outputs=(TensorSpec("model_output", "float32", _LATENT),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        # ---- the UNet split for step caching (DeepCache, Ma et al. 2024; export/svdedit/export/step_cache.py) ----
        # a full step: unet_in -> unet_deep -> unet_out; a cached step: unet_in -> unet_out with the last `deep`
        NetworkSpec(
            "unet_in",  # timestep embedding, conv_in and the first down block (without its downsampler)
            inputs=(
                TensorSpec("sample", "float32", _LATENT),
                TensorSpec("timestep", "float32", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", _TEXT),
            ),
            outputs=(
                TensorSpec("hidden", "float32", ("batch", "block_channels", "latent_height", "latent_width")),
                TensorSpec("skips", "float32", ("batch", "skip_channels", "latent_height", "latent_width")),
                TensorSpec("emb", "float32", ("batch", "time_embed_dim")),
            ),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        NetworkSpec(
            "unet_deep",  # the first block's downsampler, the other down blocks, the mid block, all but the last up block
            inputs=(
                TensorSpec("hidden", "float32", ("batch", "block_channels", "latent_height", "latent_width")),
                TensorSpec("emb", "float32", ("batch", "time_embed_dim")),
                TensorSpec("encoder_hidden_states", "float32", _TEXT),
            ),
            outputs=(TensorSpec("deep", "float32", ("batch", "deep_channels", "latent_height", "latent_width")),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        NetworkSpec(
            "unet_out",  # the last up block (fed the skips) and the output convolution
            inputs=(
                TensorSpec("deep", "float32", ("batch", "deep_channels", "latent_height", "latent_width")),
                TensorSpec("skips", "float32", ("batch", "skip_channels", "latent_height", "latent_width")),
                TensorSpec("emb", "float32", ("batch", "time_embed_dim")),
                TensorSpec("encoder_hidden_states", "float32", _TEXT),
            ),
            outputs=(TensorSpec("model_output", "float32", _LATENT),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        NetworkSpec(
            "vae_encoder",
            # image in [-1, 1]; output is the posterior *mean* (never a random sample), unscaled
            inputs=(TensorSpec("image", "float32", _IMAGE),),
            outputs=(TensorSpec("latent_mean", "float32", _LATENT),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
        NetworkSpec(
            "vae_decoder",
            # latent already divided by the VAE scaling factor; image out in about [-1, 1]
            inputs=(TensorSpec("latent", "float32", _LATENT),),
            outputs=(TensorSpec("image", "float32", _IMAGE),),
            rtol={"fp32": 1e-3, "fp16": 2e-2},
        ),
    )
}


#: the UNet of an engine dir is one of these: the whole (the default) or split for step caching (--step-cache)
UNET_WHOLE = ("unet",)
UNET_SPLIT = ("unet_in", "unet_deep", "unet_out")
#: every engine dir has these besides its UNet
OTHER_NETWORKS = ("text_encoder", "vae_encoder", "vae_decoder")

_XL_CONDITIONING = (TensorSpec("text_embeds", "float32", ("batch", "pooled_size")),
                    TensorSpec("time_ids", "float32", ("batch", "time_ids_size")))

#: SDXL's networks (format version 2): two text encoders whose penultimate hidden states are concatenated into the
#: UNet's text embedding (hidden_size_1 + hidden_size_2 = hidden_size), the second one's projection the pooled
#: embedding; the UNet (and the step cache's first part, which computes the time embedding) takes both as
#: `added_cond_kwargs` text_embeds and time_ids. The VAE and the rest of the split UNet are SD's.
XL_NETWORKS: dict[str, NetworkSpec] = {
    "text_encoder": NetworkSpec(
        "text_encoder",  # CLIP ViT-L: hidden_states[-2]
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence_length")),),
        outputs=(TensorSpec("hidden_states", "float32", ("batch", "sequence_length", "hidden_size_1")),),
        rtol={"fp32": 1e-3, "fp16": 2e-2},
    ),
    "text_encoder_2": NetworkSpec(
        "text_encoder_2",  # OpenCLIP ViT-bigG with projection: hidden_states[-2] and text_embeds (pooled)
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence_length")),),
        outputs=(TensorSpec("hidden_states", "float32", ("batch", "sequence_length", "hidden_size_2")),
                 TensorSpec("text_embeds", "float32", ("batch", "pooled_size"))),
        rtol={"fp32": 1e-3, "fp16": 2e-2},
    ),
    "unet": NetworkSpec(
        "unet",
        inputs=NETWORKS["unet"].inputs + _XL_CONDITIONING,
        outputs=NETWORKS["unet"].outputs,
        rtol={"fp32": 1e-3, "fp16": 2e-2},
    ),
    "unet_in": NetworkSpec(
        "unet_in",
        inputs=NETWORKS["unet_in"].inputs + _XL_CONDITIONING,
        outputs=NETWORKS["unet_in"].outputs,
        rtol={"fp32": 1e-3, "fp16": 2e-2},
    ),
    **{name: NETWORKS[name] for name in ("unet_deep", "unet_out", "vae_encoder", "vae_decoder")},
}
#: every network name any family has
NETWORK_NAMES = tuple(dict.fromkeys([*NETWORKS, *XL_NETWORKS]))


def networks_for(family: str) -> dict[str, NetworkSpec]:
    """The contract of the networks of a `family` engine dir."""
    return XL_NETWORKS if family in XL_FAMILIES else NETWORKS


def other_networks(family: str) -> tuple[str, ...]:
    """The networks an engine dir of `family` has besides its UNet."""
    return OTHER_NETWORKS + (("text_encoder_2",) if family in XL_FAMILIES else ())


def unet_layout(names) -> tuple[str, ...] | None:
    """Which UNet the networks `names` hold (UNET_WHOLE or UNET_SPLIT), or None if neither exactly."""
    names = set(names)
    has_whole, has_split = set(UNET_WHOLE) <= names, bool(set(UNET_SPLIT) & names)
    if has_whole and not has_split:
        return UNET_WHOLE
    if has_split and not has_whole and set(UNET_SPLIT) <= names:
        return UNET_SPLIT
    return None


def axis_sizes(batch: int, image_side: int, vae_scale_factor: int) -> dict[str, int]:
    """The size of every dynamic axis for one call: `batch` images (or latents) of image_side pixels."""
    latent_side = image_side // vae_scale_factor
    return {"batch": batch, "height": image_side, "width": image_side,
            "latent_height": latent_side, "latent_width": latent_side}


def resolve_shape(shape, sizes: dict[str, int]) -> tuple[int, ...]:
    """A declared shape (sizes and axis names) with every axis name replaced by its size in `sizes`."""
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


def network_io(spec: NetworkSpec, dims: ModelDims) -> dict:
    """The manifest's description of one network's inputs and outputs."""

    def describe(tensors):
        return [{"name": t.name, "dtype": t.dtype, "shape": dims.resolve(t.dims)} for t in tensors]

    return {
        "inputs": describe(spec.inputs),
        "outputs": describe(spec.outputs),
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in spec.dynamic_axes().items()},
    }


# --------------------------------------------------------------------------------------------------
# 2. The precision policy
# --------------------------------------------------------------------------------------------------
#: what `svdedit export --precision` writes, and what `svdedit build --precision` builds
EXPORT_PRECISIONS = ("fp32", "fp16")
BUILD_PRECISIONS = ("fp16", "bf16", "fp32")
#: ops kept in fp32 inside fp16 graphs: attention softmax and normalisation statistics overflow in SD
FP16_KEEP_FP32_OPS = ["Softmax", "GroupNormalization", "InstanceNormalization", "LayerNormalization", "ReduceMean", "Pow"]


def network_precision(network: str, precision: str) -> str:
    """The precision one network gets when the model is asked for `precision`.

    The VAE stays fp32 under fp16 (SD's VAE overflows fp16) and follows bf16 (whose range is fp32's);
    the text encoder and the UNet take the precision asked for."""
    return "fp32" if precision == "fp16" and network.startswith("vae") else precision
