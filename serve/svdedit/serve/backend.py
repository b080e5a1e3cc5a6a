"""Who runs the model work behind the routes: the `Backend` interface, and `LocalBackend` (one process, uvicorn).

The routes (app.py) see only this interface; Ray Serve's gateway (ray_app.py) is the other implementation. Each
method takes the runtime's request value (runtime/svdedit/runtime/editing/request.py) and may raise a
SvdeditError, which the routes answer as a 4xx or 503 (errors.py).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from svdedit.runtime.editing.request import EditRequest, GenerateRequest, LearnRequest
from svdedit.runtime.engines import Manifest
from svdedit.serve.batching import MicroBatcher
from svdedit.serve.metrics import Metrics
from svdedit.serve.service import EditOutcome, EditService
from svdedit.serve.settings import ServeSettings

log = logging.getLogger("svdedit.serve")


def decode_pool(settings: ServeSettings) -> ThreadPoolExecutor:
    """Where request bodies are parsed and images decoded: `settings.decode_workers` at a time, off the event loop."""
    return ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="svdedit-decode")


class Backend:
    """The work behind the routes. Every method may raise a SvdeditError (the routes answer it as a 4xx/503)."""

    settings: ServeSettings
    metrics: Metrics
    #: request bodies are parsed and images decoded here, `settings.decode_workers` at a time, off the event loop
    decoder: ThreadPoolExecutor

    async def offload(self, fn, *args):
        """fn(*args) in the decode pool, so that /healthz and /metrics answer while a large body is read."""
        return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

    async def edit(self, request: EditRequest) -> EditOutcome:
        """Validate the request, then run it in a batch with whatever else arrives."""
        raise NotImplementedError

    async def learn(self, request: LearnRequest) -> dict:
        raise NotImplementedError

    async def generate(self, request: GenerateRequest) -> bytes:
        raise NotImplementedError

    async def attributes(self) -> list[dict]:
        raise NotImplementedError

    async def attribute(self, attr_id: str) -> dict:
        raise NotImplementedError

    async def delete_attribute(self, attr_id: str) -> None:
        raise NotImplementedError

    async def adapters(self) -> list[dict]:
        """The LoRA adapters a request may name (EditService.adapters)."""
        raise NotImplementedError

    async def ready(self) -> bool:
        raise NotImplementedError

    def queue_images(self) -> int:
        """Images this front end holds: waiting for a batch or in one."""
        return 0


class LocalBackend(Backend):
    """One process (uvicorn): one worker thread for the engines, the micro-batcher in front of it."""

    def __init__(self, settings: ServeSettings, manifest: Manifest | None = None):
        """`manifest`: the engine dir's, when the caller has read it already (svdedit serve checks it first)."""
        self.settings = settings.check()
        self.manifest = manifest
        self.service = EditService(settings)
        self.metrics = Metrics(self.queue_images, self.service.cache)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svdedit-engines")
        self.decoder = decode_pool(settings)
        self.batcher: MicroBatcher | None = None

    async def start(self) -> None:
        s = self.settings
        self.batcher = MicroBatcher(self.service.run_batch, self.executor, s.max_batch, s.max_wait_ms, s.max_queue)
        self.batcher.start()
        opening = asyncio.get_running_loop().run_in_executor(self.executor, self.service.open, self.manifest)  # see /readyz
        opening.add_done_callback(lambda f: f.exception() and log.error("opening the engines failed: %s", f.exception()))

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        await self._run(self.service.close)
        self.executor.shutdown(wait=True)
        self.decoder.shutdown(wait=True)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def edit(self, request: EditRequest) -> EditOutcome:
        job = await self.offload(self.service.edit_job, request)  # the image decoded off the event loop
        outcome = await self.batcher.submit(job, job.n_images)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def learn(self, request: LearnRequest) -> dict:
        return await self._run(self.service.learn, request)

    async def generate(self, request: GenerateRequest) -> bytes:
        return await self._run(self.service.generate, request)

    async def attributes(self) -> list[dict]:
        return self.service.attributes().list()

    async def attribute(self, attr_id: str) -> dict:
        return self.service.attributes().describe(attr_id)

    async def delete_attribute(self, attr_id: str) -> None:
        self.service.attributes().delete(attr_id)

    async def adapters(self) -> list[dict]:
        return self.service.adapters()

    async def ready(self) -> bool:
        return self.service.ready

    def queue_images(self) -> int:
        return self.batcher.images_waiting if self.batcher is not None else 0
