"""The engine dir a benchmark runs on: the one given, or a fresh export of a model into a temporary folder."""

from __future__ import annotations

import tempfile
from pathlib import Path


def ensure_engine(model: Path, engine: Path | None) -> Path:
    if engine is not None:
        return engine
    from svdedit.export.exporter import export_model

    out = Path(tempfile.mkdtemp(prefix="bench-runtime-")) / "engine"
    export_model(model, out, log=lambda m: None)
    return out
