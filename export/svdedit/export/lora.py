"""LoRA at export: adapters fused into the weights (`--lora FILE --lora-scale S`), and engines made ready for
adapters swapped at run time (`--lora-ready`; the merge itself is torch-free: runtime/svdedit/runtime/engines/lora.py).

Fusing: the UNet's layers go through diffusers' own loader (lora_state_dict, which converts kohya and older
diffusers files, then load_lora_into_unet, set_adapters for the scales, fuse_lora and unload_lora), so every
format diffusers reads works; the text encoders' layers are merged with the runtime's NumPy merge, the one the run-time
swap uses (tests/export/test_lora.py holds both to diffusers' load_lora_weights). Every file is first read by the runtime's strict
reader (read_adapter): a pickle, keys that are not LoRA layers, or a rank or scale out of bounds are refused before
anything loads (export_model reads them first), and a layer the model does not have is an error, never a silent
partial apply.

Making ready: every Linear and Conv weight of the UNet and text encoders is found in the exported graph by its
content (as it is, or transposed, where the exporter folded a MatMul's transpose into the initializer), and those
initializers move to NAME.lora.safetensors beside the graph, which reads them as ONNX external data at their
offsets in that file. The manifest maps module name -> [[initializer, transposed, shape], ...].
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from svdedit.runtime.engines.lora import Adapter, match_key, refuse_unfit, sgm_names
from svdedit.runtime.errors import ExportError, SvdeditError

#: the networks whose weights a LoRA may touch, and the component of a LoRA file that holds their layers
LORA_NETWORKS = {"unet": "unet", "unet_in": "unet", "unet_deep": "unet", "unet_out": "unet",
                 "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
LORA_WEIGHTS_SUFFIX = ".lora.safetensors"
ONNX_TO_SAFETENSORS = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def torch_modules(components) -> dict[str, object]:
    """component name -> its torch module (text_encoder_2 for SDXL)."""
    out = {"unet": components.unet, "text_encoder": components.text_encoder}
    if components.text_encoder_2 is not None:
        out["text_encoder_2"] = components.text_encoder_2
    return out


# --------------------------------------------------------------------------------------------------
# Fused at export
# --------------------------------------------------------------------------------------------------
def fuse_adapters(components, read: list[Adapter], log) -> list[dict]:
    """Fuse the adapters (engines/lora.read_adapter's, each with its scale) into the components' weights, in place;
    their records for the manifest. Every adapter is checked against the model before any is applied."""
    modules = torch_modules(components)
    for adapter in read:
        check_modules(adapter, modules)
    unet_adapters = [(i, a) for i, a in enumerate(read) if any(layer.component == "unet" for layer in a.layers)]
    if unet_adapters:
        fuse_unet(components.unet, unet_adapters, components.is_xl)
    for adapter in read:
        for layer in adapter.layers:
            if layer.component != "unet":
                merge_into(modules[layer.component], layer, adapter.scale)
    for adapter in read:
        log(f"  LoRA {adapter}: {len(adapter.layers)} layer(s) fused")
    return [a.record() for a in read]


def check_modules(adapter: Adapter, modules: dict) -> None:
    """Every layer of the adapter names a Linear or Conv module of the model, of a matching shape."""
    missing, mismatched = [], []
    for layer in adapter.layers:
        module = find_module(modules.get(layer.component), layer.module, layer.kohya)
        if module is None:
            missing.append(f"{layer.component}.{layer.module}")
        elif not layer.fits(tuple(module.weight.shape)):
            mismatched.append(layer.misfit(tuple(module.weight.shape)))
    refuse_unfit(missing, mismatched, "this model", "a LoRA for another model family?", "Nothing was exported.",
                 prefix=f"{adapter.path.name}: ")


def find_module(model, name: str, kohya: bool):
    """The Linear/Conv2d module `name` of `model` (matched as engines/lora.match_key says: a kohya name with its dots
    as underscores, CLIP's `text_model.` level dropped on both sides; a kohya UNet name may be in the original
    checkpoint's naming, engines/lora.sgm_names), or None."""
    import torch

    if model is None:
        return None
    key = match_key(name, kohya)
    named = dict(model.named_modules())
    found = next((module for full, module in named.items() if match_key(full, kohya) == key), None)
    if found is None and kohya:
        found = named.get(sgm_names(named).get(key))
    return found if isinstance(found, (torch.nn.Linear, torch.nn.Conv2d)) else None


def fuse_unet(unet, adapters: list[tuple[int, Adapter]], xl: bool) -> None:
    """diffusers' loader: each adapter's UNet layers loaded under its own name, weighted by its scale, fused, and
    the LoRA layers removed (the fused weights stay)."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    loader = StableDiffusionXLLoraLoaderMixin if xl else StableDiffusionLoraLoaderMixin
    names = []
    for i, adapter in adapters:
        state, alphas, metadata = loader.lora_state_dict(str(adapter.path), use_safetensors=True, unet_config=unet.config,
                                                         return_lora_metadata=True)
        state = {k: v for k, v in state.items() if k.startswith("unet.")}
        name = f"svdedit_{i}"
        try:
            loader.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=metadata)
        except Exception as exc:  # diffusers/peft: ValueError, RuntimeError (size mismatch), KeyError
            raise SvdeditError(f"{adapter.path.name}: diffusers cannot load its UNet layers ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}). Nothing was exported.") from None
        wanted = sum(layer.component == "unet" for layer in adapter.layers)
        loaded = sum(1 for _, m in unet.named_modules() if name in getattr(m, "lora_A", {}))
        if loaded != wanted:
            raise ExportError(f"{adapter.path.name}: diffusers loaded {loaded} of its {wanted} UNet LoRA layers; "
                              f"svdedit applies nothing in part. Nothing was exported.")
        names.append((name, adapter.scale))
    unet.set_adapters([n for n, _ in names], weights=[s for _, s in names])
    unet.fuse_lora(lora_scale=1.0, adapter_names=[n for n, _ in names])
    unet.unload_lora()


def merge_into(model, layer, scale: float) -> None:
    """W += scale * alpha / rank * B @ A on one torch module (the text encoders' layers)."""
    import torch

    module = find_module(model, layer.module, layer.kohya)
    with torch.no_grad():
        delta = torch.from_numpy(layer.delta() * np.float32(scale)).reshape(module.weight.shape)
        module.weight += delta.to(module.weight.dtype)


# --------------------------------------------------------------------------------------------------
# Ready for run-time adapters
# --------------------------------------------------------------------------------------------------
def weight_digests(model) -> dict[bytes, list[tuple[str, bool]]]:
    """The digest of every Linear/Conv2d weight of `model`, as fp32 and fp16 bytes, as it is and (2-D) transposed
    -> [(module name, transposed)]: how make_ready finds them among a graph's initializers."""
    import torch

    out: dict[bytes, list[tuple[str, bool]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w = module.weight.detach().to(torch.float32).numpy()
        for transposed, a in ((False, w), *(((True, w.T),) if w.ndim == 2 else ())):
            for dtype in (np.float32, np.float16):
                out.setdefault(digest(np.ascontiguousarray(a, dtype=dtype)), []).append((name, transposed))
    return out


def unused_modules(wrapper, model, names: list[str], inputs: list) -> list[str]:
    """Those of `names` (Linear/Conv2d modules of `model`, e.g. a text encoder) whose weights do not reach the outputs
    of `wrapper` (the network as exported, which holds `model`) on `inputs`: no gradient flows to them. SDXL's first
    text encoder gives its penultimate layer's hidden states, so its last layer is not in the graph; a LoRA layer on
    it changes nothing, in diffusers as here."""
    import torch

    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    before = [w.requires_grad for w in weights]
    try:
        with torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            outputs = wrapper(*(torch.from_numpy(a) for a in inputs))
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            total = sum(o.float().sum() for o in outputs if torch.is_tensor(o) and o.is_floating_point())
            grads = torch.autograd.grad(total, weights, allow_unused=True)
    finally:
        for w, flag in zip(weights, before):
            w.requires_grad_(flag)
    return sorted(n for n, g in zip(names, grads) if g is None)


def digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(a.tobytes(), digest_size=16).digest() + str(a.shape).encode()


def make_ready(path: Path, digests: dict[bytes, list[tuple[str, bool]]]) -> dict:
    """Move the initializers of `path` that are a module's weight into PATH.lora.safetensors (read by the graph as
    external data); the manifest fields (lora_weights, lora_targets). A module whose weight two initializers hold is
    swapped in both; an initializer equal to the weights of two modules is left out (a swap of one would change the
    other too), and a LoRA layer on such a module is then refused by name at run time."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    found: dict[str, tuple[str, bool]] = {}
    arrays = {}
    for init in model.graph.initializer:
        if len(init.dims) < 2:
            continue
        a = numpy_helper.to_array(init)
        owners = digests.get(digest(a)) if a.dtype in ONNX_TO_SAFETENSORS else None
        if owners and len({m for m, _ in owners}) == 1:
            found[init.name] = owners[0]
            arrays[init.name] = a
    per_module: dict[str, list] = {}
    for init_name, (module, transposed) in found.items():
        per_module.setdefault(module, []).append([init_name, transposed, list(arrays[init_name].shape)])
    if not per_module:
        raise ExportError(f"{path.name}: no weight of a Linear or Conv layer was found among its initializers, so "
                          f"it cannot take LoRA weights at run time; export without --lora-ready.")
    weights = path.with_name(path.stem + LORA_WEIGHTS_SUFFIX)
    offsets = write_safetensors(weights, arrays)
    for init in model.graph.initializer:
        if init.name in offsets:
            start, length = offsets[init.name]
            init.ClearField("raw_data")
            for field in ("float_data", "int32_data"):
                init.ClearField(field)
            del init.external_data[:]
            init.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", weights.name), ("offset", str(start)), ("length", str(length))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    rest = sum(i.ByteSize() for i in model.graph.initializer)
    if rest > 2**31 - 2**26:  # the rest past protobuf's 2 GB: into PATH.data as before
        onnx.save(model, str(path), save_as_external_data=True, location=data.name, size_threshold=1024)
    else:
        onnx.save(model, str(path))
    return {"lora_weights": weights.name, "lora_targets": dict(sorted(per_module.items()))}


def modules_of(digests: dict[bytes, list[tuple[str, bool]]]) -> set[str]:
    """Every module name weight_digests saw."""
    return {module for owners in digests.values() for module, _ in owners}


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """A safetensors file of `arrays` (little-endian, as ONNX's raw data); name -> (offset in the file, length)."""
    header, position = {}, 0
    for name, a in arrays.items():
        header[name] = {"dtype": ONNX_TO_SAFETENSORS[a.dtype], "shape": list(a.shape),
                        "data_offsets": [position, position + a.nbytes]}
        position += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    return {name: (start + h["data_offsets"][0], h["data_offsets"][1] - h["data_offsets"][0])
            for name, h in header.items()}
