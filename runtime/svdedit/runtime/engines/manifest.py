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
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from svdedit.runtime.engines.contract import (
    DYNAMIC_AXES,
    FAMILIES,
    FORMAT_VERSIONS,
    MANIFEST_FILE,
    NETWORK_NAMES,
    OPENVINO_MODEL_SUFFIX,
    TIME_IDS,
    UNET_SPLIT,
    XL_FAMILIES,
    axis_sizes,
    format_version,
    networks_for,
    other_networks,
    unet_layout,
)
from svdedit.runtime.errors import EngineDirError, ManifestFieldError
from svdedit.runtime.engines.verified import Record, identity
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
    #: `svdedit export --lora-ready` (engines/lora.py): the safetensors file holding the weights a LoRA may touch
    #: (the graph reads them as external data), and module name -> [[initializer, transposed, shape], ...]
    lora_weights: str | None = None
    lora_weights_sha256: str | None = None
    lora_targets: dict | None = None
    #: modules whose weights do not reach this graph's outputs (SDXL's first text encoder ends at its penultimate
    #: layer): a LoRA layer on them changes nothing, so it is skipped, not refused
    lora_unused: list | None = None

    @property
    def is_openvino_model(self) -> bool:
        """An OpenVINO model (.xml + .bin: `svdedit quantize --mode nncf`), not an ONNX graph."""
        return self.file.endswith(OPENVINO_MODEL_SUFFIX)

    def files(self) -> list[tuple[str, str]]:
        """(relative file name, sha256) of every file this network is made of."""
        out = [(self.file, self.sha256)]
        if self.external_data:
            out.append((self.external_data, self.external_data_sha256 or ""))
        if self.lora_weights:
            out.append((self.lora_weights, self.lora_weights_sha256 or ""))
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
class AddedConditioning:
    """SDXL's second text encoder and size conditioning (format version 2): the UNet's text embedding is the
    concatenation of the two encoders' penultimate hidden states (hidden_sizes), the pooled embedding the second
    one's projection (pooled_size); time_ids are (original h, w, crop top, left, target h, w)."""

    hidden_sizes: tuple[int, ...]       # each encoder's width, in the order they are concatenated
    pooled_size: int
    time_ids: int                       # 6
    force_zeros_for_empty_prompt: bool  # the pipeline's config: the unconditional embedding is zeros, not ""'s


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
    refittable: bool | None = None  # built --refittable: weights replaceable by refit_plan (None: records before it)


