"""Dynamic batching for the one-process server (uvicorn): concurrent edit requests share UNet calls.

uvicorn serves requests concurrently but does not batch them; Ray Serve does (@serve.batch, used by
ray_app.py instead of this). A request's job waits in a bounded queue; the worker takes the first
job, then whatever else arrives within `max_wait_ms`, up to `max_batch` images, and runs them as one
batch on the service's single worker thread (the engines are busy one batch at a time; the event loop
stays free for health checks and new requests). When the queue holds `max_queue` images a new request
is refused at once (BusyError -> 503 with Retry-After): never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

from svdedit.runtime.errors import BusyError


@dataclass
class _Waiting:
    job: object
    images: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list], list], executor: Executor, max_batch: int, max_wait_ms: float,
                 max_queue: int):
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.pending: list[_Waiting] = []
        self.images_waiting = 0          # queued or running: what max_queue bounds
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="svdedit-batcher")

    async def submit(self, job, images: int):
        """The job's outcome, once its batch ran; BusyError at once if the queue is full."""
        if self._closing:
            raise BusyError("the service is shutting down; send the request to another instance.", retry_after_s=5.0)
        if self.images_waiting + images > self.max_queue:
            raise BusyError(f"the queue is full ({self.images_waiting} images waiting, limit {self.max_queue}); "
                            f"try again shortly.", retry_after_s=max(1.0, self.max_wait_s * 4))
        waiting = _Waiting(job, images, asyncio.get_running_loop().create_future())
        self.pending.append(waiting)
        self.images_waiting += images
        self._wake.set()
        try:
            return await waiting.future
        finally:
            if waiting in self.pending:  # the request gave up (timeout, client gone) while still queued
                self.pending.remove(waiting)
                self.images_waiting -= images

    async def close(self) -> None:
        """Refuse new jobs, let those already queued run, then stop the worker."""
        self._closing = True
        while self.pending:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()

    async def _gather(self, deadline: float) -> None:
        """Wait for company: until the queue holds a full batch, or the deadline passes."""
        while sum(w.images for w in self.pending) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                await self._gather(deadline=self.pending[0].queued_at + self.max_wait_s)
                batch, images = [], 0
                while self.pending and (not batch or images + self.pending[0].images <= self.max_batch):
                    w = self.pending.pop(0)
                    batch.append(w)
                    images += w.images
                if not batch:  # every job of it gave up while it formed
                    continue
                try:
                    outcomes = await loop.run_in_executor(self.executor, self.run_batch, [w.job for w in batch])
                except Exception as exc:  # noqa: BLE001  (a bug in run_batch: every request of the batch hears of it)
                    outcomes = [exc] * len(batch)
                for w, outcome in zip(batch, outcomes):
                    self.images_waiting -= w.images
                    if not w.future.done():
                        w.future.set_result(outcome)
