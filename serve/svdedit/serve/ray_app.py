"""The same service on Ray Serve: `svdedit serve ENGINE_DIR --ray --replicas N` (extra `svdedit[ray]`).

Two deployments, as Ray Serve applications with models are usually built:

    HTTP -> Ray Serve's proxy -> SvdeditGateway (the FastAPI app of app.py; light, CPU)
                                     -> SvdeditModel x N (the engines; one GPU each on a GPU cluster)

- SvdeditModel replicas each open the engines once. `@serve.batch` merges a replica's concurrent edits
  into one batch (up to max_batch images, waiting up to max_wait_ms); `max_ongoing_requests` /
  `max_queued_requests` bound the work a replica holds and the requests waiting for one (beyond: 503).
  Errors come back as data (status, field, message), never as pickled exceptions.
- SvdeditGateway serves the API and the page, and calls the model through a DeploymentHandle. If a
  model replica dies with requests in flight (a crash, a lost node, `ray.kill`), the gateway sends
  those requests again, to a live replica, up to twice (edits and learning are deterministic, so a
  repeat is safe), then answers 503 saying so; Ray Serve restarts the dead replica meanwhile.
- All replicas share the attribute store folder (on several nodes it must be a shared filesystem).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.editing.request import EditRequest, GenerateRequest, LearnRequest
from svdedit.serve.app import create_app
from svdedit.serve.backend import Backend, decode_pool
from svdedit.serve.errors import ServiceError, described
from svdedit.serve.metrics import Metrics
from svdedit.serve.service import EditJob, EditOutcome, EditService
from svdedit.serve.settings import ServeSettings

log = logging.getLogger("svdedit.serve")
REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)
RETRIES = 2


def _as_data(exc: Exception) -> tuple:
    if isinstance(exc, SvdeditError):
        return ("error", *described(exc), getattr(exc, "retry_after_s", None))
    log.error("unexpected error in a model replica", exc_info=exc)
    return ("error", 500, f"an internal error ({type(exc).__name__}) stopped this request; it is logged.", None, None)


class SvdeditModel:
    """One replica: the engines, the store, and @serve.batch in front of them. Every method returns
    ("ok", value) or ("error", status, message, field, retry_after_s)."""

    def __init__(self, settings: ServeSettings):
        self.service = EditService(settings).open()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svdedit-engines")
        self.decoder = decode_pool(settings)
        self.edit_batch.set_max_batch_size(settings.max_batch)
        self.edit_batch.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    async def _guarded(self, work) -> tuple:
        try:
            return ("ok", await work)
        except Exception as exc:  # noqa: BLE001  (returned as data to the gateway)
            return _as_data(exc)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def edit(self, request: EditRequest) -> tuple:
        async def work():
            job = await asyncio.get_running_loop().run_in_executor(self.decoder, self.service.edit_job, request)
            outcome = await self.edit_batch(job)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return await self._guarded(work())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.025, batch_size_fn=lambda jobs: sum(j.n_images for j in jobs))
    async def edit_batch(self, jobs: list[EditJob]) -> list[EditOutcome | Exception]:
        return await self._run(self.service.run_batch, jobs)

    async def learn(self, request: LearnRequest) -> tuple:
        return await self._guarded(self._run(self.service.learn, request))

    async def generate(self, request: GenerateRequest) -> tuple:
        return await self._guarded(self._run(self.service.generate, request))

    async def adapters(self) -> tuple:
        async def work():
            return self.service.adapters()
        return await self._guarded(work())

    async def store(self, operation: str, *args) -> tuple:
        async def work():
            return getattr(self.service.attributes(), operation)(*args)
        return await self._guarded(work())


@serve.ingress()
class SvdeditGateway(Backend):
    """The FastAPI app in front of the model replicas (built at replica start with this gateway as its backend)."""

    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self.metrics = Metrics(self.queue_images)
        self.decoder = decode_pool(settings)
        self.images_in_flight = 0

    def __serve_build_asgi_app__(self):
        return create_app(self)

    async def _call(self, method: str, *args):
        for attempt in range(RETRIES + 1):
            try:
                result = await getattr(self.model, method).remote(*args)
                break
            except REPLICA_LOST as exc:
                log.warning("a model replica was lost during %s (%s); %s", method, type(exc).__name__,
                            "sending it again" if attempt < RETRIES else "giving up")
        else:
            raise ServiceError(503, f"the model replicas serving this request were lost {RETRIES + 1} times; Ray Serve "
                                    f"is restarting them. Try again in a few seconds.", retry_after_s=5)
        if result[0] == "error":
            _, status, message, field, retry = result
            raise ServiceError(status, message, field, retry)
        return result[1]

    async def edit(self, request: EditRequest) -> EditOutcome:
        images = len(request.seeds) if request.seeds else 1
        self.images_in_flight += images
        try:
            return await self._call("edit", request)
        finally:
            self.images_in_flight -= images

    async def learn(self, request: LearnRequest) -> dict:
        return await self._call("learn", request)

    async def generate(self, request: GenerateRequest) -> bytes:
        return await self._call("generate", request)

    async def attributes(self) -> list[dict]:
        return await self._call("store", "list")

    async def attribute(self, attr_id: str) -> dict:
        return await self._call("store", "describe", attr_id)

    async def delete_attribute(self, attr_id: str) -> None:
        await self._call("store", "delete", attr_id)

    async def adapters(self) -> list[dict]:
        return await self._call("adapters")

    async def ready(self) -> bool:
        try:
            await self._call("store", "ids")
            return True
        except SvdeditError:
            return False

    def queue_images(self) -> int:
        return self.images_in_flight


def application(settings: ServeSettings, replicas: int = 1, cpus_per_replica: float = 1.0,
                gpus_per_replica: float = 0.0, autoscaling: dict | None = None):
    """The Ray Serve application: the gateway over `replicas` model replicas (or Ray's `autoscaling` config, e.g.
    {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 8}), each with these resources."""
    model_options = {"ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                     "max_ongoing_requests": 2 * settings.max_batch, "max_queued_requests": settings.max_queue,
                     "graceful_shutdown_timeout_s": settings.request_timeout_s}
    if autoscaling:
        model_options["autoscaling_config"] = autoscaling
    else:
        model_options["num_replicas"] = replicas
    model = serve.deployment(SvdeditModel, name="svdedit-model").options(**model_options)
    gateway = serve.deployment(SvdeditGateway, name="svdedit-gateway").options(
        ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=4 * settings.max_queue,
        graceful_shutdown_timeout_s=settings.request_timeout_s)
    return gateway.bind(model.bind(settings), settings)