@dataclass(frozen=True)
class StepCache:
    """An engine exported with --step-cache (export/svdedit/export/step_cache.py): its UNet is split, and these are the intervals
    a run uses unless told otherwise (1 = every step computes the deep branch: the exact path)."""

    interval: int                # sampling
    invert_interval: int         # DDIM inversion of real images
    composed_parity: dict        # unet_in -> unet_deep -> unet_out against the whole torch UNet


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
    step_cache: StepCache | None = None
    quantization: dict | None = None  # `svdedit quantize` (export/svdedit/export/quantize.py): mode, calibration, int8 parity
    text_2: TextInfo | None = None                    # SDXL: the second tokenizer (tokenizer_2.json)
    added_conditioning: AddedConditioning | None = None  # SDXL
    #: LoRA adapters in the weights: {"fused": [...]} as `svdedit export --lora` fused them, {"swapped": [...]} as a
    #: run merged them (with_adapters, never written): each engines/lora.Adapter.record()
    lora: dict | None = None
    #: the JSON as read (or as the exporter made it): what is written back, and what the identity hashes
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Check `data` (parsed manifest.json) field by field; ManifestFieldError names the first bad one."""
        return typed_fields(cls, data, "manifest", raw=data)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.raw))

    def identity(self) -> str:
        """sha256 of what decides the latents: the source model (the hash of its files), its family, prediction
        type and latent and text contract. Attribute files are keyed on it, so the same model exported again,
        in another precision, or with TensorRT plans built from it, keeps them (a variant's latents differ
        only as its precision does: benchmarks/results/export_sd15_shape_fp16.json)."""
        r = self.raw
        xl = {"text_2": {k: (r.get("text_2") or {}).get(k) for k in ("sequence_length", "hidden_size")},
              "added_conditioning": r.get("added_conditioning")} if self.is_xl else {}
        adapters = sorted((a["sha256"], float(a["scale"])) for a in self.adapters if a["scale"] != 0)
        return sha256_json({"source": (r.get("source") or {}).get("sha256"), "family": r.get("family"),
                            "prediction_type": r.get("prediction_type"), "latent": r.get("latent"),
                            "text": {k: (r.get("text") or {}).get(k) for k in ("sequence_length", "hidden_size")},
                            **xl, **({"lora": adapters} if adapters else {})})

    @property
    def adapters(self) -> list[dict]:
        """The LoRA adapters in this engine's weights, fused at export and swapped in by a run (their records: file,
        sha256, scale, ...). They are part of the identity (a scale of 0 changes nothing, and counts as none)."""
        lora = self.raw.get("lora") or {}
        return [*(lora.get("fused") or []), *(lora.get("swapped") or [])]

    def with_adapters(self, records: list[dict]) -> "Manifest":
        """This manifest with LoRA adapters swapped in at run time (engines/lora.py): another identity, the same
        files. Only in memory: the engine dir is never modified by a swap."""
        if not records:
            return self
        raw = self.to_dict()
        raw["lora"] = {**(raw.get("lora") or {}), "swapped": [*(raw.get("lora") or {}).get("swapped", []), *records]}
        return Manifest.from_dict(raw)

    def without_swapped(self) -> "Manifest":
        """The engine dir's own manifest: this one less the adapters a run swapped in (with_adapters)."""
        lora = self.raw.get("lora") or {}
        if not lora.get("swapped"):
            return self
        raw = self.to_dict()
        rest = {k: v for k, v in raw.pop("lora").items() if k != "swapped"}
        return Manifest.from_dict({**raw, **({"lora": rest} if rest else {})})

    def identities(self) -> tuple[str, str]:
        """(identity, the identity of svdedit 0.1.0: the whole manifest but its TensorRT plans), which attribute
        files learned before keep."""
        return self.identity(), sha256_json({k: v for k, v in self.raw.items() if k != "tensorrt"})

    def graphs_key(self) -> str:
        """sha256 of the network graphs (their files' hashes): what TensorRT plans and onnxruntime's TensorRT
        caches are built from. Another export of the same model (fp16, int8, a re-export) has another key."""
        return sha256_json({name: net.files() for name, net in sorted(self.networks.items())})

    def with_tensorrt_build(self, key: str, build: dict) -> "Manifest":
        """This manifest with one more TensorRT build recorded under `key` (checked like the rest)."""
        raw = self.to_dict()
        raw.setdefault("tensorrt", {})[key] = build
        return Manifest.from_dict(raw)

    @property
    def is_xl(self) -> bool:
        """True for an SDXL-family engine dir (two text encoders, added conditioning)."""
        return self.family in XL_FAMILIES

    @property
    def openvino_models(self) -> list[str]:
        """The networks stored as OpenVINO models (NNCF's int8 UNet), which only the provider openvino runs."""
        return [name for name, net in self.networks.items() if net.is_openvino_model]

    @property
    def split_unet(self) -> bool:
        """True when the UNet is split for step caching (unet_in, unet_deep, unet_out)."""
        return unet_layout(self.networks) == UNET_SPLIT

    @property
    def builds(self) -> dict[str, TensorrtBuild]:
        """TensorRT builds recorded in the manifest itself (svdedit 0.1 wrote its plans into the engine dir; they
        are still run). `svdedit build` now keeps plans in the user's cache: runtime/svdedit/runtime/engines/plans.py."""
        return self.tensorrt or {}

    def axis_sizes(self, batch: int, size: int | None = None) -> dict[str, int]:
        """The dynamic axes of a call on `batch` images of `size` pixels (default: the model's own size)."""
        return axis_sizes(batch, size or self.image_size.default, self.latent.vae_scale_factor)

    def files(self) -> list[tuple[str, str]]:
        """(relative file name, sha256) of every file the engine dir must hold."""
        out = [(self.schedule.file, self.schedule.sha256), (self.text.file, self.text.sha256)]
        if self.text_2 is not None:
            out.append((self.text_2.file, self.text_2.sha256))
        for net in self.networks.values():
            out += net.files()
        return out


