"""Every setting of the service, with its default, in one frozen dataclass (`svdedit serve --help` lists them).

The defaults were chosen for the embedded model on a small CPU machine and stay sensible on a GPU: the
limits bound what one request may cost, the batching bounds how long a request waits for company.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from svdedit.runtime.editing.request import ADAPTER_NAME
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.limits import LIMITS, Limits


def default_store_root() -> Path:
    """Where learned attributes live by default: $XDG_DATA_HOME/svdedit/attributes (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "svdedit" / "attributes"


@dataclass(frozen=True)
class ServeSettings:
    engine_dir: Path
    #: the attribute store; default: default_store_root() / <the engine's identity>, so models never mix
    store: Path | None = None
    provider: str = "auto"
    #: what the networks compute in (None: the provider's default; runtime/svdedit/runtime/engines resolve_precision)
    precision: str | None = None
    #: LoRA adapters a request may name: (name, file, scale) each, swapped into an engine dir exported --lora-ready
    #: (svdedit serve --lora NAME=FILE [--lora-scale S]); each is opened beside the engine as exported
    lora: tuple[tuple[str, str, float], ...] = ()
    # ---- dynamic batching ----
    max_batch: int = 8              # images per batch: concurrent requests share every UNet call
    max_wait_ms: float = 25.0       # how long the first request of a batch waits for others
    max_queue: int = 64             # images waiting (queued or running); beyond it: 503 with Retry-After
    request_timeout_s: float = 120.0
    # ---- what one client can hold (serve/svdedit/serve/guard.py) ----
    body_timeout_s: float = 30.0    # a request's body must have arrived this long after it began; else 408
    inflight_body_mb: int = 512     # MiB of request bodies held at once, all requests together; beyond, 503
    decode_workers: int = 2         # bodies parsed and images decoded at once, off the event loop
    max_connections: int = 256      # open connections (uvicorn's limit_concurrency); beyond, 503
    #: invert once, edit many: MiB of latents kept per process so that re-editing an image (the web page's
    #: strength slider, another attribute) skips its inversion (runtime/svdedit/runtime/editing/cache.py); 0 = off
    edit_cache_mb: int = 256
    #: the bounds of one request: the same object, and defaults, as the command line's (runtime/svdedit/runtime/limits.py)
    limits: Limits = LIMITS

    @classmethod
    def make(cls, engine_dir: Path, **options) -> "ServeSettings":
        """Settings from flat options: those named like Limits' fields go into `limits`."""
        limit_names = {f.name for f in fields(Limits)}
        limits = Limits(**{k: v for k, v in options.items() if k in limit_names})
        return cls(Path(engine_dir), **{k: v for k, v in options.items() if k not in limit_names}, limits=limits)

    def request_limits(self) -> Limits:
        """What one request may ask for: the limits, with no more seeds than the queue holds, and one image."""
        return replace(self.limits, max_seeds=min(self.limits.max_seeds, self.max_queue), max_images=1)

    def check(self) -> "ServeSettings":
        for owner in (self, self.limits):
            for f in fields(owner):
                value = getattr(owner, f.name)
                if f.name == "edit_cache_mb" and value == 0:
                    continue  # 0 turns the cache off
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                    raise SvdeditError(f"--{f.name.replace('_', '-')} {value}: must be positive.")
        names = [name for name, _, _ in self.lora]
        for name in names:
            if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
                raise SvdeditError(f"--lora {name!r}=FILE: an adapter's name is 1 to 64 letters, digits, '.', '_' or '-' "
                                   f"(requests name it in their `lora` field), e.g. --lora watercolour=style.safetensors.")
        if len(set(names)) != len(names):
            raise SvdeditError(f"--lora names {sorted({n for n in names if names.count(n) > 1})} more than once: give "
                               f"each adapter its own name.")
        if self.max_queue < self.max_batch:
            raise SvdeditError(f"--max-queue {self.max_queue} is smaller than --max-batch {self.max_batch}; a full batch "
                               f"could never wait. Give a queue at least as long as a batch.")
        return self
