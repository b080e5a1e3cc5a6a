"""`svdedit check`: verify an engine dir and run every network once, at batch 1 and the model's own size; then
report the TensorRT plans built from it (checked, not run: that needs their GPU)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from svdedit.runtime.engines import OPENVINO, OpenvinoRunner, OrtRunner, resolve_precision, resolve_provider
from svdedit.runtime.engines.contract import resolve_shape
from svdedit.runtime.engines.manifest import read_manifest
from svdedit.runtime.engines.names import resolve_engine
from svdedit.runtime.engines.openvino import cpu_report
from svdedit.runtime.engines.plans import all_plans
from svdedit.runtime.errors import EngineDirError, TensorrtError


def example_feeds(manifest, network: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs one network of this engine dir accepts, at `batch` and the default image size: seeded standard normal
    values, and token ids that are all the start token. For checks and benchmarks, not for images."""
    sizes = manifest.axis_sizes(batch=batch)
    rng = np.random.default_rng(seed)
    return {t.name: (np.zeros(resolve_shape(t.shape, sizes), np.int64) + manifest.text.bos_id if t.dtype == "int64"
                     else rng.standard_normal(resolve_shape(t.shape, sizes)).astype(t.dtype))
            for t in manifest.networks[network].inputs}


def check_engine_dir(engine_dir: str | Path, provider: str = "auto", precision: str | None = None) -> list[dict]:
    """One report per network: provider, milliseconds, precision, the export's parity; EngineDirError if not sound.
    The networks run on onnxruntime (`provider`), or on OpenVINO (provider "openvino", at `precision`)."""
    engine_dir = resolve_engine(engine_dir)
    manifest = read_manifest(engine_dir, verify="all")
    provider = resolve_provider(provider, manifest)
    precision = resolve_precision(provider, precision, manifest)
    sizes = manifest.axis_sizes(batch=1)
    cpu = cpu_report() if provider == OPENVINO else None
    report = []
    for name in manifest.networks:
        runner = (OpenvinoRunner(engine_dir, name, manifest, precision) if provider == OPENVINO
                  else OrtRunner(engine_dir, name, manifest, provider))
        with runner:
            feeds = example_feeds(manifest, name)
            t0 = time.perf_counter()
            out = runner(**feeds)
            ms = (time.perf_counter() - t0) * 1e3
            for t in runner.entry.outputs:
                a, want = out[t.name], resolve_shape(t.shape, sizes)
                if a.shape != want or not np.all(np.isfinite(a)):
                    raise EngineDirError(f"{name}: output {t.name} has shape {list(a.shape)} (want {list(want)}) "
                                         f"or non-finite values.")
            parity = runner.entry.parity_fp16 or runner.entry.parity
            line = {"network": name, "provider": runner.provider, "ms": round(ms, 2),
                    "precision": precision if provider == OPENVINO else runner.entry.precision,
                    "parity_max_abs": parity.get("max_abs"), "ok": True}
            if provider == OPENVINO:
                line.update({"compiled_from": runner.opened_from, "open_s": round(runner.open_seconds, 2),
                             "cpu": cpu})
            report.append(line)
    return report + check_plans(engine_dir, manifest)


def check_plans(engine_dir: Path, manifest) -> list[dict]:
    """One report per TensorRT build of this engine (svdedit build: the user cache, or svdedit 0.1's in the
    engine dir): where its plans are and whether every plan is there with its recorded sha256. Needs no GPU."""
    try:
        builds = all_plans(manifest, engine_dir)
    except TensorrtError as exc:
        return [{"tensorrt": "build record", "ok": False, "error": str(exc)}]
    out = []
    for key, plans in builds.items():
        bad = [name for name in plans.build.networks if not plans.intact(name)]
        line = {"tensorrt": key, "where": plans.where, "folder": str(plans.root / plans.build.directory),
                "networks": sorted(plans.build.networks), "ok": not bad}
        if bad:
            line["error"] = (f"plans missing or changed since they were built: {', '.join(bad)}; run `svdedit build "
                             f"{engine_dir}` on {plans.build.gpu} again.")
        out.append(line)
    return out
