"""Wall time per named stage of an edit, for the benchmarks and `svdedit edit --timings`.

    stages = Stages()
    editor = Editor(pipe, stages=stages)
    editor.edit_images(...)
    stages.seconds   # {"text": 0.01, "vae_encode": 0.2, "invert": 3.1, ...}, summed over calls

The Editor's default, `NO_STAGES`, times nothing. The runtime's arrays are host arrays (every engine
call returns when its outputs are on the host), so a stage's wall time is its real cost.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

#: the stages of one edit, in the order they run
EDIT_STAGES = ("text", "vae_encode", "invert", "sample_to_edit", "svd_avi", "sample_rest", "vae_decode")


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def reset(self) -> None:
        self.seconds = {}


def NO_STAGES(name: str):  # noqa: N802  (used like the Stages instance it stands in for)
    return nullcontext()
