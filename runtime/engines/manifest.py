"""The manifest of an engine dir, typed: what it holds, how it was made, what TensorRT plans exist for it.

    manifest = read_manifest(engine_dir)         # checked: every field's type, every file there, every sha256
    manifest.networks["unet"].inputs             # (Tensor(name="sample", dtype="float32", shape=("batch", 4, ...)), ...)
    manifest.axis_sizes(batch=2)                 # {"batch": 2, "height": 512, ..., "latent_width": 64}
    manifest.identity()                          # the hash attribute files are keyed on

``read_manifest`` parses manifest.json into frozen dataclasses, naming any field that is missing or of
the wrong type (a corrupt manifest is an EngineDirError with the fix, never a KeyError); the exporter
checks the manifest it makes the same way before writing it. ``write_manifest`` writes one atomically.
The JSON as read stays in ``Manifest.raw``: it is what is written back, and what the engine's identity
hashes, so that the identity is that of the file whatever this version of the dataclasses reads.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from svdedit.runtime.engines.contract import FORMAT_VERSION, MANIFEST_FILE, NETWORKS, axis_sizes
from svdedit.runtime.errors import EngineDirError, ManifestFieldError
from svdedit.runtime.files import sha256_file, sha256_json, write_json


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[str | int, ...]  # sizes, and the names of dynamic axes


@dataclass(frozen=True)
class Network:
    file: str
    sha256: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    precision: str
    parity: dict  # as the export measured it (max_abs, tolerance, passed, ...)
    parity_fp16: dict | None = None
    dynamic_axes: dict | None = None
    external_data: str | None = None
    external_data_sha256: str | None = None
    fused: dict | None = None
    opset: int | None = None
    export_seconds: float | None = None

    def files(self) -> list[tuple[str, str]]:
        """(relative file name, sha256) of every file this network is made of."""
        out = [(self.file, self.sha256)]
        if self.external_data:
            out.append((self.external_data, self.external_data_sha256 or ""))
        return out


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str


@dataclass(frozen=True)
class TextInfo:
    file: str
    sha256: str
    sequence_length: int
    hidden_size: int
    pad_id: int
    bos_id: int
    eos_id: int


@dataclass(frozen=True)
class Latent:
    channels: int
    vae_scale_factor: int  # image pixels per latent pixel (8 for SD)
    vae_scaling_factor: float  # latents are the VAE's mean times this


@dataclass(frozen=True)
class ImageSize:
    default: int
    multiple_of: int
    min: int
    max: int


@dataclass(frozen=True)
class Plan:
    file: str
    sha256: str
    precision: str
    profiles: list  # [{input name: [min shape, opt shape, max shape]}] per optimisation profile
    build_seconds: float | None = None


@dataclass(frozen=True)
class TensorrtBuild:
    """The plans `svdedit build` made on one kind of GPU with one TensorRT version."""

    gpu: str
    compute_capability: str
    tensorrt: str                   # the version
    directory: str                  # tensorrt/<device key>
    shapes: tuple[int, ...]         # image sides the plans accept, the optimised one first
    precision: str
    max_batch: int
    static: bool                    # one image size, CUDA graphs in the runner
    networks: dict[str, Plan]
    built: str | None = None        # UTC time of the build


@dataclass(frozen=True)
class Manifest:
    format_version: int
    family: str
    prediction_type: str
    precision: str
    latent: Latent
    text: TextInfo
    image_size: ImageSize
    schedule: FileRef
    networks: dict[str, Network]
    tensorrt: dict[str, TensorrtBuild] | None = None
    cache_key: str | None = None
    source: dict | None = None
    options: dict | None = None
    versions: dict | None = None
    #: the JSON as read (or as the exporter made it): what is written back, and what the identity hashes
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Check `data` (parsed manifest.json) field by field; ManifestFieldError names the first bad one."""
        return _typed(cls, data, "manifest", raw=data)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.raw))

    def identity(self) -> str:
        """sha256 of what the engine dir computes: the manifest without the TensorRT plans built from it, so that
        `svdedit build` on any GPU leaves the identity (and the attribute files learned on it) unchanged."""
        return sha256_json({k: v for k, v in self.raw.items() if k != "tensorrt"})

    def with_tensorrt_build(self, key: str, build: dict) -> "Manifest":
        """This manifest with one more TensorRT build recorded under `key` (checked like the rest)."""
        raw = self.to_dict()
        raw.setdefault("tensorrt", {})[key] = build
        return Manifest.from_dict(raw)

    @property
    def builds(self) -> dict[str, TensorrtBuild]:
        return self.tensorrt or {}

    def axis_sizes(self, batch: int, size: int | None = None) -> dict[str, int]:
        """The dynamic axes of a call on `batch` images of `size` pixels (default: the model's own size)."""
        return axis_sizes(batch, size or self.image_size.default, self.latent.vae_scale_factor)

    def files(self) -> list[tuple[str, str]]:
        """(relative file name, sha256) of every file the engine dir must hold."""
        out = [(self.schedule.file, self.schedule.sha256), (self.text.file, self.text.sha256)]
        for net in self.networks.values():
            out += net.files()
        return out


