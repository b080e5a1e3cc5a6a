"""LoRA adapters in the service (`svdedit serve --lora NAME=FILE`): listed at /v1/adapters, chosen per request by
`lora`, each request's result the same as the command line's with that adapter, unknown names a 4xx, attributes
bound to the adapter they were learned with, and adapters that cannot be served refused before the server starts.

The engine is tests/conftest.py's lora_engine (the tiny SD 1 fixture exported --lora-ready, adapter A fused); the
service swaps in adapter B, and B at scale 0 (the engine's identity: its attributes are the base's)."""

from __future__ import annotations

import base64

import httpx
import pytest

from svdedit.runtime.engines.lora import read_adapter
from tests.cli import assert_clear_error, run_cli
from tests.serve.conftest import TEST_LIMITS, local_server

SOURCE, TARGET = "a red cat", "a blue cat"
GENERATE = {"prompt": "a red cat", "seed": 1, "steps": 4, "guidance": 3.0}
LEARN = {"source": SOURCE, "target": TARGET, "knobs": {"steps": 10, "iters": 5}}


@pytest.fixture(scope="module")
def client(lora_engine, lora_adapters, tmp_path_factory):
    server = local_server(lora_engine, tmp_path_factory.mktemp("store-lora"),
                          lora=(("b", str(lora_adapters["B"]), 1.0), ("off", str(lora_adapters["B-kohya"]), 0.0)),
                          **TEST_LIMITS)
    with httpx.Client(base_url=server.url, timeout=180) as c:
        yield c
    server.stop()


def test_adapters_are_listed_and_each_request_runs_on_the_one_it_names(client, lora_engine, lora_adapters):
    from svdedit.runtime.images import encode_png, to_uint8
    from svdedit.runtime.pipeline import Pipeline

    listed = client.get("/v1/adapters").json()
    b = read_adapter(lora_adapters["B"])
    assert [a["name"] for a in listed] == ["b", "off"]
    assert listed[0] == {"name": "b", "file": "B.safetensors", "sha256": b.sha256, "scale": 1.0,
                         "layers": len(b.layers), "components": ["unet"]}
    images = {}
    for name in (None, "b", "off"):
        r = client.post("/v1/generate", json={**GENERATE, **({"lora": name} if name else {})})
        assert r.status_code == 200, r.text
        images[name] = base64.b64decode(r.json()["image"])
    assert images["b"] != images[None]  # the adapter changes the image ...
    assert images["off"] == images[None]  # ... and at scale 0 it is the engine as exported
    with Pipeline(lora_engine, "cpu", lora=[b]) as pipe:  # what `svdedit generate --lora B` computes
        latent = pipe.generate(GENERATE["prompt"], seed=1, steps=4, guidance=3.0)
        assert encode_png(to_uint8(pipe.decode(latent))[0]) == images["b"]


@pytest.mark.parametrize("name, phrase", [("nope", "no adapter 'nope'; its adapters are 'b', 'off'"),
                                          ("bad name!", "is not an adapter's name"), (7, "should be a valid string")])
def test_an_unknown_or_malformed_adapter_name_is_a_422_naming_lora(client, name, phrase):
    for route, body in (("/v1/generate", GENERATE), ("/v1/attributes", LEARN),
                        ("/v1/edits", {"attributes": ["0123456789abcdef"], "prompt": SOURCE, "seeds": [0]})):
        r = client.post(route, json={**body, "lora": name})
        assert r.status_code == 422, (route, r.text)
        error = r.json()["error"]
        assert error["field"] == "lora" and phrase in error["message"], (route, error)


def test_an_attribute_is_edited_with_the_adapter_it_was_learned_with(client):
    learned = client.post("/v1/attributes", json={**LEARN, "lora": "b"})
    assert learned.status_code == 201, learned.text
    attr = learned.json()
    assert attr["lora"] == "b"
    base = client.post("/v1/attributes", json=LEARN).json()
    assert base["lora"] is None and base["id"] != attr["id"]  # another engine identity, another attribute
    assert {a["id"]: a["lora"] for a in client.get("/v1/attributes").json()} == {attr["id"]: "b", base["id"]: None}
    edit = {"attributes": [attr["id"]], "prompt": SOURCE, "seeds": [0], "strength": 1.0}
    ok = client.post("/v1/edits", json={**edit, "lora": "b"})
    assert ok.status_code == 200, ok.text
    for lora in (None, "off"):
        r = client.post("/v1/edits", json={**edit, **({"lora": lora} if lora else {})})
        assert r.status_code == 409, r.text
        assert 'learned with adapter \'b\': send "lora": "b"' in r.json()["error"]["message"], r.text
    r = client.post("/v1/edits", json={**edit, "attributes": [base["id"]], "lora": "b"})
    assert r.status_code == 409 and 'without an adapter: leave "lora" out' in r.json()["error"]["message"], r.text
    # scale 0 is the engine as exported: the base's attributes edit there too
    assert client.post("/v1/edits", json={**edit, "attributes": [base["id"]], "lora": "off"}).status_code == 200


def test_jobs_of_different_adapters_never_share_a_batch():
    from types import SimpleNamespace

    from svdedit.runtime.editing.knobs import Knobs
    from svdedit.serve.service import EditJob

    recipe = SimpleNamespace(attributes=[SimpleNamespace(knobs=Knobs())])  # batch_key reads the first one's knobs
    keys = {EditJob(recipe, "p", "q", seeds=[0], lora=lora).batch_key() for lora in (None, "b", "c")}
    assert len(keys) == 3


def test_adapters_the_engine_cannot_serve_are_refused_before_it_starts(lora_engine, lora_adapters, engine_dirs,
                                                                        tmp_path):
    assert_clear_error(run_cli("serve", lora_engine, "--lora", lora_adapters["B"]), "serve", "give --lora NAME=FILE")
    assert_clear_error(run_cli("serve", lora_engine, "--lora", f"b={tmp_path / 'absent.safetensors'}"), "serve",
                       "does not exist")
    assert_clear_error(run_cli("serve", lora_engine, "--lora", f"b={lora_adapters['B']}", "--lora",
                               f"b={lora_adapters['B-kohya']}"), "serve", "more than once")
    assert_clear_error(run_cli("serve", lora_engine, "--lora", f"a b={lora_adapters['B']}"), "serve",
                       "an adapter's name is 1 to 64 letters")
    assert_clear_error(run_cli("serve", engine_dirs["sd1"], "--lora", f"b={lora_adapters['B']}"), "serve",
                       "--lora-ready")


@pytest.mark.slow  # a Ray instance (~30 s): the same EditService as above behind Ray Serve's gateway
@pytest.mark.ray
def test_ray_serve_lists_and_runs_the_adapters(ray_cluster, lora_engine, lora_adapters, client, tmp_path):
    from ray import serve

    from tests.serve.conftest import ray_server

    url = ray_server(ray_cluster, lora_engine, tmp_path / "store", replicas=1,
                     lora=(("b", str(lora_adapters["B"]), 1.0),), **TEST_LIMITS)
    try:
        with httpx.Client(base_url=url, timeout=180) as ray_client:
            assert [a["name"] for a in ray_client.get("/v1/adapters").json()] == ["b"]
            r = ray_client.post("/v1/generate", json={**GENERATE, "lora": "b"})
            assert r.status_code == 200, r.text
            assert r.json()["image"] == client.post("/v1/generate", json={**GENERATE, "lora": "b"}).json()["image"]
            r = ray_client.post("/v1/generate", json={**GENERATE, "lora": "off"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "lora", r.text
    finally:
        serve.delete("svdedit")
