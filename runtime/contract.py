"""The engine dir: the contract between the export stage and the runtime.

An engine dir is one folder per exported model::

    manifest.json     what is here, how it was made, and how well it matched the torch model
    schedule.json     everything DDIM needs: betas, alphas_cumprod, spacing, prediction type, VAE scale
    tokenizer.json    the CLIP BPE tokenizer, loadable by `tokenizers` alone
    text_encoder.onnx unet.onnx vae_encoder.onnx vae_decoder.onnx   (+ one .onnx.data each above 2 GB)

Each network's inputs and outputs are declared once, here, as data (``NETWORKS``). The exporter names
its ONNX inputs from it, the parity check builds its feeds from it, and the runtime validates every
call against it. Dimensions are either fixed model constants (``sequence_length``, ``hidden_size``,
``latent_channels``, resolved per model by ``ModelDims``) or dynamic axes (``batch``, ``height``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from svdedit.runtime.errors import EngineDirError
from svdedit.runtime.files import sha256_file, sha256_json

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCHEDULE_FILE = "schedule.json"
TOKENIZER_FILE = "tokenizer.json"

#: Axes that vary from call to call. Everything else is a constant of the model.
DYNAMIC_AXES = ("batch", "height", "width", "latent_height", "latent_width")

#: Model families the product supports, as recorded in the manifest.
FAMILIES = {
    "sd1": "Stable Diffusion 1.x (CLIP ViT-L text encoder, epsilon prediction)",
    "sd2": "Stable Diffusion 2.x base (OpenCLIP text encoder, epsilon prediction)",
    "sd2-v": "Stable Diffusion 2.x 768-v (OpenCLIP text encoder, v-prediction)",
}


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
    hidden_size: int  # text embedding width (768 SD1, 1024 SD2)
    latent_channels: int  # 4 for SD
    image_channels: int = 3

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


def network_io(spec: NetworkSpec, dims: ModelDims) -> dict:
    """The manifest's description of one network's inputs and outputs."""

    def describe(tensors):
        return [{"name": t.name, "dtype": t.dtype, "shape": dims.resolve(t.dims)} for t in tensors]

    return {
        "inputs": describe(spec.inputs),
        "outputs": describe(spec.outputs),
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in spec.dynamic_axes().items()},
    }


def engine_identity(manifest: dict) -> str:
    """sha256 of what the engine dir computes: the manifest without the TensorRT plans built from it, so that
    `svdedit build` on any GPU leaves the identity (and the attribute files learned on it) unchanged."""
    return sha256_json({k: v for k, v in manifest.items() if k != "tensorrt"})


def read_manifest(engine_dir: str | Path, verify_hashes: bool = True) -> dict:
    """Open an engine dir's manifest and check that the dir holds what the manifest says.

    Raises EngineDirError naming the missing or mismatching file and what to do about it.
    With ``verify_hashes`` every network file's sha256 is recomputed (seconds for SD-size models).
    """
    engine_dir = Path(engine_dir)
    redo = f"Re-create it with `svdedit export MODEL -o {engine_dir} --force`."
    if not engine_dir.exists():
        raise EngineDirError(f"Engine dir {engine_dir} does not exist. Create one with `svdedit export MODEL -o {engine_dir}`.")
    if not engine_dir.is_dir():
        raise EngineDirError(f"Engine dir {engine_dir} is a file, not a folder. Pass the folder `svdedit export` wrote.")
    path = engine_dir / MANIFEST_FILE
    if not path.is_file():
        raise EngineDirError(f"{engine_dir} is not an engine dir: it has no {MANIFEST_FILE}. {redo}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest["format_version"]
        networks = manifest["networks"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineDirError(f"{path} is corrupt ({type(exc).__name__}: {exc}). {redo}") from None
    if not all(isinstance(manifest.get(k), dict) and "file" in manifest[k] for k in ("text", "schedule")):
        raise EngineDirError(f"{path} is corrupt (no text/schedule entries). {redo}")
    if version != FORMAT_VERSION:
        raise EngineDirError(
            f"{path} has format version {version!r}; this svdedit reads version {FORMAT_VERSION}. "
            f"Re-export the model with this svdedit, or use the svdedit version that wrote it."
        )
    required = [manifest["schedule"]["file"], manifest["text"]["file"]]
    for name in NETWORKS:
        if name not in networks:
            raise EngineDirError(f"{path} lists no {name!r} network; the engine dir is incomplete. {redo}")
        required.append(networks[name]["file"])
        if networks[name].get("external_data"):
            required.append(networks[name]["external_data"])
    for rel in required:
        if not (engine_dir / rel).is_file():
            raise EngineDirError(f"Engine dir {engine_dir} is incomplete: {rel} is missing. {redo}")
    if verify_hashes:
        recorded = [(manifest["text"]["file"], manifest["text"]["sha256"]),
                    (manifest["schedule"]["file"], manifest["schedule"]["sha256"])]
        for net in networks.values():
            recorded.append((net["file"], net["sha256"]))
            if net.get("external_data"):
                recorded.append((net["external_data"], net["external_data_sha256"]))
        for rel, expected in recorded:
            actual = sha256_file(engine_dir / rel)
            if actual != expected:
                raise EngineDirError(
                    f"{engine_dir / rel} does not match the manifest (sha256 {actual[:12]}..., manifest says "
                    f"{expected[:12]}...): the file was changed or damaged after export. {redo}"
                )
    return manifest
