"""Starting the service: one process on uvicorn, or a Ray Serve deployment (`svdedit serve [--ray]`)."""

from __future__ import annotations

import logging

from svdedit.serve.settings import ServeSettings

log = logging.getLogger("svdedit.serve")


def run_uvicorn(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, manifest=None) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, let the requests in flight finish (up to the request
    timeout), close the engines and exit (uvicorn's graceful shutdown and the app's lifespan). `manifest`: the
    engine dir's, when the caller has read it already."""
    import uvicorn

    from svdedit.serve.app import create_app
    from svdedit.serve.backend import LocalBackend

    uvicorn.Server(uvicorn_config(create_app(LocalBackend(settings, manifest)), settings, host, port)).run()


def uvicorn_config(app, settings: ServeSettings, host: str, port: int, log_level: str = "info"):
    """uvicorn's settings for the service: graceful shutdown within the request timeout, at most
    `settings.max_connections` connections (beyond, 503), idle keep-alive connections closed after 5 s. The bodies'
    own deadline and size are the app's (guard.py): uvicorn has no timeout for a request's headers or body."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
                          limit_concurrency=settings.max_connections, timeout_keep_alive=5, log_level=log_level)


def run_ray(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
            cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, address: str | None = None,
            autoscaling: dict | None = None, blocking: bool = True):
    """Start (or join, with `address`) a Ray cluster and run the deployment behind Ray Serve's HTTP proxy."""
    import ray
    from ray import serve

    from svdedit.serve.ray_app import application

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options=http_options(settings, host, port))
    app = application(settings, replicas, cpus_per_replica, gpus_per_replica, autoscaling)
    return serve.run(app, name="svdedit", route_prefix="/", blocking=blocking)


def http_options(settings: ServeSettings, host: str, port: int) -> dict:
    """Ray Serve's HTTP proxy: where it listens, and how long it holds a request (the body's own deadline is the
    gateway's, guard.py) or an idle keep-alive connection."""
    return {"host": host, "port": port, "request_timeout_s": settings.request_timeout_s + settings.body_timeout_s,
            "keep_alive_timeout_s": 5}
