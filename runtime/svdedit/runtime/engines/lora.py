"""LoRA adapters, torch-free: read a LoRA file and merge it into an engine dir's weights.

    adapter = read_adapter("style.safetensors", scale=0.8)              # checked: format, keys, rank, scale
    graphs = swapped_graphs(engine_dir, manifest, [adapter])            # {network: the graph with W' beside it}
    OrtRunner(engine_dir, "unet", manifest, graph=graphs["unet"])       # (Pipeline(..., lora=[adapter]) does this)

A LoRA layer holds two matrices, down (A: rank x in) and up (B: out x rank), and the merged weight is
W' = W + scale * (alpha / rank) * B @ A, reshaped to W's shape (conv LoRA: B is out x rank x 1 x 1, A rank x in x
kh x kw). The engine dir must have been exported with `--lora-ready`: its manifest then maps every Linear and Conv
weight of the UNet and text encoders (by the diffusers module name, e.g. down_blocks.0.attentions.0.proj_in) to
the graph initializer that holds it (transposed where the exporter folded a MatMul's transpose into it), and keeps
those initializers in a safetensors file beside the graph (networks.NAME.lora_weights) that the graph reads as
external data. A swap writes that file again, W' in place of W, into the per-user cache next to links to the graph
(swapped_graphs), and onnxruntime (or OpenVINO) loads the graph from there; a TensorRT plan built --refittable is
refitted in memory with the weights the merge changed (swapped_weights; tensorrt.refit_swapped).

The formats read: diffusers/peft (`unet.MODULE.lora_A.weight` / `lora_B.weight`, also `lora.down` / `lora.up`
and `lora_linear_layer.down` / `up`; alphas from the file's `lora_adapter_metadata`, as diffusers saves them, or
`MODULE.alpha` tensors; none: alpha = rank, diffusers' rule) and kohya (`lora_unet_MODULE_WITH_UNDERSCORES.
lora_down.weight` / `lora_up.weight` / `alpha`, the UNet's modules in diffusers' names or the original checkpoint's
(sgm_names), `lora_te_` / `lora_te1_` / `lora_te2_` for the text encoders).
Anything else in the file is an error naming the first keys; nothing is applied in part.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svdedit.runtime.engines.names import engine_cache_dir, user_cache_root
from svdedit.runtime.errors import SvdeditError, shown
from svdedit.runtime.files import atomic_dir, check_safetensors, sha256_file, write_json

#: the merged adapter sets the per-user cache keeps, all engines together ($SVDEDIT_LORA_CACHE_GB): each holds its
#: networks' swappable weights again (SD 1.5's UNet in fp32: 3.4 GB), and the least recently used go first
DEFAULT_CACHE_GB = 32.0
RECENT_S = 600.0  # a set used this recently is never removed: another process may be opening it
#: bounds a LoRA must keep (an adapter past them is a mistake: a wrong file, a scale typed as a percentage)
MAX_SCALE = 8.0
MAX_RANK = 1024
#: a LoRA file's component -> the engine networks that hold its layers (the UNet whole, or split for step caching)
COMPONENT_NETWORKS = {"unet": ("unet", "unet_in", "unet_deep", "unet_out"), "text_encoder": ("text_encoder",),
                      "text_encoder_2": ("text_encoder_2",)}
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                  "lora_te_": "text_encoder"}
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
LORA_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up|"
                      r"lora_linear_layer\.down|lora_linear_layer\.up)\.weight$")
ALPHA_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.alpha$")
KOHYA_KEY = re.compile(r"^(lora_unet_|lora_te1_|lora_te2_|lora_te_)([^.]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
DOWN_NAMES = ("lora_A", "lora.down", "lora_linear_layer.down", "lora_down.weight")
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip, and a bare pickle protocol 2+
log = logging.getLogger("svdedit.runtime")


@dataclass(frozen=True)
class Layer:
    """One LoRA layer: `module` in diffusers' naming (a kohya name, underscored, is resolved against an engine's
    modules when merged: `kohya` True)."""

    component: str
    module: str
    down: np.ndarray  # A: rank x in (x kh x kw)
    up: np.ndarray    # B: out x rank (x 1 x 1)
    scaling: float    # alpha / rank
    kohya: bool = False

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def fits(self, shape: tuple, transposed: bool = False) -> bool:
        """True when B @ A has the size of a weight of `shape` (as the graph holds it: `transposed` for a MatMul's)."""
        out_ch, rest = self.up.shape[0], int(np.prod(self.down.shape[1:]))
        return tuple(shape[:2]) == (rest, out_ch) if transposed else (shape[0] == out_ch and int(np.prod(shape[1:])) == rest)

    def misfit(self, shape) -> str:
        """The layer and the two sizes, for the error that lists the layers that do not fit."""
        return (f"{self.component}.{self.module} (LoRA {self.up.shape[0]} x {int(np.prod(self.down.shape[1:]))}, "
                f"weight {list(shape)})")

    def delta(self) -> np.ndarray:
        """B @ A * alpha / rank as out x (in * kh * kw), in float32."""
        up = self.up.reshape(self.up.shape[0], -1).astype(np.float32)
        down = self.down.reshape(self.rank, -1).astype(np.float32)
        return (up @ down) * np.float32(self.scaling)


@dataclass(frozen=True)
class Adapter:
    """A LoRA file, read and checked, with the scale it is applied at."""

    path: Path
    sha256: str
    scale: float
    layers: tuple[Layer, ...]

    def record(self) -> dict:
        """What a manifest and an engine's identity record of it: the file's name and hash, the scale, its layers."""
        return {"file": self.path.name, "sha256": self.sha256, "scale": self.scale,
                "components": sorted({layer.component for layer in self.layers}), "layers": len(self.layers)}

    def __str__(self) -> str:
        return f"{self.path.name} (sha256 {self.sha256[:12]}, scale {self.scale:g})"


def read_adapter(path: str | Path, scale: float = 1.0) -> Adapter:
    """A LoRA file as an Adapter. SvdeditError, naming the problem and the fix, for a file that is missing, a pickle,
    not safetensors, holds keys that are not LoRA layers, or a rank or scale out of bounds."""
    path = Path(path)
    if not path.is_file():
        raise SvdeditError(f"the LoRA file {path} does not exist (or is not a file). Give the path of a .safetensors "
                           f"LoRA file.")
    if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
        raise SvdeditError(f"the LoRA scale {scale} for {path.name} is out of bounds: give a number from -{MAX_SCALE:g} "
                           f"to {MAX_SCALE:g} (1 applies the adapter as trained, 0 not at all).")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] != b"{" and head.startswith(PICKLE_MAGIC):  # a safetensors file's JSON header starts at byte 8
        raise SvdeditError(f"{path} is a pickle (a .ckpt/.pt/.bin file), which svdedit never loads: unpickling can run "
                           f"arbitrary code. Use the adapter's .safetensors file, or convert it where you trust it.")
    tensors, metadata = read_safetensors(path)
    return Adapter(path, sha256_file(path), float(scale), tuple(parse_layers(tensors, metadata, path)))


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, the header's __metadata__) of a safetensors file, read with NumPy (bf16 widened to float32)."""
    try:
        header = check_safetensors(path)
    except SvdeditError as exc:
        raise SvdeditError(f"{exc} (the LoRA file must be a .safetensors file)") from None
    start = data_start(path)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start) if path.stat().st_size > start else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        kind = info.get("dtype") if isinstance(info, dict) else None
        dtype = SAFETENSORS_DTYPES.get(kind) if isinstance(kind, str) else None
        if dtype is None:
            raise SvdeditError(f"{path}: tensor {name!r} is {shown(kind)}, not a float type a LoRA holds "
                               f"({', '.join(SAFETENSORS_DTYPES)}).")
        try:
            b, e = (int(x) for x in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            if not (0 <= b <= e and all(d >= 0 for d in shape)):
                raise ValueError("negative offsets or sizes")
            a = np.frombuffer(data[b:e], dtype=dtype).reshape(shape)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise SvdeditError(f"{path}: tensor {name!r} has a header entry that does not fit its data ({exc}); the "
                               f"file is damaged.") from None
        tensors[name] = (a.astype(np.uint32) << 16).view(np.float32) if kind == "BF16" else a
    metadata = header.get("__metadata__")
    return tensors, metadata if isinstance(metadata, dict) else {}


def data_start(path: Path) -> int:
    """Where the tensors of a safetensors file begin: after the 8-byte length and the JSON header it gives."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def parse_layers(tensors: dict[str, np.ndarray], metadata: dict, path: Path) -> list[Layer]:
    """The LoRA layers of a file's tensors (see the module docstring for the formats). Keys that fit no format,
    a down without its up, a rank out of bounds or a non-finite value: SvdeditError naming the first keys."""
    pairs: dict[tuple[str, str, bool], dict[str, np.ndarray]] = {}
    alphas: dict[tuple[str, str, bool], float] = {}
    unknown = []
    for key, value in tensors.items():
        if m := LORA_KEY.match(key):
            pairs.setdefault((m[1], m[2], False), {})["down" if m[3] in DOWN_NAMES else "up"] = value
        elif m := ALPHA_KEY.match(key):
            alphas[(m[1], m[2], False)] = alpha_of(value, key, path)
        elif m := KOHYA_KEY.match(key):
            where = (KOHYA_PREFIXES[m[1]], m[2], True)
            if m[3] == "alpha":
                alphas[where] = alpha_of(value, key, path)
            else:
                pairs.setdefault(where, {})["down" if m[3] in DOWN_NAMES else "up"] = value
        else:
            unknown.append(key)
    if unknown:
        raise SvdeditError(f"{path.name} holds {len(unknown)} key(s) that are not LoRA layers of a UNet or text encoder "
                           f"({', '.join(sorted(unknown)[:3])}{', ...' if len(unknown) > 3 else ''}): svdedit reads "
                           f"diffusers/peft and kohya LoRA files of SD 1/2 and SDXL, and applies nothing in part.")
    if not pairs:
        raise SvdeditError(f"{path.name} holds no LoRA layers. Is it a LoRA file?")
    peft_alphas = peft_alpha_rules(metadata)
    layers = []
    for (component, module, kohya), pair in sorted(pairs.items()):
        name = f"{component}.{module}"
        if set(pair) != {"down", "up"}:
            raise SvdeditError(f"{path.name}: the LoRA layer {name} has its {'down' if 'down' in pair else 'up'} "
                               f"matrix but not the other; the file is incomplete.")
        down, up = pair["down"], pair["up"]
        rank = int(down.shape[0]) if down.ndim else 0
        if not (down.ndim in (2, 4) and up.ndim == down.ndim and up.shape[1] == rank):
            raise SvdeditError(f"{path.name}: the LoRA layer {name} has matrices of shapes {list(down.shape)} and "
                               f"{list(up.shape)}, which are not a rank-r pair (down r x in, up out x r).")
        if not 1 <= rank <= min(MAX_RANK, up.shape[0], int(np.prod(down.shape[1:]))):
            raise SvdeditError(f"{path.name}: the LoRA layer {name} has rank {rank}, out of bounds (1 to "
                               f"min({MAX_RANK}, its layer's in and out sizes)).")
        if not (np.all(np.isfinite(down)) and np.all(np.isfinite(up))):
            raise SvdeditError(f"{path.name}: the LoRA layer {name} holds NaN or inf; the file is damaged.")
        alpha = alphas.get((component, module, kohya), peft_alphas(component, module, rank))
        if not (math.isfinite(alpha) and 0 < abs(alpha / rank) <= 1024):
            raise SvdeditError(f"{path.name}: the LoRA layer {name} has alpha {alpha} for rank {rank}, out of bounds.")
        layers.append(Layer(component, module, down, up, alpha / rank, kohya))
    return layers


def alpha_of(value: np.ndarray, key: str, path: Path) -> float:
    if value.size != 1:
        raise SvdeditError(f"{path.name}: {key} holds {value.size} values; an alpha is one number.")
    return float(value.reshape(-1)[0])


def peft_alpha_rules(metadata: dict):
    """alpha(component, module, rank) from diffusers' lora_adapter_metadata (peft's lora_alpha, alpha_pattern and
    use_rslora, saved per component as "unet.lora_alpha" ...); without it alpha = rank, as diffusers loads such files."""
    try:
        meta = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except (ValueError, TypeError):
        meta = {}
    meta = meta if isinstance(meta, dict) else {}

    def alpha(component: str, module: str, rank: int) -> float:
        patterns = meta.get(f"{component}.alpha_pattern")
        for pattern, value in (patterns.items() if isinstance(patterns, dict) else ()):
            if module == pattern or module.endswith("." + pattern):
                return number(value, f"{component}.alpha_pattern")
        value = meta.get(f"{component}.lora_alpha")
        if value is None:
            return float(rank)
        return number(value, f"{component}.lora_alpha") * (math.sqrt(rank) if meta.get(f"{component}.use_rslora") else 1.0)

    def number(value, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SvdeditError(f"the LoRA file's lora_adapter_metadata field {field} is {shown(value)}, not a number.")
        return float(value)

    return alpha


# --------------------------------------------------------------------------------------------------
# Merging into an engine dir's weights
# --------------------------------------------------------------------------------------------------
def swapped_graphs(engine_dir: str | Path, manifest, adapters) -> dict[str, Path]:
    """{network: a graph path to load in place of the engine dir's} for every network the adapters touch (none: {}).

    The merged weights are written, one tensor at a time, into a copy of the network's lora_weights file in the
    per-user cache (beside links to the engine dir's graph and its other files), where the graph finds them as its
    external data: onnxruntime then loads them as it loads an engine dir, so a swap takes no more memory than a
    plain open (given as in-memory initializers, onnxruntime kept a copy of its own beside them: 9.2 GiB against
    4.6 on the SD 1.5 shape), and the next open with the same adapters merges nothing. The folder is keyed by the
    engine's graphs and the adapters with their scales. The engine dir is only read. SvdeditError naming the first
    layers that this engine does not have, or whose shapes do not match (a LoRA made for another model), and for an
    engine dir not exported --lora-ready."""
    plan = merge_plan(manifest, adapters)
    if not plan:
        return {}
    engine_dir = Path(engine_dir).resolve()
    records = [a.record() for a in adapters]
    root = engine_cache_dir(manifest.with_adapters(records).identity(), manifest.graphs_key()) / "lora"
    nets = {name: manifest.networks[name] for name in plan}
    changed = {name: sorted(plan[name]) for name in plan}  # what a TensorRT plan must be refitted with

    def merged_before() -> bool:  # by this or another process, for this engine dir where it now is
        return all(is_link_to(root / rel, engine_dir / rel) for net in nets.values() for rel, _ in net.files()
                   if rel != net.lora_weights) and changed_in(root) == changed

    if not merged_before():
        evict_merged(cache_budget() - sum((engine_dir / net.lora_weights).stat().st_size for net in nets.values()), root)
        try:
            with atomic_dir(root, replace=root.exists()) as work:
                for name, net in nets.items():
                    for rel, _ in net.files():
                        if rel != net.lora_weights:
                            (work / rel).symlink_to(engine_dir / rel)
                    write_merged(engine_dir / net.lora_weights, work / net.lora_weights, plan[name])
                write_json(work / "adapters.json", {"engine_dir": str(engine_dir), "adapters": records,
                                                    "changed": changed})
        except SvdeditError:  # another process merged the same adapters meanwhile (atomic_dir: it appeared)
            if not merged_before():
                raise
    os.utime(root / "adapters.json")  # its last use, for evict_merged
    return {name: root / net.file for name, net in nets.items()}


def cache_budget() -> int:
    """The bytes of merged adapter sets the per-user cache keeps, all engines together: $SVDEDIT_LORA_CACHE_GB
    (gigabytes), else DEFAULT_CACHE_GB."""
    text = os.environ.get("SVDEDIT_LORA_CACHE_GB")
    try:
        gb = DEFAULT_CACHE_GB if text is None else float(text)
    except ValueError:
        gb = -1.0
    if not (math.isfinite(gb) and gb >= 0):
        raise SvdeditError(f"SVDEDIT_LORA_CACHE_GB is {text!r}: give the gigabytes of merged LoRA weights the cache "
                           f"may keep, e.g. 32 (0 keeps only the adapter sets in use).")
    return int(gb * 2**30)


def merged_sets() -> list[tuple[float, int, Path]]:
    """(last use, bytes, folder) of every merged adapter set in the per-user cache (swapped_graphs' folders), the
    least recently used first."""
    out = []
    for folder in (user_cache_root() / "engines").glob("*/lora"):
        try:
            used = (folder / "adapters.json").stat().st_mtime
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and not f.is_symlink())
        except OSError:  # being written, or removed, by another process
            continue
        out.append((used, size, folder))
    return sorted(out)


def evict_merged(budget: int, keep: Path) -> None:
    """Remove the least recently used merged adapter sets until they take at most `budget` bytes (what the next
    merge leaves of the cache's budget), never `keep` nor a set used in the last RECENT_S seconds (another process
    may be opening it). A set is renamed away before it is deleted, so no reader sees it half gone."""
    for leftover in (user_cache_root() / "engines").glob("*/lora.evicted-*"):  # a removal cut short
        shutil.rmtree(leftover, ignore_errors=True)
    sets = merged_sets()
    total = sum(size for _, size, _ in sets)
    now = time.time()
    for used, size, folder in sets:
        if total <= budget:
            break
        if folder == keep or now - used < RECENT_S:
            continue
        doomed = folder.with_name(f"lora.evicted-{os.getpid()}-{time.monotonic_ns()}")
        try:
            folder.rename(doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        total -= size
        log.info("removed the merged LoRA set %s (%.2f GB, unused for %.0f h): the cache keeps %.1f GB "
                 "(SVDEDIT_LORA_CACHE_GB)", folder.parent.name, size / 2**30, (now - used) / 3600,
                 cache_budget() / 2**30)


def changed_in(root: Path) -> dict | None:
    """{network: [initializer, ...]} that the merge in `root` (a swapped_graphs folder) changed; None if unrecorded."""
    try:
        return json.loads((root / "adapters.json").read_text()).get("changed")
    except (OSError, ValueError, AttributeError):
        return None


def swapped_weights(graph: Path, network: str, net) -> dict[str, np.ndarray]:
    """{initializer: W'} of the weights a swap changed in `network` (its swapped graph `graph` from swapped_graphs,
    `net` its manifest record), memory-mapped from the merged file beside the graph: what a TensorRT refit takes."""
    changed = (changed_in(graph.parent) or {}).get(network)
    if changed is None:
        raise SvdeditError(f"{graph.parent} does not record the weights its LoRA merge changed; remove that folder "
                           f"and run again (it is merged anew).")
    path = graph.parent / net.lora_weights
    header, start = check_safetensors(path), data_start(path)
    return {name: np.memmap(path, dtype=SAFETENSORS_DTYPES[header[name]["dtype"]], mode="r",
                            offset=start + int(header[name]["data_offsets"][0]), shape=tuple(header[name]["shape"]))
            for name in changed}


def is_link_to(link: Path, target: Path) -> bool:
    return link.is_symlink() and os.readlink(link) == str(target)


def merge_plan(manifest, adapters) -> dict[str, dict[str, list[tuple[Layer, float, bool, tuple]]]]:
    """{network: {initializer: [(layer, scale, transposed, shape), ...]}}: what each adapter adds where, checked
    against the engine's weights (see swapped_graphs)."""
    if not adapters:
        return {}
    ready = {name: net for name, net in manifest.networks.items() if net.lora_targets}
    if not ready:
        raise SvdeditError(f"this engine dir was not exported for run-time LoRA. Export it again with "
                           f"`svdedit export MODEL -o DIR --lora-ready`, or fuse the adapter at export with "
                           f"`svdedit export MODEL -o DIR --lora {adapters[0].path.name}`.")
    if manifest.quantization:
        raise SvdeditError("a run-time LoRA cannot be applied to an int8 engine dir (its weights are quantized with "
                           "scales computed without the adapter): fuse the adapter at export (`svdedit export MODEL "
                           "--lora FILE`), then quantize, or swap adapters on the fp32 engine dir.")
    modules = {name: {*net.lora_targets, *(net.lora_unused or ())} for name, net in ready.items()}
    sgm = sgm_names([m for name in COMPONENT_NETWORKS["unet"] for m in modules.get(name, ())])
    names = {name: {**{match_key(m, k): m for m in modules[name] for k in (False, True)},
                    **(sgm if name in COMPONENT_NETWORKS["unet"] else {})}  # a UNet part finds only its own modules
             for name in ready}
    plan: dict[str, dict[str, list]] = {}
    missing, mismatched = [], []
    for adapter in adapters:
        for layer in adapter.layers:
            places = targets_of(layer, ready, names)
            if not places and not is_unused(layer, ready, names):
                missing.append(f"{layer.component}.{layer.module}")
            for network, initializer, transposed, shape in places:
                if not layer.fits(shape, transposed):
                    mismatched.append(layer.misfit(shape))
                plan.setdefault(network, {}).setdefault(initializer, []).append((layer, adapter.scale, transposed, shape))
    refuse_unfit(missing, mismatched, f"this {manifest.family} engine", "a LoRA for another model family, or for "
                 "modules the export did not keep swappable.", "Nothing was applied.")
    return plan


def refuse_unfit(missing: list[str], mismatched: list[str], subject: str, why_missing: str, outcome: str,
                 prefix: str = "") -> None:
    """The error for LoRA layers that name modules `subject` lacks, or do not fit its weights (the first named);
    at export (the torch model) and at run time (the engine's swappable weights)."""
    def first(items: list[str], n: int) -> str:
        return ", ".join(items[:n]) + (", ..." if len(items) > n else "")

    if missing:
        raise SvdeditError(f"{prefix}{len(missing)} LoRA layer(s) name modules {subject} does not have "
                           f"({first(missing, 3)}): {why_missing} {outcome}")
    if mismatched:
        raise SvdeditError(f"{prefix}{len(mismatched)} LoRA layer(s) do not fit {subject}'s weights "
                           f"({first(mismatched, 2)}): a LoRA made for another model. {outcome}")


def match_key(module: str, kohya: bool) -> str:
    """What a LoRA layer's module and a model's module are matched by. A kohya name is matched with its dots as
    underscores. transformers 5's CLIP text models lost their `text_model.` level, which the modules of LoRA files
    made before name (`text_encoder.text_model.encoder.layers.0...`, kohya's `lora_te_text_model_encoder_...`), as
    do engine dirs exported before: that level is dropped on both sides, as diffusers' loader does."""
    return module.replace(".", "_").removeprefix("text_model_") if kohya else module.removeprefix("text_model.")


#: a resnet's modules: diffusers' name -> the original (LDM/SGM) checkpoint's
SGM_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
SGM_FIXED = {"conv_in": "input_blocks_0_0", "conv_out": "out_2", "time_embedding.linear_1": "time_embed_0",
             "time_embedding.linear_2": "time_embed_2", "add_embedding.linear_1": "label_emb_0_0",
             "add_embedding.linear_2": "label_emb_0_2"}
SGM_PART = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$|"
                      r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def sgm_names(modules) -> dict[str, str]:
    """{the kohya name (underscored) in the original checkpoint's naming: the diffusers UNet module} for `modules`
    (a UNet's module names): kohya's sd-scripts trains SDXL on that UNet (`lora_unet_input_blocks_4_1_
    transformer_blocks_0_attn1_to_q`, `..._middle_block_0_in_layers_2`, `..._output_blocks_2_2_conv`). Its layout
    is read off the modules: layers per block (down block 0's resnets), and which up blocks have attention (their
    upsampler is the block's third part, else its second)."""
    modules = list(modules)
    per_block = 1 + max((int(m.split(".")[3]) for m in modules if m.startswith("down_blocks.0.resnets.")), default=-1)
    if per_block == 0:
        return {}
    step = per_block + 1
    attended = {int(m.split(".")[1]) for m in modules if re.match(r"up_blocks\.\d+\.attentions\.", m)}
    out = {}
    for module in modules:
        if module in SGM_FIXED:
            out[SGM_FIXED[module]] = module
            continue
        m = SGM_PART.match(module)
        if m is None:
            continue
        if m[6]:  # the middle block: resnet, attention, resnet
            index, kind, rest = (1 if m[6] == "attentions" else 2 * int(m[7])), m[6], m[8]
            where = f"middle_block_{index}"
        else:
            side, block, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            if side == "down_blocks":
                index = 1 + block * step + (per_block if kind == "downsamplers" else layer)
                where = f"input_blocks_{index}_{1 if kind == 'attentions' else 0}"
            else:
                index = block * step + (per_block if kind == "upsamplers" else layer)
                part = {"resnets": 0, "attentions": 1}.get(kind, 2 if block in attended else 1)
                where = f"output_blocks_{index}_{part}"
            if kind == "downsamplers":
                rest = "op" if rest == "conv" else rest
        if kind == "resnets":
            rest = SGM_RESNET.get(rest, rest)
        out[f"{where}_{rest.replace('.', '_')}"] = module
    return out


def modules_named(layer: Layer, ready: dict, names: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """(network, the network's module name) for each swappable network of `layer`'s component (`names`: each
    network's match_key of its module names, targets and unused, -> the names)."""
    key = match_key(layer.module, layer.kohya)
    return [(network, names[network].get(key, layer.module)) for network in COMPONENT_NETWORKS[layer.component]
            if network in ready]


def targets_of(layer: Layer, ready: dict, names: dict[str, dict[str, str]]) -> list[tuple[str, str, bool, tuple]]:
    """(network, initializer, transposed, shape) of each graph initializer that holds `layer`'s weight."""
    return [(network, initializer, bool(transposed), tuple(shape))
            for network, module in modules_named(layer, ready, names)
            for initializer, transposed, shape in ready[network].lora_targets.get(module, ())]


def is_unused(layer: Layer, ready: dict, names: dict[str, dict[str, str]]) -> bool:
    """`layer` is on a module the graphs do not use (a network's lora_unused): it changes nothing and is skipped."""
    return any(module in (ready[network].lora_unused or ()) for network, module in modules_named(layer, ready, names))


def write_merged(src: Path, dst: Path, plan: dict[str, list]) -> None:
    """`src` (a lora_weights file) copied to `dst` with the same header, each planned tensor W written as
    W + sum(scale * B @ A), in float32 and cast back to W's type; one tensor in memory at a time."""
    header = check_safetensors(src)
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        (n,) = struct.unpack("<Q", f_in.read(8))
        f_out.write(struct.pack("<Q", n) + f_in.read(n))
        start = 8 + n
        for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            b, e = (int(x) for x in info["data_offsets"])
            f_in.seek(start + b)
            f_out.seek(start + b)
            if name not in plan:
                f_out.write(f_in.read(e - b))
                continue
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            w = np.fromfile(f_in, dtype=dtype, count=(e - b) // np.dtype(dtype).itemsize).reshape(info["shape"])
            work = w.astype(np.float32)
            for layer, scale, transposed, shape in plan[name]:
                d = layer.delta() * np.float32(scale)
                work += (d.T if transposed else d).reshape(shape)
            f_out.write(work.astype(w.dtype).tobytes())
