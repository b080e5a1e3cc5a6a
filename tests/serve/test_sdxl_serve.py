"""`svdedit serve` on an SDXL engine (the tiny fixture, uvicorn): learn, edit seeds and an uploaded image, generate."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from tests.conftest import requires_torch
from tests.serve.conftest import TEST_LIMITS, local_server

pytestmark = requires_torch


def test_the_service_learns_and_edits_on_sdxl(xl_engine, tmp_path):
    server = local_server(xl_engine, tmp_path / "store", **TEST_LIMITS)
    try:
        with httpx.Client(base_url=server.url, timeout=180) as client:
            r = client.post("/v1/attributes", json={"source": "a large red circle in the middle",
                                                    "target": "a large blue circle in the middle",
                                                    "knobs": {"iters": 30, "steps": 10}})
            assert r.status_code == 201, r.text
            attr = r.json()["id"]
            r = client.post("/v1/edits", json={"prompt": "a small red square on the left", "attributes": [attr],
                                               "seeds": [0, 1]})
            assert r.status_code == 200, r.text
            assert [e["seed"] for e in r.json()["edits"]] == [0, 1]
            picture = io.BytesIO()
            Image.new("RGB", (96, 64), (200, 30, 30)).save(picture, format="PNG")  # not square: fit() crops it
            r = client.post("/v1/edits", data={"prompt": "a large red circle in the middle", "attributes": attr},
                            files={"image": ("wide.png", picture.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
            r = client.post("/v1/generate", json={"prompt": "a red circle", "steps": 5})
            assert r.status_code == 200 and r.json()["image"].startswith("iVBORw0KGgo"), r.text[:200]  # a PNG
    finally:
        server.stop()