def _problems(m: Manifest, engine_dir: Path | None) -> list[str]:
    """Every value of the typed manifest that is out of its range, and every file name that is not a plain
    name inside the engine dir (symlinks resolved)."""
    from svdedit.runtime.engines.contract import EXPORT_PRECISIONS

    out = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            out.append(text)

    need(m.family in FAMILIES, f"family {m.family!r} is not one of {', '.join(FAMILIES)}")
    need(m.prediction_type in ("epsilon", "v_prediction"), f"prediction_type {m.prediction_type!r} is not epsilon or v_prediction")
    need(m.precision in EXPORT_PRECISIONS, f"precision {m.precision!r} is not one of {', '.join(EXPORT_PRECISIONS)}")
    lat, text, size = m.latent, m.text, m.image_size
    need(1 <= lat.channels <= 64, f"latent.channels {lat.channels} is not 1 to 64")
    need(1 <= lat.vae_scale_factor <= 64, f"latent.vae_scale_factor {lat.vae_scale_factor} is not 1 to 64")
    need(math.isfinite(lat.vae_scaling_factor) and lat.vae_scaling_factor > 0,
         f"latent.vae_scaling_factor {lat.vae_scaling_factor} is not a positive number")
    need(1 <= text.sequence_length <= 4096, f"text.sequence_length {text.sequence_length} is not 1 to 4096")
    need(1 <= text.hidden_size <= 65536, f"text.hidden_size {text.hidden_size} is not 1 to 65536")
    for name in ("pad_id", "bos_id", "eos_id"):
        need(0 <= getattr(text, name) < 2**31, f"text.{name} {getattr(text, name)} is not a token id")
    out += _xl_problems(m)
    out += _lora_problems(m)
    need(1 <= size.multiple_of <= 4096 and size.multiple_of % max(1, lat.vae_scale_factor) == 0,
         f"image_size.multiple_of {size.multiple_of} is not a positive multiple of latent.vae_scale_factor")
    need(1 <= size.min <= size.default <= size.max <= 65536,
         f"image_size needs 1 <= min <= default <= max <= 65536 (min {size.min}, default {size.default}, max {size.max})")
    need(size.default % max(1, size.multiple_of) == 0,
         f"image_size.default {size.default} is not a multiple of image_size.multiple_of {size.multiple_of}")
    others, specs = other_networks(m.family), networks_for(m.family)
    for name in others:
        need(name in m.networks, f"networks lists no {name!r}")
    need(unet_layout(m.networks) is not None,
         f"networks should hold either 'unet' or all of {', '.join(UNET_SPLIT)} (a UNet split for step caching), "
         f"not {sorted(set(m.networks) - set(others)) or 'neither'}")
    unknown = sorted(set(m.networks) - set(specs))
    need(not unknown, f"networks lists {unknown}, which a {m.family!r} engine dir does not have (it has "
                      f"{', '.join(specs)})")
    for name, net in m.networks.items():
        spec = specs.get(name)
        if spec is None:
            continue
        for role, declared, wanted in (("inputs", net.inputs, spec.inputs), ("outputs", net.outputs, spec.outputs)):
            got = [(t.name, t.dtype, len(t.shape)) for t in declared]
            want = [(t.name, t.dtype, len(t.dims)) for t in wanted]
            need(got == want, f"networks.{name}.{role} are {got}, the contract says {want} (name, dtype, rank)")
            for t in declared:
                need(all(d in DYNAMIC_AXES if isinstance(d, str) else 1 <= d <= 1_000_000 for d in t.shape),
                     f"networks.{name}.{role} {t.name!r} has a shape {list(t.shape)} with a bad dimension")
    if m.step_cache is not None:
        need(m.split_unet, "step_cache is set but the UNet is not split (unet_in, unet_deep, unet_out)")
        for name in ("interval", "invert_interval"):
            need(1 <= getattr(m.step_cache, name) <= 1000, f"step_cache.{name} {getattr(m.step_cache, name)} is not 1 to 1000")
    for field_name, rel, digest in _files_with_fields(m):
        need(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None,
             f"{field_name}'s sha256 {_shown(digest)} is not 64 hex digits")
        problem = outside_problem(engine_dir, rel)
        if problem:
            out.append(f"{field_name} {rel!r} {problem}")
    return out


