"""What every HTTP request passes before the routes see it (pure ASGI middleware, the same on uvicorn and in Ray
Serve's gateway): bounds on its body, and its count in the metrics.

    app = Counted(RequestGuard(app, limit=body_limit, budget=bytes_in_flight, timeout_s=body_timeout_s), metrics)

`RequestGuard` holds a request's body to three bounds while it streams in, never after:
- **size**: over `limit` bytes (declared by Content-Length, or counted as a chunked body arrives): 413;
- **time**: a body that has not fully arrived `timeout_s` after the request began (a slow or stalled client
  holding a connection open): 408, and the connection is closed;
- **memory**: the bodies of all requests in flight together over `budget` bytes: 503 with Retry-After, so that
  many large uploads at once cannot take the process's memory (each body is held until its request is answered).
The refusal is sent at once, in the service's error shape; the route that was reading the body is told the
client left, and whatever it answers after that is dropped. Pure ASGI rather than Starlette's BaseHTTPMiddleware,
whose task groups turned an error raised while a body streams into a 500 (an ExceptionGroup).
"""

from __future__ import annotations

import asyncio
import time

from svdedit.serve.errors import error_response


class RequestGuard:
    def __init__(self, app, limit: int, budget: int, timeout_s: float):
        self.app = app
        self.limit, self.budget, self.timeout_s = limit, budget, timeout_s
        self.in_flight = 0  # body bytes held by the requests being served

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = _Guarded(self, scope, receive, send)
        declared = request.declared_length()
        if declared is not None and declared > self.limit:
            return await request.refuse(413, self.too_large())
        try:
            await self.app(scope, request.receive, request.send)
        except Exception:
            if not request.refused:  # a real error of the app: the error middleware outside answers it
                raise
        finally:
            self.in_flight -= request.held

    def too_large(self) -> str:
        return (f"the request body is over {self.limit} bytes, this service's limit (--max-file-bytes, plus base64's "
                f"third). Send a smaller image.")


class _Guarded:
    """One request's receive and send, as RequestGuard sees them."""

    def __init__(self, guard: RequestGuard, scope, receive, send):
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.deadline = time.monotonic() + guard.timeout_s
        self.received = self.held = 0
        self.body_done = False
        self.started = self.refused = False

    def declared_length(self) -> int | None:
        length = dict(self.scope["headers"]).get(b"content-length")
        return int(length) if length is not None and length.isdigit() else None

    async def receive(self):
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:  # after the body, receive() waits for the client to leave: no deadline for that
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            await self.refuse(408, f"the request body did not arrive within {self.guard.timeout_s:g} s "
                                   f"(--body-timeout-s); send it at once, or over a faster connection.")
            return {"type": "http.disconnect"}
        if message["type"] != "http.request":
            return message
        chunk = len(message.get("body", b""))
        self.received += chunk
        self.body_done = not message.get("more_body", False)
        if self.received > self.guard.limit:
            await self.refuse(413, self.guard.too_large())
            return {"type": "http.disconnect"}
        if self.guard.in_flight + chunk > self.guard.budget:
            await self.refuse(503, f"the service holds {self.guard.budget >> 20} MiB of request bodies already "
                                   f"(--inflight-body-mb); try again shortly.", retry_after_s=2)
            return {"type": "http.disconnect"}
        self.guard.in_flight += chunk
        self.held += chunk
        return message

    async def send(self, message):
        if self.refused:
            return  # the route's answer after the guard's own: dropped
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def refuse(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        self.refused = True
        if self.started:  # too late for an answer of our own: the connection just ends
            return
        headers = {"Retry-After": str(int(retry_after_s))} if retry_after_s else {}
        if status in (408, 413):
            headers["Connection"] = "close"  # the rest of the body is not read
        response = error_response(status, message, None, headers)
        await response(self.scope, self._receive, self._send)


class Counted:
    """Each request's method, route, status and latency into the metrics (`svdedit_requests`)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, counted)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status[0], time.perf_counter() - t0)
