"""The same service as a Ray Serve deployment: `svdedit serve ENGINE_DIR --ray --replicas N` (extra `svdedit[ray]`).

Each replica is one process with its own engines (and, on a GPU cluster, its own GPU: `num_gpus=1`
in its ray_actor_options). Ray Serve does what the one-process server does by hand: its HTTP proxy
routes requests to replicas, `@serve.batch` merges a replica's concurrent edits into one batch (up to
`max_batch` images, waiting up to `max_wait_ms`), and `max_ongoing_requests` / `max_queued_requests`
bound the work a replica holds and the requests waiting for one (beyond that the proxy answers 503).
Every replica serves the same FastAPI app (app.py), built at replica start with the replica as its
backend (`__serve_build_asgi_app__`), and all replicas share the attribute store folder (on several
nodes it must be a shared filesystem).

    serve.run(deployment(settings, replicas=2).bind(settings), route_prefix="/")
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from svdedit.serve.app import Backend, create_app
from svdedit.serve.metrics import Metrics
from svdedit.serve.service import EditJob, EditOutcome, EditService
from svdedit.serve.settings import ServeSettings


@serve.ingress()
class SvdeditReplica(Backend):
    def __init__(self, settings: ServeSettings):
        self.service = EditService(settings).open()
        self.metrics = Metrics(self.queue_images)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svdedit-engines")
        self.images_waiting = 0
        self.edit_batch.set_max_batch_size(settings.max_batch)
        self.edit_batch.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    def __serve_build_asgi_app__(self):
        return create_app(self)

    async def edit(self, job: EditJob) -> EditOutcome | Exception:
        self.images_waiting += job.n_images
        try:
            return await self.edit_batch(job)
        finally:
            self.images_waiting -= job.n_images

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.025, batch_size_fn=lambda jobs: sum(j.n_images for j in jobs))
    async def edit_batch(self, jobs: list[EditJob]) -> list[EditOutcome | Exception]:
        self.metrics.batch_images.observe(sum(j.n_images for j in jobs))
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.service.run_batch, jobs)

    async def call(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def queue_images(self) -> int:
        return self.images_waiting


def deployment(settings: ServeSettings, replicas: int = 1, cpus_per_replica: float = 1.0,
               gpus_per_replica: float = 0.0, autoscaling: dict | None = None):
    """The Ray Serve deployment of `settings`: `replicas` replicas (or `autoscaling`, Ray's autoscaling_config,
    e.g. {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 8}), each with these resources.
    Back-pressure: a replica holds at most 2 batches of requests; at most max_queue requests wait for one."""
    options = {"ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
               "max_ongoing_requests": 2 * settings.max_batch, "max_queued_requests": settings.max_queue,
               "graceful_shutdown_timeout_s": settings.request_timeout_s}
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas
    return serve.deployment(SvdeditReplica, name="svdedit").options(**options)
