"""Servers for the HTTP tests: uvicorn in a thread of this process, and Ray Serve on a local Ray instance (two
replicas on the CPU); the same tests run against both. Each gets its own attribute store."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.serving.serving import free_port, wait_ready

from tests.conftest import requires_torch

HAS_RAY = importlib.util.find_spec("ray") is not None
#: small limits, so that the tests can reach them cheaply
TEST_LIMITS = dict(max_file_bytes=300_000, max_pixels=4_000_000, max_seeds=4, max_prompt_chars=120)


class ThreadServer:
    """uvicorn serving `app` on a free port of 127.0.0.1, in a thread, configured as `svdedit serve` configures it;
    stop() shuts it down gracefully."""

    def __init__(self, app, settings):
        import uvicorn

        from svdedit.serve.run import uvicorn_config

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn_config(app, settings, "127.0.0.1", self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ThreadServer":
        self.thread.start()
        wait_ready(self.url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def local_server(engine: Path, store: Path, **settings) -> ThreadServer:
    from svdedit.serve.app import create_app
    from svdedit.serve.backend import LocalBackend
    from svdedit.serve.settings import ServeSettings

    backend = LocalBackend(ServeSettings.make(engine, store=store, **settings))
    return ThreadServer(create_app(backend), backend.settings).start()


@pytest.fixture(scope="session")
def ray_cluster():
    if not HAS_RAY:
        pytest.skip("needs Ray Serve (the ray extra)")
    import ray
    from ray import serve

    # every Ray worker can be given a bug on demand (tests/serve/poison.py: only POISON_SEED triggers it)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"worker_process_setup_hook": "tests.serve.poison.install",
                          "env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # one HTTP proxy per Ray instance
    yield port
    serve.shutdown()
    ray.shutdown()


def ray_server(port: int, engine: Path, store: Path, replicas: int = 2, **settings) -> str:
    """Deploy the service on the local Ray instance (whose proxy listens on `port`); its base URL."""
    from svdedit.serve.run import run_ray
    from svdedit.serve.settings import ServeSettings

    run_ray(ServeSettings.make(engine, store=store, **settings), port=port, replicas=replicas, cpus_per_replica=0.5,
            blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return url


@pytest.hookimpl(tryfirst=True)  # before the `-m 'not slow'` selection
def pytest_collection_modifyitems(config, items):
    """Every test on Ray Serve runs under `make test-slow`, not `make test`: starting Ray and deploying the replicas
    cost ~90 s of CI's 20 minutes, and the service code behind Ray Serve's gateway (ray_app.py) is the EditService
    that every uvicorn test runs. Run `make test-slow` after a change to ray_app.py or the routes."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)


@dataclass
class Running:
    url: str      # the server's base URL
    store: Path   # its attribute store folder


@pytest.fixture(scope="module", params=["uvicorn", pytest.param("ray", marks=pytest.mark.ray)])
def server(request, shapes_engine, tmp_path_factory):
    """A running server of the embedded model (uvicorn, or Ray Serve with two model replicas)."""
    store = tmp_path_factory.mktemp(f"store-{request.param}")
    if request.param == "uvicorn":
        s = local_server(shapes_engine, store, **TEST_LIMITS)
        yield Running(s.url, store)
        s.stop()
    else:
        yield Running(ray_server(request.getfixturevalue("ray_cluster"), shapes_engine, store, **TEST_LIMITS), store)
        from ray import serve

        serve.delete("svdedit")


pytestmark = requires_torch
