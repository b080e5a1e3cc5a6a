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

    app = create_app(LocalBackend(settings, manifest))
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
                log_level="info")


def run_ray(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
            cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, address: str | None = None,
            autoscaling: dict | None = None, blocking: bool = True):
    """Start (or join, with `address`) a Ray cluster and run the deployment behind Ray Serve's HTTP proxy."""
    import ray
    from ray import serve

    from svdedit.serve.ray_app import application

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    app = application(settings, replicas, cpus_per_replica, gpus_per_replica, autoscaling)
    return serve.run(app, name="svdedit", route_prefix="/", blocking=blocking)