def _typed(cls, value, where: str, raw: dict | None = None):
    """`value` (parsed JSON) as an instance of the dataclass `cls`, every field's type checked."""
    if not isinstance(value, dict):
        raise ManifestFieldError(f"{where} should be an object, not {_shown(value)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name == "raw":
            kwargs["raw"] = raw
            continue
        if f.name not in value:
            if _optional(hints[f.name]):
                continue  # the dataclass's default (None)
            raise ManifestFieldError(f"{where}.{f.name} is missing")
        kwargs[f.name] = _as(hints[f.name], value[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _optional(hint) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _as(hint, value, where: str):
    """`value` checked against the type `hint` (str, int, float, bool, dict, list, X | None, tuple[X, ...],
    dict[str, X], or a dataclass)."""
    if isinstance(hint, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        kinds = [o for o in options if o is not type(None)]
        if len(kinds) == 1:  # X | None, and not None: an X, checked as such (its own message names the field)
            return _as(kinds[0], value, where)
        for option in kinds:
            try:
                return _as(option, value, where)
            except ManifestFieldError:
                continue
        names = " or ".join("null" if o is type(None) else _KIND_NAMES.get(o, getattr(o, "__name__", str(o)))
                            for o in options)
        raise ManifestFieldError(f"{where} should be {names}, not {_shown(value)}")
    if is_dataclass(hint):
        return _typed(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise ManifestFieldError(f"{where} should be a list, not {_shown(value)}")
        return tuple(_as(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestFieldError(f"{where} should be an object, not {_shown(value)}")
        return {k: _as(args[1], v, f"{where}.{k}") for k, v in value.items()}
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {str: isinstance(value, str), bool: isinstance(value, bool), dict: isinstance(value, dict),
          list: isinstance(value, list), int: is_number and isinstance(value, int), float: is_number}[hint]
    if not ok:
        raise ManifestFieldError(f"{where} should be {_KIND_NAMES[hint]}, not {_shown(value)}")
    return float(value) if hint is float else value


_KIND_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "a list", int: "a whole number",
               float: "a number"}


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_manifest(engine_dir: str | Path, verify_hashes: bool = True) -> Manifest:
    """Open an engine dir's manifest and check that the dir holds what the manifest says.

    Raises EngineDirError naming the missing, mistyped or mismatching field or file, and what to do
    about it. With ``verify_hashes`` every file's sha256 is recomputed (seconds for SD-size models).
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
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineDirError(f"{path} is corrupt ({type(exc).__name__}: {exc}). {redo}") from None
    if version != FORMAT_VERSION:
        raise EngineDirError(
            f"{path} has format version {version!r}; this svdedit reads version {FORMAT_VERSION}. "
            f"Re-export the model with this svdedit, or use the svdedit version that wrote it."
        )
    try:
        manifest = Manifest.from_dict(data)
    except ManifestFieldError as exc:
        raise EngineDirError(f"{path} is corrupt: {exc}. {redo}") from None
    for name in NETWORKS:
        if name not in manifest.networks:
            raise EngineDirError(f"{path} lists no {name!r} network; the engine dir is incomplete. {redo}")
    for rel, _ in manifest.files():
        if not (engine_dir / rel).is_file():
            raise EngineDirError(f"Engine dir {engine_dir} is incomplete: {rel} is missing. {redo}")
    if verify_hashes:
        for rel, expected in manifest.files():
            actual = sha256_file(engine_dir / rel)
            if actual != expected:
                raise EngineDirError(
                    f"{engine_dir / rel} does not match the manifest (sha256 {actual[:12]}..., manifest says "
                    f"{expected[:12]}...): the file was changed or damaged after export. {redo}"
                )
    return manifest


def write_manifest(engine_dir: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json into `engine_dir`, atomically (readers see the old one or the new one)."""
    return write_json(Path(engine_dir) / MANIFEST_FILE, manifest.raw)
