"""The HTTP API (FastAPI): the routes, the errors they answer with, the metrics, and the web page.

    app = create_app(LocalBackend(ServeSettings(engine_dir)))     # uvicorn (svdedit serve): backend.py
    # or, in each Ray Serve replica (ray_app.py): create_app(replica), the same routes

A route turns its body (models.py) into the runtime's request value (runtime/svdedit/runtime/editing/
request.py), which the backend checks and runs; errors.py answers every error in one shape.

Routes (versioned, OpenAPI schema at /docs):

    POST   /v1/attributes        learn an attribute from a prompt pair -> its id (the store: store.py)
    GET    /v1/attributes        the attributes of this model;  GET/DELETE /v1/attributes/{id}
    GET    /v1/adapters          the LoRA adapters a request may name in `lora` (svdedit serve --lora NAME=FILE)
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
from svdedit.serve.bodies import edit_from_json, parse_json, validated
from svdedit.serve.errors import RequestTimeout, described, error_response
from svdedit.serve.guard import Counted, RequestGuard
from svdedit.serve.models import (
    AdapterInfo,
    AttributeInfo,
    EditBody,
    EditResponse,
    GenerateBody,
    GenerateResponse,
    LearnBody,
    bounds,
)

log = logging.getLogger("svdedit.serve")
STATIC = Path(__file__).parent / "static"


def backend_of(request: Request) -> Backend:
    return request.app.state.backend


# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------
router = APIRouter()


def json_body(model, other_content: dict | None = None) -> dict:
    """The OpenAPI request body of a route that reads its JSON itself (bodies.py), and of any other media types."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()},
                                                          **(other_content or {})}}}


EDIT_BODY = json_body(EditBody, {"multipart/form-data": {"schema": {
    "type": "object", "required": ["prompt", "attributes", "image"], "properties": {
        "prompt": {"type": "string"}, "attributes": {"type": "string", "description": "ids, comma-separated"},
        "strength": {"type": "number"}, "target_prompt": {"type": "string"}, "cache_interval": {"type": "integer"},
        "lora": {"type": "string"}, "image": {"type": "string", "format": "binary"}}}}})


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


@router.post("/v1/attributes", tags=["attributes"], response_model=AttributeInfo, status_code=201,
             openapi_extra=json_body(LearnBody))
async def learn_attribute(request: Request) -> dict:
    """Learn an attribute from one prompt pair; the same request again gives the same id."""
    backend = backend_of(request)
    body = await _json(request, LearnBody)
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


@router.get("/v1/adapters", tags=["adapters"], response_model=list[AdapterInfo])
async def list_adapters(request: Request) -> list[dict]:
    """The LoRA adapters of this deployment (`svdedit serve --lora NAME=FILE`): a request's `lora` names one;
    without it a request runs on the engine as exported."""
    return await backend_of(request).adapters()


@router.post("/v1/edits", tags=["edits"], response_model=EditResponse, openapi_extra=EDIT_BODY)
async def create_edit(request: Request) -> dict:
    """Edit generated images (prompt + seeds) or one image (base64 in JSON, or a multipart upload)."""
    backend = backend_of(request)
    body, image = await _edit_request(request)
    outcome = await _timed(backend, backend.edit(body.request(image)))
    backend.metrics.batch_images.observe(outcome.batch_images)
    seeds = body.seeds or [None]
    return {"edits": [{"image": _b64(edited), "source": _b64(source) if source else None, "seed": seed,
                       "target_prompt": target}
                      for edited, source, seed, target in zip(outcome.edited, outcome.sources or [None] * len(seeds),
                                                              seeds, outcome.target_prompts)],
            "seconds_per_stage": outcome.seconds_per_stage, "batch_images": outcome.batch_images}


@router.post("/v1/generate", tags=["edits"], response_model=GenerateResponse, openapi_extra=json_body(GenerateBody))
async def generate(request: Request) -> dict:
    """Text to image."""
    backend = backend_of(request)
    body = await _json(request, GenerateBody)
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


async def _json(request: Request, model):
    """The request's JSON body as `model` (bodies.py), parsed off the event loop."""
    raw = await request.body()
    return await backend_of(request).offload(parse_json, raw, request.headers.get("content-type", ""), model)


async def _edit_request(request: Request) -> tuple[EditBody, bytes | None]:
    """The edit's fields and its image (None for seeds), from JSON (base64) or from a multipart form (a file)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raw = await request.body()
        return await backend_of(request).offload(edit_from_json, raw, content_type)
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
    return validated(fields, EditBody), data


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


def _bounded_schema(app: FastAPI, limits) -> dict:
    """FastAPI's OpenAPI schema, with this service's bound of each body field (models.bounds) written in."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        by_title = bounds(limits)
        for path in schema["paths"].values():
            for operation in path.values():
                body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
                for name, keywords in by_title.get(body.get("title"), {}).items():
                    _merge(body["properties"][name], keywords)
        app.openapi_schema = schema
    return app.openapi_schema


def _merge(into: dict, keywords: dict) -> None:
    for key, value in keywords.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


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

    app.openapi = lambda: _bounded_schema(app, backend.settings.request_limits())
    limit = backend.settings.limits.max_file_bytes * 4 // 3 + 2**20  # base64's third, and room for the rest
    app.add_middleware(RequestGuard, limit=limit, budget=backend.settings.inflight_body_mb << 20,
                       timeout_s=backend.settings.body_timeout_s)
    app.add_middleware(Counted, metrics=backend.metrics)
    return app
