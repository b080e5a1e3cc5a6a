"""The HTTP API (FastAPI): the routes, the errors they answer with, the metrics, and the web page.

    app = create_app(LocalBackend(ServeSettings(engine_dir)))     # uvicorn (svdedit serve): backend.py
    # or, in each Ray Serve replica (ray_app.py): create_app(replica), the same routes

A route turns its body (models.py) into the runtime's request value (runtime/svdedit/runtime/editing/
request.py), which the backend checks and runs; errors.py answers every error in one shape.

Routes (versioned, OpenAPI schema at /docs):

    POST   /v1/attributes        learn an attribute from a prompt pair -> its id (the store: store.py)
    GET    /v1/attributes        the attributes of this model;  GET/DELETE /v1/attributes/{id}
    POST   /v1/edits             edit seeds or an image (JSON with a base64 image, or a multipart upload)
    POST   /v1/generate          text to image
    GET    /healthz  /readyz  /metrics (Prometheus)          GET /  the web page (static/)

Every error is JSON, {"error": {"status", "field", "message"}}: a user mistake is a 4xx that names the
field and the fix (runtime errors map by type: InvalidRequestError 422, ImageTooLargeError 413,
NotFoundError 404, AttributeFileError 409, NonFiniteLatentError 422, BusyError 503 with Retry-After,
a request timeout 504, any other SvdeditError 400; errors.py); a bug is a 500 without a traceback in the
body (it goes to the log). The routes know nothing of batching: they hand each edit to the backend, which
batches it (batching.py or @serve.batch).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from svdedit.runtime.errors import ImageTooLargeError, InvalidRequestError, SvdeditError
from svdedit.serve.backend import Backend, LocalBackend
from svdedit.serve.errors import RequestTimeout, described, error_response
from svdedit.serve.models import (
    AttributeInfo,
    EditBody,
    EditResponse,
    GenerateBody,
    GenerateResponse,
    LearnBody,
)

log = logging.getLogger("svdedit.serve")
STATIC = Path(__file__).parent / "static"


def backend_of(request: Request) -> Backend:
    return request.app.state.backend


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------
router = APIRouter()
EDIT_BODY = {"requestBody": {"content": {
    "application/json": {"schema": EditBody.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["prompt", "attributes", "image"], "properties": {
        "prompt": {"type": "string"}, "attributes": {"type": "string", "description": "ids, comma-separated"},
        "strength": {"type": "number"}, "target_prompt": {"type": "string"}, "cache_interval": {"type": "integer"},
        "image": {"type": "string", "format": "binary"}}}}}}}


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
async def readyz(request: Request) -> JSONResponse:
    """The engines are open: the service can edit."""
    ready = await backend_of(request).ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/metrics", tags=["operations"])
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests by route and status, latency, queue depth, batch sizes."""
    body, content_type = backend_of(request).metrics.exposition()
    return Response(body, media_type=content_type)


@router.post("/v1/attributes", tags=["attributes"], response_model=AttributeInfo, status_code=201)
async def learn_attribute(request: Request, body: LearnBody) -> dict:
    """Learn an attribute from one prompt pair; the same request again gives the same id."""
    backend = backend_of(request)
    return await _timed(backend, backend.learn(body.request()))


@router.get("/v1/attributes", tags=["attributes"], response_model=list[AttributeInfo])
async def list_attributes(request: Request) -> list[dict]:
    return await backend_of(request).attributes()


@router.get("/v1/attributes/{attr_id}", tags=["attributes"], response_model=AttributeInfo)
async def get_attribute(request: Request, attr_id: str) -> dict:
    return await backend_of(request).attribute(attr_id)


@router.delete("/v1/attributes/{attr_id}", tags=["attributes"], status_code=204)
async def delete_attribute(request: Request, attr_id: str) -> Response:
    await backend_of(request).delete_attribute(attr_id)
    return Response(status_code=204)


@router.post("/v1/edits", tags=["edits"], response_model=EditResponse, openapi_extra=EDIT_BODY)
async def create_edit(request: Request) -> dict:
    """Edit generated images (prompt + seeds) or one image (base64 in JSON, or a multipart upload)."""
    backend = backend_of(request)
    body = await _edit_request(request)
    image = _base64_image(body.image) if body.image is not None else None
    outcome = await _timed(backend, backend.edit(body.request(image)))
    backend.metrics.batch_images.observe(outcome.batch_images)
    seeds = body.seeds or [None]
    return {"edits": [{"image": _b64(edited), "source": _b64(source) if source else None, "seed": seed,
                       "target_prompt": target}
                      for edited, source, seed, target in zip(outcome.edited, outcome.sources or [None] * len(seeds),
                                                              seeds, outcome.target_prompts)],
            "seconds_per_stage": outcome.seconds_per_stage, "batch_images": outcome.batch_images}