def _lora_problems(m: Manifest) -> list[str]:
    """The LoRA records (engines/lora.py): each adapter with a sha256 and a finite scale; each network's
    lora_targets (module -> [[initializer, transposed, shape], ...]) with its lora_weights file, or neither."""
    out = []
    for kind in ("fused", "swapped"):
        records = (m.lora or {}).get(kind) or []
        if not isinstance(records, list):
            out.append(f"lora.{kind} is not a list")
            continue
        for i, a in enumerate(records):
            scale = a.get("scale") if isinstance(a, dict) else None
            if not (isinstance(a, dict) and isinstance(a.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", a["sha256"])
                    and isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)):
                out.append(f"lora.{kind}[{i}] is not an adapter record (a sha256 and a finite scale)")
    for name, net in m.networks.items():
        if (net.lora_weights is None) != (net.lora_targets is None):
            out.append(f"networks.{name} has one of lora_weights and lora_targets without the other")
        for module, places in (net.lora_targets or {}).items():
            if not (isinstance(places, list) and places and all(
                    isinstance(p, list) and len(p) == 3 and isinstance(p[0], str) and isinstance(p[1], bool)
                    and isinstance(p[2], list) and 1 <= len(p[2]) <= 4
                    and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in p[2]) for p in places)):
                out.append(f"networks.{name}.lora_targets[{module!r}] is not a list of [initializer, transposed, shape]")
                break
        unused = net.lora_unused
        if unused is not None and not (net.lora_targets is not None and isinstance(unused, list)
                                       and all(isinstance(u, str) and u not in net.lora_targets for u in unused)):
            out.append(f"networks.{name}.lora_unused is not a list of module names outside its lora_targets")
    return out


def _xl_problems(m: Manifest) -> list[str]:
    """The SDXL parts (text_2, added_conditioning) are there exactly for an SDXL family, and agree with the text."""
    if not m.is_xl:
        return [f"{name} is set but the family is {m.family!r}, not SDXL" for name in ("text_2", "added_conditioning")
                if getattr(m, name) is not None]
    if m.text_2 is None or m.added_conditioning is None:
        return [f"an SDXL engine dir needs {name}" for name in ("text_2", "added_conditioning")
                if getattr(m, name) is None]
    out, t2, ac = [], m.text_2, m.added_conditioning
    if t2.sequence_length != m.text.sequence_length:
        out.append(f"text_2.sequence_length {t2.sequence_length} is not text.sequence_length {m.text.sequence_length}")
    for name in ("pad_id", "bos_id", "eos_id"):
        if not 0 <= getattr(t2, name) < 2**31:
            out.append(f"text_2.{name} {getattr(t2, name)} is not a token id")
    if len(ac.hidden_sizes) != 2 or sum(ac.hidden_sizes) != m.text.hidden_size or min(ac.hidden_sizes, default=0) < 1:
        out.append(f"added_conditioning.hidden_sizes {list(ac.hidden_sizes)} are not two widths adding up to "
                   f"text.hidden_size {m.text.hidden_size}")
    if ac.time_ids != TIME_IDS:
        out.append(f"added_conditioning.time_ids {ac.time_ids} is not {TIME_IDS}")
    if not 1 <= ac.pooled_size or ac.pooled_size + ac.time_ids > m.text.hidden_size:
        out.append(f"added_conditioning.pooled_size {ac.pooled_size} plus {ac.time_ids} time ids does not fit the "
                   f"{m.text.hidden_size}-wide conditioning row (runtime/svdedit/runtime/conditioning.py)")
    return out


