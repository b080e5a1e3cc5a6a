"""Reliability under load, on loopback: 32 concurrent clients mixing valid edits, bad requests and oversized
uploads (benchmarks/serving/serve_load.py, with fewer requests than the benchmark). Every request gets its own correct
answer; with Ray Serve, one model replica is killed in the middle and every valid edit still succeeds."""

from __future__ import annotations

import pytest

from benchmarks.serving.serve_load import load_test

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.slow  # 34 s; the service's batching and errors are in make test (test_api, test_batching, test_hostile)
def test_32_clients_on_uvicorn(shapes_engine):
    r = load_test(shapes_engine, clients=32, n=64, deadline=300, tolerance=2)
    assert r["violations"] == [] and r["answers_per_request"] == [1], r
    assert r["status_by_kind"]["valid"] == {"200": r["valid_edits_ok"]} and r["valid_edits_ok"] > 20
    assert r["status_by_kind"]["oversized_upload"] == {"413": sum(r["status_by_kind"]["oversized_upload"].values())}
    assert r["server_peak_rss_gib"] < 1.5 and r["store_intact"]


@pytest.mark.ray
@pytest.mark.slow  # ~1 min; Ray's error paths stay in make test (test_api on Ray, the poisoned batch on Ray)
def test_32_clients_on_ray_with_a_replica_killed(shapes_engine, ray_cluster):
    r = load_test(shapes_engine, clients=32, n=64, deadline=300, tolerance=2, ray_replicas=2, kill=True,
                  ray_port=ray_cluster)
    assert r["killed_replica"] and r["healthy_after"] and r["store_intact"], r
    assert r["violations"] == [] and r["answers_per_request"] == [1], r