@router.post("/v1/generate", tags=["edits"], response_model=GenerateResponse)
async def generate(request: Request, body: GenerateBody) -> dict:
    backend = backend_of(request)
    png = await _timed(backend, backend.generate(body.request()))
    return {"image": _b64(png)}


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def _timed(backend: Backend, work):
    try:
        return await asyncio.wait_for(work, backend.settings.request_timeout_s)
    except TimeoutError:
        raise RequestTimeout(f"the request took longer than {backend.settings.request_timeout_s:g} s and was "
                             f"given up; the service is overloaded or the request too large.") from None


async def _edit_request(request: Request) -> EditBody:
    """The edit's fields from JSON or from a multipart form (whose image file is read into base64)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        limit = backend_of(request).settings.limits.max_file_bytes
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("image", "a multipart edit needs an `image` file field (and `prompt`, "
                                               "`attributes`).")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLargeError(f"the uploaded image is over {limit} bytes, the limit.")
        fields = {k: v for k, v in form.items() if k != "image"}
        fields["attributes"] = [a.strip() for a in str(fields.get("attributes", "")).split(",") if a.strip()]
        fields["image"] = base64.b64encode(data).decode()
        raw = fields
    else:
        try:
            raw = await request.json()
        except ValueError:
            raise InvalidRequestError("body", "the body is not JSON; send application/json (or a multipart form with "
                                              "an image file).") from None
    try:
        return EditBody.model_validate(raw)
    except Exception as exc:  # pydantic's ValidationError
        raise RequestValidationError(exc.errors()) from None


def _base64_image(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("image", "`image` is not valid base64; send the file's bytes base64-encoded "
                                           "(or upload it as multipart/form-data).") from None


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


# --------------------------------------------------------------------------------------------------
# Error handlers, request limits, metrics
# --------------------------------------------------------------------------------------------------
async def _svdedit_error(request: Request, exc: SvdeditError) -> JSONResponse:
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(max(1, round(retry)))} if retry else None
    return error_response(*described(exc), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = where[0] if where else None
    return error_response(422, f"{'.'.join(where) or 'the body'}: {first.get('msg', 'is invalid')}. See /docs for "
                               f"the request's schema.", field)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (an unknown route 404, a wrong method 405, a multipart form with more files or fields
    than allowed 400) in the same shape as every other error, not FastAPI's {"detail": ...}."""
    return error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"an internal error ({type(exc).__name__}) stopped this request; it is logged. "
                               f"Other requests are not affected.")


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, from Content-Length or while they stream in."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyLimit.TooLarge
            return message
        try:
            await self.app(scope, limited, send)
        except BodyLimit.TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = error_response(413, f"the request body is over {self.limit} bytes, this service's limit "
                                       f"(--max-file-bytes, plus base64's third).")
        await response(scope, receive, send)


def create_app(backend: Backend) -> FastAPI:
    """The ASGI app over `backend`: a LocalBackend (opened at startup, closed at shutdown: uvicorn), or a Ray
    Serve replica (ray_app.py), which builds its app with itself as the backend."""
    from svdedit.runtime import __version__

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(backend, LocalBackend):
            await backend.start()
        yield
        if isinstance(backend, LocalBackend):
            await backend.close()

    app = FastAPI(title="svdedit", version=__version__, lifespan=lifespan,
                  description="Attribute editing of Stable Diffusion images through the SVD of their latents "
                              "(arXiv:2502.02225): learn an attribute from one prompt pair, apply it to generated or "
                              "real images. Concurrent edits are batched.")
    app.state.backend = backend
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(SvdeditError, _svdedit_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        backend.metrics.observe(request.method, route, response.status_code, time.perf_counter() - t0)
        return response

    limit = backend.settings.limits.max_file_bytes * 4 // 3 + 2**20  # base64's third, and room for the rest
    app.add_middleware(BodyLimit, limit=limit)
    return app
