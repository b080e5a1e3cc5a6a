"""Load on the service: many concurrent clients mixing valid edits, bad requests and oversized uploads.

    python -m benchmarks.serving.serve_load [--clients 32] [--requests 96] [--ray] [--kill-replica]
    python -m benchmarks.serving.serve_load --hostile [--requests 200]     # clean vs 1 in 10 malformed

Starts the server of the embedded model (`svdedit serve` in its own process, or Ray Serve with two
replicas on a local Ray instance), learns red -> blue with 20-step trajectories, then sends --requests
requests from --clients threads on loopback, bounded by --deadline seconds. Every request must get
its own answer: a valid edit its images (the seed and strength it asked for, and images equal to the
same edit done alone through the Python API, within --tolerance uint8 levels), a bad request the 4xx it
deserves with the field named, an oversized upload 413; 503 (back-pressure) is allowed for any. With
--kill-replica (Ray) one replica is killed in the middle: requests in flight on it must fail with a
clear error (or succeed, retried), the others succeed, and the attribute store is unchanged.
Reports counts by kind and status, latencies, the server's peak RSS, /healthz's latency (polled every
50 ms from a process of its own), and every violation, in benchmarks/results/serve_load_<server>.json.
With --hostile: the same load twice, valid edits only and then one request in ten malformed (MALFORMED: nested
JSON, huge numbers, chunked bodies over the limit, bombs, wrong media types...), in serve_hostile.json.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.machine import status_gib

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a small red square on the left"
#: the mix of requests, drawn uniformly from this list: 7 in 12 valid
KINDS = ["valid"] * 7 + ["unknown_attribute", "bad_prompt", "too_many_seeds", "oversized_upload", "oversized_upload"]
#: --hostile: the clean run (valid edits only), then 1 in 10 malformed (a variant of MALFORMED in turn)
CLEAN = ["valid"]
HOSTILE = ["valid"] * 9 + ["malformed"]


def _bomb() -> str:
    """A 400-megapixel PNG of a few kilobytes, base64."""
    from PIL import Image

    if not hasattr(_bomb, "text"):
        buffer = io.BytesIO()
        Image.new("1", (20000, 20000)).save(buffer, format="PNG")
        _bomb.text = base64.b64encode(buffer.getvalue()).decode()
    return _bomb.text


def _raw(text: str, content_type: str = "application/json") -> dict:
    return {"content": text.encode(), "headers": {"content-type": content_type}}


#: what a hostile client sends: name -> (method, path, request arguments given the attribute id), status, field
MALFORMED = {
    "repeated_attribute": (lambda a: ("post", "/v1/edits", {"json": {"prompt": PROMPT, "attributes": [a] * 2000,
                                                                     "seeds": [1]}}), 422, "attributes"),
    "negative_seed": (lambda a: ("post", "/v1/edits", {"json": {"prompt": PROMPT, "attributes": [a], "seeds": [-1]}}),
                      422, "seeds"),
    "huge_integer": (lambda a: ("post", "/v1/edits", _raw('{"prompt": "%s", "attributes": ["%s"], "seeds": [%s]}'
                                                          % (PROMPT, a, "9" * 5000))), 422, "seeds"),
    "deep_json": (lambda a: ("post", "/v1/edits", _raw("[" * 50_000 + "]" * 50_000)), 422, "body"),
    "text_plain": (lambda a: ("post", "/v1/edits", _raw(json.dumps({"prompt": PROMPT, "attributes": [a], "seeds": [1]}),
                                                        "text/plain")), 415, "content-type"),
    "chunked_over_limit": (lambda a: ("post", "/v1/edits", {"content": iter([b"x" * 2**16] * 64),
                                                            "headers": {"content-type": "application/json"}}),
                           413, None),
    "bomb": (lambda a: ("post", "/v1/edits", {"json": {"prompt": PROMPT, "attributes": [a], "image": _bomb()}}),
             413, None),
    "learn_wrong_type": (lambda a: ("post", "/v1/attributes", {"json": {"source": "a red circle", "target": "a blue circle",
                                                                        "knobs": {"steps": 2.5}}}), 422, "knobs.steps"),
    "huge_prompt": (lambda a: ("post", "/v1/edits", {"json": {"prompt": "red " * 25_000, "attributes": [a],
                                                              "seeds": [1]}}), 422, "prompt"),
    "not_an_image": (lambda a: ("post", "/v1/edits", {"data": {"prompt": PROMPT, "attributes": a},
                                                      "files": {"image": ("a.png", b"GIF89a, not really", "image/png")}}),
                     400, None),
}


@dataclass
class Request:
    kind: str                 # valid | unknown_attribute | bad_prompt | too_many_seeds | oversized_upload | malformed
    index: int
    variant: str = ""         # malformed: which of MALFORMED
    seed: int = 0
    strength: float = 1.0
    expected_status: int = 200
    expected_field: str | None = None
    status: int | None = None
    body: dict = field(default_factory=dict)
    seconds: float = 0.0
    answers: int = 0          # how many responses this request got (must be exactly 1)


def plan(n: int, seed: int = 0, kinds: list[str] = KINDS) -> list[Request]:
    """n requests drawn from `kinds`: valid edits (each its own seed and strength), and the rest bad in their ways
    (KINDS: 7 in 12 valid; HOSTILE: 9 in 10 valid, the others malformed, each variant in turn)."""
    rng = np.random.default_rng(seed)
    out = []
    variants = iter(sorted(MALFORMED) * n)
    for i, kind in enumerate(rng.choice(kinds, size=n)):
        r = Request(str(kind), i, seed=1000 + i, strength=round(float(rng.uniform(0.3, 1.2)), 3))
        if r.kind == "malformed":
            r.variant = next(variants)
            _, r.expected_status, r.expected_field = MALFORMED[r.variant]
        else:
            r.expected_status, r.expected_field = {"valid": (200, None), "unknown_attribute": (404, None),
                                                   "bad_prompt": (422, "prompt"), "too_many_seeds": (422, "seeds"),
                                                   "oversized_upload": (413, None)}[r.kind]
        out.append(r)
    return out


def send(client, r: Request, attr_id: str, max_upload: int) -> None:
    import httpx

    body = {"prompt": PROMPT, "attributes": [attr_id], "seeds": [r.seed], "strength": r.strength}
    t0 = time.perf_counter()
    try:
        if r.kind == "unknown_attribute":
            resp = client.post("/v1/edits", json={**body, "attributes": ["0123456789abcdef"]})
        elif r.kind == "bad_prompt":
            resp = client.post("/v1/edits", json={**body, "prompt": "a small green square"})
        elif r.kind == "too_many_seeds":
            resp = client.post("/v1/edits", json={**body, "seeds": list(range(100))})
        elif r.kind == "oversized_upload":
            resp = client.post("/v1/edits", data={"prompt": PROMPT, "attributes": attr_id},
                               files={"image": ("big.png", os.urandom(max_upload + 1000), "image/png")})
        elif r.kind == "malformed":
            method, path, kwargs = MALFORMED[r.variant][0](attr_id)
            resp = getattr(client, method)(path, **kwargs)
        else:
            resp = client.post("/v1/edits", json=body)
        r.status = resp.status_code
        try:
            r.body = resp.json()
        except ValueError:
            r.body = {"text": resp.text[:300]}
    except httpx.HTTPError as exc:
        r.status, r.body = -1, {"client_error": f"{type(exc).__name__}: {exc}"}
    r.answers += 1
    r.seconds = time.perf_counter() - t0


def run_load(url: str, attr_id: str, requests: list[Request], clients: int, deadline_s: float,
             max_upload: int, during=None) -> float:
    """Send every request from `clients` threads; `during(progress)` runs alongside (e.g. kills a replica)."""
    import httpx

    done = [0]
    with httpx.Client(base_url=url, timeout=deadline_s) as client, cf.ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        side = threading.Thread(target=during, args=(done,), daemon=True) if during else None
        if side:
            side.start()
        futures = [pool.submit(send, client, r, attr_id, max_upload) for r in requests]
        for f in cf.as_completed(futures, timeout=deadline_s):
            f.result()
            done[0] += 1
        wall = time.perf_counter() - t0
        if side:
            side.join(timeout=60)
    return wall


def png(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def check(requests: list[Request], reference, tolerance: int, replica_killed: bool) -> list[str]:
    """Every way a request can have been answered wrongly; `reference(seed, strength)` is the edit done alone."""
    problems = []
    for r in requests:
        where = f"request {r.index} ({r.kind})"
        if r.answers != 1:
            problems.append(f"{where}: {r.answers} answers")
        elif r.status == 503:
            continue  # back-pressure is a valid answer to anything
        elif replica_killed and r.status in (500, 502) and "error" not in r.body:
            # Ray's proxy for a request whose replica died: must say so in words
            if not any(w in json.dumps(r.body) for w in ("died", "Actor", "replica", "unavailable")):
                problems.append(f"{where}: {r.status} without a clear message: {r.body}")
        elif r.status != r.expected_status:
            problems.append(f"{where}: status {r.status}, expected {r.expected_status}: {str(r.body)[:200]}")
        elif r.status == 200:
            edit = r.body["edits"][0]
            if edit["seed"] != r.seed:
                problems.append(f"{where}: answered with seed {edit['seed']} instead of {r.seed}")
            diff = int(np.abs(png(edit["image"]).astype(int) - reference(r.seed, r.strength)).max())
            if diff > tolerance:
                problems.append(f"{where}: differs from the edit done alone by {diff} levels")
        else:
            error = r.body.get("error") or {}
            if error.get("status") != r.status or error.get("field") != r.expected_field or not error.get("message"):
                problems.append(f"{where}: unclear error {r.body}")
    return problems


def report(requests: list[Request], wall: float, problems: list[str], extra: dict) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    for r in requests:
        kind = f"{r.kind}:{r.variant}" if r.variant else r.kind
        by_kind.setdefault(kind, {}).setdefault(str(r.status), 0)
        by_kind[kind][str(r.status)] += 1
    ok = sorted(r.seconds for r in requests if r.status == 200)
    return {"requests": len(requests), "wall_seconds": round(wall, 2), "answers_per_request": sorted({r.answers for r in requests}),
            "status_by_kind": by_kind, "valid_edits_ok": len(ok),
            "latency_ok_p50_s": round(statistics.median(ok), 3) if ok else None,
            "latency_ok_p99_s": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 3) if ok else None,
            "violations": problems, **extra}


# ------------------------------------------------------------------------------------------------
def learn_fast_attribute(engine: Path, store: Path):
    from svdedit.runtime.editing.learn import learn
    from svdedit.runtime.editing import Editor, Knobs
    from svdedit.runtime.pipeline import Pipeline
    from svdedit.serve.store import AttributeStore

    with Pipeline(engine) as pipe:
        attr = learn(Editor(pipe), "a large red circle in the middle", "a large blue circle in the middle",
                                  knobs=Knobs(steps=20, iters=100))
        return AttributeStore(store, pipe.manifest.identities()).save(attr), attr


def reference_edits(engine: Path, attr, requests: list[Request]):
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.pipeline import Pipeline

    wanted = {(r.seed, r.strength) for r in requests if r.kind == "valid" and r.status == 200}
    with Pipeline(engine) as pipe:
        editor = Editor(pipe)
        done = {k: editor.edit_seeds([attr], [PROMPT], [k[0]], strength=k[1]).edited[0] for k in sorted(wanted)}
    return lambda seed, strength: done[(seed, strength)]


def peak_rss_gib(pid: int) -> float:
    peak = status_gib(pid, "VmHWM")
    return float("nan") if peak is None else peak


def kill_one_replica(after_done: int):
    """A `during` function: once `after_done` requests are answered, kill one Ray Serve replica of svdedit."""
    import ray

    def during(done):
        while done[0] < after_done:
            time.sleep(0.05)
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if "SERVE_REPLICA" in a["name"] and "svdedit-model" in a["name"]]
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=False)
        during.killed = names[0]
    during.killed = None
    return during


def load_test(engine: Path, clients: int, n: int, deadline: float, tolerance: int, ray_replicas: int = 0,
              kill: bool = False, max_upload: int = 200_000, ray_port: int | None = None,
              kinds: list[str] = KINDS) -> dict:
    """The whole test (used by tests/serve/test_load.py with smaller numbers); returns the report. With
    `ray_replicas`, on the Ray instance already running with its proxy on `ray_port`, or on one of its own.
    `kinds`: the mix of requests (KINDS, CLEAN, HOSTILE)."""
    from benchmarks.serving.serving import HealthProbe, free_port, start_uvicorn, wait_ready

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    store = work / "store"
    attr_id, attr = learn_fast_attribute(engine, store)
    files_before = sorted(p.name for p in store.iterdir())
    requests = plan(n, kinds=kinds)
    extra: dict = {"clients": clients, "server": "ray" if ray_replicas else "uvicorn"}
    if ray_replicas:
        import ray
        from ray import serve

        from svdedit.serve.run import run_ray
        from svdedit.serve.settings import ServeSettings

        own_cluster = ray_port is None
        if own_cluster:
            ray_port = free_port()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
        try:
            run_ray(ServeSettings.make(engine, store=store, max_file_bytes=max_upload), port=ray_port, replicas=ray_replicas,
                    cpus_per_replica=0.5, blocking=False)
            url = f"http://127.0.0.1:{ray_port}"
            wait_ready(url)
            during = kill_one_replica(after_done=n // 3) if kill else None
            wall = run_load(url, attr_id, requests, clients, deadline, max_upload, during)
            extra["replicas"] = ray_replicas
            extra["killed_replica"] = during.killed if during else None
            extra["healthy_after"] = wait_and_probe(url, attr_id)
        finally:
            serve.delete("svdedit")
            if own_cluster:
                serve.shutdown()
                ray.shutdown()
    else:
        port = free_port()
        proc = start_uvicorn(engine, store, port, "--max-file-bytes", str(max_upload))
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            with HealthProbe(f"http://127.0.0.1:{port}") as health:
                wall = run_load(f"http://127.0.0.1:{port}", attr_id, requests, clients, deadline, max_upload)
            extra["server_peak_rss_gib"] = round(peak_rss_gib(proc.pid), 3)
            extra["healthz_ms"] = {"answers": len(health.seconds), "p99": health.p99_ms(), "max": health.worst_ms()}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    extra["store_intact"] = sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == files_before
    problems = check(requests, reference_edits(engine, attr, requests), tolerance, replica_killed=kill)
    return report(requests, wall, problems, extra)


def wait_and_probe(url: str, attr_id: str) -> bool:
    """After a replica was killed: does a fresh edit succeed (within 60 s, as Ray Serve restarts it)?"""
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            r = httpx.post(f"{url}/v1/edits", json={"prompt": PROMPT, "attributes": [attr_id], "seeds": [1]}, timeout=60)
            if r.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def hostile_test(engine: Path, clients: int, n: int, deadline: float, tolerance: int) -> dict:
    """The same load twice on uvicorn, each on a fresh server: valid edits only, then one request in ten malformed.
    The valid edits must all succeed both times; their p99 latency with the hostile tenth, over the clean run's, is
    the ratio to watch (bound 1.5), with the server's peak RSS and /healthz's latency under each."""
    clean = load_test(engine, clients, n, deadline, tolerance, kinds=CLEAN)
    hostile = load_test(engine, clients, n, deadline, tolerance, kinds=HOSTILE)
    ratio = hostile["latency_ok_p99_s"] / clean["latency_ok_p99_s"]
    return {"clean": clean, "hostile": hostile, "p99_valid_hostile_over_clean": round(ratio, 3),
            "bounds": {"p99_ratio": 1.5, "peak_rss_gib": 1.0, "healthz_max_ms": 100},
            "within_bounds": ratio <= 1.5 and max(clean["server_peak_rss_gib"], hostile["server_peak_rss_gib"]) < 1.0
            and not clean["violations"] and not hostile["violations"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="engine dir of models/shapes (default: export one)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--deadline", type=float, default=300.0)
    ap.add_argument("--tolerance", type=int, default=2, help="uint8 levels a batched edit may differ from one alone")
    ap.add_argument("--ray", action="store_true", help="Ray Serve with two replicas instead of uvicorn")
    ap.add_argument("--kill-replica", action="store_true", help="kill one Ray replica a third of the way in")
    ap.add_argument("--hostile", action="store_true", help="uvicorn: a clean run (valid edits only), then one with a "
                                                          "malformed request in ten; compares the valid edits' p99")
    args = ap.parse_args()
    from benchmarks.engines import ensure_engine
    from benchmarks.machine import describe

    engine = ensure_engine(ROOT / "models" / "shapes", args.engine)
    if args.hostile:
        result = {"benchmark": "serve_hostile", "command": "python -m benchmarks.serving.serve_load "
                  + " ".join(sys.argv[1:]), "machine": describe(),
                  **hostile_test(engine, args.clients, args.requests, args.deadline, args.tolerance)}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "serve_hostile.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k not in ("clean", "hostile", "machine")}, indent=2))
        return
    result = load_test(engine, args.clients, args.requests, args.deadline, args.tolerance,
                       ray_replicas=2 if args.ray else 0, kill=args.kill_replica)
    result = {"benchmark": "serve_load", "command": "python -m benchmarks.serving.serve_load " + " ".join(sys.argv[1:]),
              "machine": describe(), **result}
    name = "ray_kill" if args.kill_replica else "ray" if args.ray else "uvicorn"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serve_load_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