def _files_with_fields(m: Manifest) -> list[tuple[str, str, str]]:
    """(field, relative name, sha256) of every file the manifest names, TensorRT plans included."""
    out = [("schedule.file", m.schedule.file, m.schedule.sha256), ("text.file", m.text.file, m.text.sha256)]
    if m.text_2 is not None:
        out.append(("text_2.file", m.text_2.file, m.text_2.sha256))
    for name, net in m.networks.items():
        out.append((f"networks.{name}.file", net.file, net.sha256))
        if net.external_data:
            out.append((f"networks.{name}.external_data", net.external_data, net.external_data_sha256))
        if net.lora_weights:
            out.append((f"networks.{name}.lora_weights", net.lora_weights, net.lora_weights_sha256))
    for key, build in m.builds.items():
        for name, plan in build.networks.items():
            out.append((f"tensorrt.{key}.networks.{name}.file", plan.file, plan.sha256))
    return out


def outside_problem(engine_dir: Path | None, rel: str) -> str | None:
    """Why `rel` is not a plain relative name inside `engine_dir` (None when it is)."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or "\\" in rel or any(p in ("..", "") for p in parts) or rel.startswith("~"):
        return "is not a plain relative file name (no absolute paths, no '..')"
    if engine_dir is not None:
        root = engine_dir.resolve()
        target = (engine_dir / rel).resolve()
        if target != root and root not in target.parents:
            return f"resolves outside the engine dir (to {target}): a symlink leads out of it"
    return None


def typed_fields(cls, value, where: str, raw: dict | None = None):
    """`value` (parsed JSON) as an instance of the dataclass `cls`, every field's type checked."""
    if not isinstance(value, dict):
        raise ManifestFieldError(f"{where} should be an object, not {_shown(value)}")
    hints = typing.get_type_hints(cls)
    kwargs, problems = {}, []
    for f in fields(cls):
        if f.name == "raw":
            kwargs["raw"] = raw
            continue
        if f.name not in value:
            if not _optional(hints[f.name]):  # else the dataclass's default (None)
                problems.append(f"{where}.{f.name} is missing")
            continue
        try:
            kwargs[f.name] = _as(hints[f.name], value[f.name], f"{where}.{f.name}")
        except ManifestFieldError as exc:  # go on: every problem is reported, not the first
            problems.append(str(exc))
    if problems:
        raise ManifestFieldError("; ".join(problems))
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
        return typed_fields(hint, value, where)
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


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file (of at most 64 MiB); EngineDirError naming it when it is unreadable, not JSON, or nested
    too deep to parse."""
    try:
        if path.stat().st_size > 64 * 2**20:
            raise ValueError(f"it is {path.stat().st_size} bytes; {what} is never that large")
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise EngineDirError(f"{path} is corrupt: its JSON is nested too deep to be {what}.") from None
    except (OSError, ValueError) as exc:
        raise EngineDirError(f"{path} is corrupt ({type(exc).__name__}: {exc}).") from None


#: how read_manifest checks the files' bytes: every file hashed; only the files changed since this user last hashed
#: them (verified.py); none (their presence only)
VERIFY = ("all", "changed", "none")


def read_manifest(engine_dir: str | Path, verify: str = "changed") -> Manifest:
    """Open an engine dir's manifest and check that the dir holds what the manifest says.

    Raises EngineDirError naming every missing, mistyped or out-of-range field, every file name that is not a
    plain name inside the engine dir, and the first missing or mismatching file, with what to do about it.
    `verify` says how the files' bytes are checked against their sha256: "all" hashes every file (seconds for
    SD-size models: `svdedit check`, the export, build, quantize); "changed" (the default: opening a Pipeline)
    hashes only the files that are new or changed since this user's processes last hashed them (verified.py), so
    a damaged or swapped file is refused just the same and an unchanged dir opens in milliseconds; "none" checks
    that the files are there. A mismatch is checked once more after a second, since a re-export may have
    swapped the dir in meanwhile.
    `engine_dir` may be a built-in name (svdedit:shapes, names.py).
    """
    from svdedit.runtime.engines.names import resolve_engine

    engine_dir = resolve_engine(engine_dir)
    redo = f"Re-create it with `svdedit export MODEL -o {engine_dir} --force`."
    if not engine_dir.exists():
        raise EngineDirError(f"Engine dir {engine_dir} does not exist. Create one with `svdedit export MODEL -o {engine_dir}`.")
    if not engine_dir.is_dir():
        raise EngineDirError(f"Engine dir {engine_dir} is a file, not a folder. Pass the folder `svdedit export` wrote.")
    path = engine_dir / MANIFEST_FILE
    if not path.is_file():
        raise EngineDirError(f"{engine_dir} is not an engine dir: it has no {MANIFEST_FILE}. {redo}")
    try:
        data = read_json(path, "a manifest")
        if not isinstance(data, dict) or "format_version" not in data:
            raise EngineDirError(f"{path} is corrupt: it is not a JSON object with a format_version.")
    except EngineDirError as exc:
        raise EngineDirError(f"{exc} {redo}") from None
    version = data["format_version"]
    if version not in FORMAT_VERSIONS:
        raise EngineDirError(
            f"{path} has format version {version!r}; this svdedit reads versions "
            f"{', '.join(map(str, FORMAT_VERSIONS))}. Re-export the model with this svdedit, or use the svdedit "
            f"version that wrote it."
        )
    try:
        manifest = Manifest.from_dict(data)
    except ManifestFieldError as exc:
        raise EngineDirError(f"{path} is corrupt: {exc}. {redo}") from None
    problems = _problems(manifest, engine_dir)
    if not problems and version != format_version(manifest.family):
        problems = [f"format_version {version} is not that of a {manifest.family!r} engine dir "
                    f"({format_version(manifest.family)})"]
    if problems:
        raise EngineDirError(f"{path} is corrupt: {'; '.join(problems)}. {redo}")
    for rel, _ in manifest.files():
        if not (engine_dir / rel).is_file():
            raise EngineDirError(f"Engine dir {engine_dir} is incomplete: {rel} is missing. {redo}")
    if verify not in VERIFY:
        raise ValueError(f"verify={verify!r}: one of {', '.join(VERIFY)}")
    if verify != "none":
        mismatch = _first_mismatch(engine_dir, manifest, rehash_all=verify == "all")
        if mismatch and _swapped_meanwhile(path, data):
            return read_manifest(engine_dir, verify)
        if mismatch:
            rel, actual, expected = mismatch
            raise EngineDirError(
                f"{engine_dir / rel} does not match the manifest (sha256 {actual[:12]}..., manifest says "
                f"{expected[:12]}...): the file was changed or damaged after export. {redo}"
            )
    return manifest


def _first_mismatch(engine_dir: Path, manifest: Manifest, rehash_all: bool) -> tuple[str, str, str] | None:
    """The first file whose sha256 is not the manifest's: (name, its sha256, the manifest's). Files the record
    vouches for are skipped unless `rehash_all`; every file hashed and found right is recorded."""
    record = Record(engine_dir)
    try:
        for rel, expected in manifest.files():
            path = engine_dir / rel
            if not rehash_all and record.vouches(rel, path, expected):
                continue
            before = identity(path)
            actual = sha256_file(path)
            if actual != expected:
                record.forget(rel)
                return rel, actual, expected
            record.remember(rel, path, actual, before)
        return None
    finally:
        record.save()


def _swapped_meanwhile(path: Path, data: dict) -> bool:
    """Whether the manifest changed while its files were hashed (a re-export renamed a new dir into place)."""
    import time

    time.sleep(1.0)
    try:
        return json.loads(path.read_text(encoding="utf-8")) != data
    except (OSError, ValueError, RecursionError):
        return False


def write_manifest(engine_dir: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json into `engine_dir`, atomically (readers see the old one or the new one)."""
    return write_json(Path(engine_dir) / MANIFEST_FILE, manifest.raw)
