"""svdedit.runtime.engines: the engine dir (its typed contract) and the runners that execute its networks.

    manifest = read_manifest(engine_dir)                       # contract.py: checked, typed
    runners = open_engines(engine_dir, manifest, "auto")       # one Runner per network (not yet active)
    with runners["unet"] as unet:                              # base.py: activate / infer / deactivate
        eps = unet(sample=x, timestep=t, encoder_hidden_states=e)["model_output"]

Runners: ``OrtRunner`` (onnxrt.py: onnxruntime, CPU / CUDA / TensorRT providers) and ``TensorrtRunner``
(tensorrt.py: the plans of `svdedit build`). Nothing here knows the editing method.
"""

from __future__ import annotations

from pathlib import Path

from svdedit.runtime.engines.base import Runner
from svdedit.runtime.engines.manifest import Manifest, read_manifest
from svdedit.runtime.engines.onnxrt import OrtRunner
from svdedit.runtime.engines.tensorrt import SharedActivations, TensorrtRunner, plans_for_this_device

__all__ = ["Manifest", "OrtRunner", "Runner", "TensorrtRunner", "open_engines", "read_manifest"]


def open_engines(engine_dir: str | Path, manifest: Manifest, provider: str = "auto") -> dict[str, Runner]:
    """One runner per network, not yet active: TensorRT plans when asked for (`tensorrt`), or when `auto` and
    `svdedit build` made plans for this GPU; otherwise onnxruntime sessions on the provider asked for."""
    if provider == "tensorrt" or (provider == "auto" and plans_for_this_device(manifest, Path(engine_dir))):
        shared = SharedActivations()  # the networks run one after another: one activation buffer
        return {name: TensorrtRunner(engine_dir, name, manifest, shared) for name in manifest.networks}
    return {name: OrtRunner(engine_dir, name, manifest, provider) for name in manifest.networks}
