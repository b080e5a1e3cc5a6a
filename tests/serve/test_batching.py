"""The one-process server's dynamic batching, back-pressure, timeouts, failure isolation and graceful shutdown."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from benchmarks.serving.serving import free_port, wait_ready
from tests.serve.conftest import local_server
from tests.serve.test_api import PROMPT, SOURCE, TARGET, png

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def fast_attr(shapes_engine, store):
    """red -> blue learned with 20-step trajectories (edits 2.5x cheaper), stored where the servers look."""
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing import Editor, Knobs
    from svdedit.runtime.pipeline import Pipeline
    from svdedit.serve.store import AttributeStore

    with Pipeline(shapes_engine) as pipe:
        attr = learn(Editor(pipe), SOURCE, TARGET, knobs=Knobs(steps=20, iters=100))
        return AttributeStore(store, pipe.manifest.identities()).save(attr), attr


def test_concurrent_edits_share_batches_and_equal_edits_alone(shapes_engine, store, fast_attr):
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.pipeline import Pipeline

    attr_id, attr = fast_attr
    server = local_server(shapes_engine, store, max_batch=8, max_wait_ms=200)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client, cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.post, "/v1/edits", json={"prompt": PROMPT, "attributes": [attr_id],
                                                                    "seeds": [s], "strength": 0.5 + 0.1 * s})
                       for s in range(6)]
            bodies = [f.result().json() for f in futures]
    finally:
        server.stop()
    assert max(b["batch_images"] for b in bodies) >= 3, [b["batch_images"] for b in bodies]
    with Pipeline(shapes_engine) as pipe:
        editor = Editor(pipe)
        for s, body in enumerate(bodies):
            alone = editor.edit_seeds([attr], [PROMPT], [s], strength=0.5 + 0.1 * s)
            assert np.abs(png(body["edits"][0]["image"]).astype(int) - alone.edited[0]).max() <= 2, s


def test_a_full_queue_answers_503_and_a_slow_request_504(shapes_engine, store, fast_attr):
    from svdedit.serve.app import create_app
    from svdedit.serve.backend import LocalBackend
    from svdedit.serve.settings import ServeSettings
    from tests.serve.conftest import ThreadServer

    backend = LocalBackend(ServeSettings.make(shapes_engine, store=store, max_batch=1, max_queue=1, request_timeout_s=1.5))
    release = threading.Event()
    real = backend.service.run_batch
    backend.service.run_batch = lambda jobs: (release.wait(30), real(jobs))[1]  # the engines are busy until released
    server = ThreadServer(create_app(backend), backend.settings).start()
    body = {"prompt": PROMPT, "attributes": [fast_attr[0]], "seeds": [1]}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client, cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v1/edits", json=body)
            time.sleep(0.5)
            busy = client.post("/v1/edits", json=body)
            assert busy.status_code == 503, busy.text
            assert int(busy.headers["Retry-After"]) >= 1 and "queue is full" in busy.json()["error"]["message"]
            slow = first.result()
            assert slow.status_code == 504 and "longer than 1.5 s" in slow.json()["error"]["message"]
            release.set()  # the first edit runs now; once it is done the queue takes the next
            deadline = time.time() + 30
            while (again := client.post("/v1/edits", json=body)).status_code == 503 and time.time() < deadline:
                time.sleep(0.2)
            assert again.status_code == 200, again.text
            assert client.get("/healthz").status_code == 200
    finally:
        release.set()
        server.stop()


def test_a_nan_in_one_image_fails_that_image_only(shapes_engine, store, fast_attr):
    """The poisoned prompt's rows of the UNet's output become NaN; the batch fails, its jobs run alone, and only
    the poisoned one fails."""
    from svdedit.runtime.errors import NonFiniteLatentError
    from svdedit.runtime.editing.request import EditRequest
    from svdedit.serve.service import EditOutcome, EditService
    from svdedit.serve.settings import ServeSettings

    service = EditService(ServeSettings(shapes_engine, store=store)).open()
    try:
        poisoned = "a small red triangle on the right"
        bad_rows = {p.tobytes() for p in service.pipe.encode_prompt([poisoned, "a small blue triangle on the right"])}
        unet = service.pipe.engines["unet"]
        real = unet.infer

        def infer(feeds):
            out = real(feeds)
            rows = [i for i, e in enumerate(feeds["encoder_hidden_states"]) if e.tobytes() in bad_rows]
            out["model_output"][rows] = np.nan
            return out
        unet.infer = infer
        jobs = [service.edit_job(EditRequest((fast_attr[0],), PROMPT, seeds=(1,))),
                service.edit_job(EditRequest((fast_attr[0],), poisoned, seeds=(2,))),
                service.edit_job(EditRequest((fast_attr[0],), PROMPT, seeds=(3,), strengths=(0.5,)))]
        outcomes = service.run_batch(jobs)
    finally:
        service.close()
    assert isinstance(outcomes[0], EditOutcome) and isinstance(outcomes[2], EditOutcome)
    assert isinstance(outcomes[1], NonFiniteLatentError) and "NaN" in str(outcomes[1])


def test_sigterm_finishes_the_request_in_flight_then_exits(shapes_engine, store, fast_attr):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "svdedit.cli", "serve", str(shapes_engine), "--port", str(port),
                             "--store", str(store)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=60)
        with cf.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{url}/v1/edits", json={"prompt": PROMPT, "attributes": [fast_attr[0]],
                                                                         "seeds": [1, 2, 3, 4]}, timeout=60)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 200 and len(response.json()["edits"]) == 4
        # uvicorn re-raises the signal once it has shut down (-15); uvicorn 0.30 (the floor) leaves it to svdedit's
        # own handler, which exits 130 as for any interrupt
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM, 130)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.stdout.read()
    assert "Traceback" not in log and "Waiting for application shutdown" in log, log
