"""`svdedit serve --provider openvino`: the service on OpenVINO, and a precision it cannot run refused at start."""

from __future__ import annotations

import httpx
import pytest

from tests.cli import assert_clear_error, run_cli
from tests.conftest import requires_torch
from tests.serve.conftest import local_server

pytest.importorskip("openvino", reason="needs the openvino extra (svdedit[openvino])")
pytestmark = requires_torch


def test_the_service_generates_on_openvino(shapes_engine, tmp_path):
    from models.shapes_data import read_attributes
    from tests.serve.test_api import png

    server = local_server(shapes_engine, tmp_path / "store", provider="openvino", precision="fp32")
    try:
        r = httpx.post(f"{server.url}/v1/generate", json={"prompt": "a large green triangle on the right", "seed": 2,
                                                          "steps": 20}, timeout=120)
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    assert read_attributes(png(r.json()["image"]))["colour"] == "green"


def test_a_precision_the_provider_cannot_run_stops_the_service_before_it_starts(shapes_engine):
    assert_clear_error(run_cli("serve", shapes_engine, "--precision", "bf16", "--port", "1", timeout=120), "serve",
                       "bf16 needs the provider openvino")
