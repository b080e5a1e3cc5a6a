"""Every setting of the service, with its default, in one frozen dataclass (`svdedit serve --help` lists them).

The defaults were chosen for the embedded model on a small CPU machine and stay sensible on a GPU: the
limits bound what one request may cost, the batching bounds how long a request waits for company.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from svdedit.runtime.errors import SvdeditError


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
    # ---- dynamic batching ----
    max_batch: int = 8              # images per batch: concurrent requests share every UNet call
    max_wait_ms: float = 25.0       # how long the first request of a batch waits for others
    max_queue: int = 64             # images waiting (queued or running); beyond it: 503 with Retry-After
    # ---- limits of one request ----
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 16_000_000    # checked from the image header, before decoding (decompression bombs)
    max_seeds: int = 16
    max_prompt_chars: int = 300     # CLIP reads 77 tokens; longer prompts are cut anyway
    max_steps: int = 200
    max_learn_iters: int = 2000
    request_timeout_s: float = 120.0

    def check(self) -> "ServeSettings":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise SvdeditError(f"--{f.name.replace('_', '-')} {value}: must be positive.")
        if self.max_queue < self.max_batch:
            raise SvdeditError(f"--max-queue {self.max_queue} is smaller than --max-batch {self.max_batch}; a full batch "
                               f"could never wait. Give a queue at least as long as a batch.")
        return self
