"""svdedit.runtime.engines: the engine dir (its typed contract) and the runners that execute its networks.

    manifest = read_manifest(engine_dir)                       # contract.py: checked, typed
    runners = open_engines(engine_dir, manifest, "auto")       # one Runner per network (not yet active)
    with runners["unet"] as unet:                              # base.py: activate / infer / deactivate
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Runners: ``OrtRunner`` (onnxrt.py: onnxruntime, CPU / CUDA / TensorRT providers), ``TensorrtRunner``
(tensorrt.py: the plans of `svdedit build`) and ``OpenvinoRunner`` (openvino.py: OpenVINO on the CPU, fp32 or
bf16). Nothing here knows the editing method.
"""

from __future__ import annotations

from pathlib import Path

from svdedit.runtime.engines.base import Runner
from svdedit.runtime.engines.manifest import Manifest, read_manifest
from svdedit.runtime.engines.onnxrt import OrtRunner
from svdedit.runtime.engines.openvino import PROVIDER as OPENVINO, OpenvinoRunner, check_precision
from svdedit.runtime.engines.tensorrt import (SharedActivations, TensorrtRunner, current_device, find_plans,
                                              plans_for_this_device, refit_hint)
from svdedit.runtime.errors import SvdeditError, TensorrtError

__all__ = ["Manifest", "OpenvinoRunner", "OrtRunner", "Runner", "TensorrtRunner", "open_engines", "read_manifest",
           "resolve_precision", "resolve_provider"]


def resolve_provider(provider: str, manifest: Manifest) -> str:
    """`provider`, except for an engine dir whose UNet is an OpenVINO model (NNCF's int8, manifest.openvino_models),
    which only OpenVINO runs: there "auto" means openvino, and any other provider is a SvdeditError naming the fix."""
    models = manifest.openvino_models
    if not models or provider == OPENVINO:
        return provider
    if provider == "auto":
        return OPENVINO
    raise SvdeditError(f"this engine dir's {', '.join(models)} {'is an OpenVINO model' if len(models) == 1 else 'are OpenVINO models'} "
                       f"(NNCF's int8, written by svdedit quantize's nncf mode), which only OpenVINO runs: use the "
                       f"provider openvino (or auto), or quantize the fp32 engine dir in another mode for {provider}.")


def resolve_precision(provider: str, precision: str | None, manifest: Manifest) -> str:
    """The precision the networks compute in: for OpenVINO fp32 or bf16 (default bf16 where the CPU has bf16
    units); for onnxruntime and TensorRT the engine dir's own (`svdedit export --precision`), which is all they
    can run. SvdeditError naming the fix for any other combination (resolve_provider first)."""
    provider = resolve_provider(provider, manifest)
    if provider == OPENVINO:
        return check_precision(precision)
    if precision is None or precision == manifest.precision:
        return manifest.precision
    if precision == "bf16":
        raise SvdeditError("bf16 needs the provider openvino: onnxruntime and TensorRT have no bf16 compute here and "
                           f"run the engine dir's own precision ({manifest.precision}).")
    raise SvdeditError(f"this engine dir was exported in {manifest.precision}, so the provider {provider} runs "
                       f"{manifest.precision}, not {precision}: export it again with `svdedit export MODEL -o DIR "
                       f"--precision {precision}`, or leave the precision out.")


def open_engines(engine_dir: str | Path, manifest: Manifest, provider: str = "auto",
                 precision: str | None = None, graphs: dict[str, Path] | None = None) -> dict[str, Runner]:
    """One runner per network, not yet active: OpenVINO when asked for (`openvino`, at `precision`); TensorRT plans
    when asked for (`tensorrt`), or when `auto` and `svdedit build` made plans for this GPU; otherwise onnxruntime
    sessions on the provider asked for. `auto` picks OpenVINO only for an engine dir that nothing else can run
    (resolve_provider): installing OpenVINO changes no one's numbers. `graphs`: {network: a graph file} to load in
    place of the engine dir's (a LoRA swapped in at run time: engines/lora.swapped_graphs); TensorRT plans built
    --refittable take their changed weights by a refit in memory."""
    provider = resolve_provider(provider, manifest)
    precision = resolve_precision(provider, precision, manifest)
    graphs = graphs or {}
    backend = backend_of(provider, manifest, engine_dir)
    if graphs:
        refuse_swapped(backend, manifest, engine_dir)
    if backend == OPENVINO:
        return {name: OpenvinoRunner(engine_dir, name, manifest, precision, graph=graphs.get(name))
                for name in manifest.networks}
    if backend == "tensorrt":
        shared = SharedActivations()  # the networks run one after another: one activation buffer
        return {name: TensorrtRunner(engine_dir, name, manifest, shared, refit=graphs.get(name))
                for name in manifest.networks}
    return {name: OrtRunner(engine_dir, name, manifest, provider, graph=graphs.get(name)) for name in manifest.networks}


def backend_of(provider: str, manifest: Manifest, engine_dir: str | Path) -> str:
    """What open_engines runs the networks with for this (resolved) provider: "openvino", "tensorrt" (plans) or
    "onnxruntime"."""
    if provider == OPENVINO:
        return OPENVINO
    if provider == "tensorrt" or (provider == "auto" and plans_for_this_device(manifest, Path(engine_dir))):
        return "tensorrt"
    return "onnxruntime"


def refuse_swapped(backend: str, manifest: Manifest, engine_dir: str | Path) -> None:
    """A run-time LoRA swap on plans that cannot take it (TensorRT plans not built --refittable): a TensorrtError
    naming the ways that work. onnxruntime and OpenVINO take a swap always; TensorRT plans through a refit."""
    if backend == "tensorrt":
        plans = find_plans(manifest, current_device(), Path(engine_dir))
        if not plans.build.refittable:
            raise TensorrtError(refit_hint(plans))
