"""The service fuzzed from its own OpenAPI schema (schemathesis, bounded and derandomized), with requests that fit
the schema and requests that break it on purpose (negative mode: out of the documented bounds, wrong types, missing
fields). The properties, for `svdedit serve` in its own process:
- no request gets a 5xx other than the documented back-pressure answer, 503 with Retry-After;
- every error is in the one error shape, with its status and a message;
- /healthz, polled every 50 ms from another process, answers within 100 ms throughout;
- the server's peak RSS stays under 0.5 GiB (0.18 GiB measured)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from benchmarks.serving.serve_load import peak_rss_gib
from benchmarks.serving.serving import HealthProbe, free_port, start_uvicorn, wait_ready

pytestmark = pytest.mark.filterwarnings("ignore")
RSS_BOUND_GIB = 0.5
HEALTH_BOUND_MS = 100


@pytest.fixture(scope="module")
def fuzzed_server(shapes_engine, tmp_path_factory):
    # small limits, so that generated requests stay cheap (a generated learn or generate request is refused with a
    # 422 above them rather than running for minutes)
    port = free_port()
    proc = start_uvicorn(shapes_engine, tmp_path_factory.mktemp("store"), port, "--max-steps", "12",
                         "--max-learn-iters", "40", "--max-seeds", "2", "--max-file-bytes", "100000")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _operations(url: str) -> list:
    return [result.ok() for result in schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_generated_request_gets_a_server_error(fuzzed_server, mode):
    """Each operation of the schema, 50 generated requests each (schemathesis' strategies driven by hypothesis
    directly: its pytest plugin does not load under pytest 9)."""
    url, proc = fuzzed_server
    operations = _operations(url)
    assert {op.label for op in operations} >= {"POST /v1/edits", "POST /v1/attributes", "POST /v1/generate",
                                               "GET /v1/attributes/{attr_id}", "DELETE /v1/attributes/{attr_id}"}
    seen: dict[str, set] = {}
    with HealthProbe(url) as health:
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and "requestBody" not in operation.definition.raw:
                continue  # nothing to break but the path

            @settings(max_examples=50, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=url, timeout=120)
                seen.setdefault(operation.label, set()).add(response.status_code)
                if response.status_code >= 500:
                    assert response.status_code == 503 and "Retry-After" in response.headers, \
                        (operation.label, response.status_code, response.text[:300])
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert error["status"] == response.status_code and error["message"], response.text[:300]
                    assert "object at 0x" not in error["message"], error
            check()
    assert seen and all(codes for codes in seen.values())
    if mode is GenerationMode.NEGATIVE:  # broken requests are refused, never run
        assert all(code >= 400 for codes in seen.values() for code in codes), seen
    assert health.seconds and health.worst_ms() < HEALTH_BOUND_MS, \
        f"/healthz: {len(health.seconds)} answers, p99 {health.p99_ms()} ms, the slowest {health.worst_ms()} ms"
    assert peak_rss_gib(proc.pid) < RSS_BOUND_GIB, f"peak RSS {peak_rss_gib(proc.pid):.2f} GiB"
