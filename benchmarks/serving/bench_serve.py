"""Dynamic batching, measured: the server at 1, 4 and 16 concurrent clients against the same edits done one
after another through the Python API, on the embedded model (default knobs: 50 + 50 steps).

    python -m benchmarks.serving.bench_serve [--edits 32] [--clients 1,4,16] [--repeats 3]

The server (`svdedit serve`, its own process, default settings: batches of up to 8 images, 25 ms wait)
gets --edits edit requests of one seed each, from N client threads, each sending its share one after
another; throughput = edits / wall time, latency per request (p50, p99). The peer, in this process: the
same edits through Editor.edit_seeds, one at a time (what a user without the server would do), after a
warm-up. Median of --repeats runs of each. Writes benchmarks/results/serve_batching.json and .png.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a small red square on the left"


def python_api(engine: Path, attr, seeds: list[int], repeats: int) -> dict:
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.pipeline import Pipeline

    with Pipeline(engine) as pipe:
        editor = Editor(pipe)
        editor.edit_seeds([attr], [PROMPT], seeds[:1])  # warm-up
        walls, latencies = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in seeds:
                t = time.perf_counter()
                editor.edit_seeds([attr], [PROMPT], [s])
                latencies.append(time.perf_counter() - t)
            walls.append(time.perf_counter() - t0)
    return summary(len(seeds), walls, latencies)


def served(url: str, attr_id: str, seeds: list[int], clients: int, repeats: int) -> dict:
    import httpx

    def client_run(client, mine):
        out = []
        for s in mine:
            t = time.perf_counter()
            r = client.post("/v1/edits", json={"prompt": PROMPT, "attributes": [attr_id], "seeds": [s]})
            r.raise_for_status()
            out.append((time.perf_counter() - t, r.json()["batch_images"]))
        return out

    with httpx.Client(base_url=url, timeout=600) as client:
        client_run(client, seeds[:1])  # warm-up
        walls, latencies, batches = [], [], []
        for _ in range(repeats):
            shares = [seeds[i::clients] for i in range(clients)]
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(clients) as pool:
                results = [x for part in pool.map(lambda m: client_run(client, m), shares) for x in part]
            walls.append(time.perf_counter() - t0)
            latencies += [r[0] for r in results]
            batches += [r[1] for r in results]
    return {**summary(len(seeds), walls, latencies), "clients": clients,
            "batch_images_mean": round(statistics.mean(batches), 2), "batch_images_max": max(batches)}


def summary(n: int, walls: list[float], latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    wall = statistics.median(walls)
    return {"edits": n, "wall_s_median": round(wall, 3), "wall_s_runs": [round(w, 3) for w in walls],
            "edits_per_second": round(n / wall, 3), "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)}


def plot(result: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    rows = [("Python API, one at a time", result["python_api"])] + [
        (f"server, {r['clients']} client{'s' if r['clients'] > 1 else ''}", r) for r in result["server"]]
    W, H, left, bar_h = 900, 90 + 46 * len(rows), 230, 26
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 8), f"{result['edits']} edits of the embedded model, {result['steps']}+{result['steps']} steps, "
                    f"{result['machine']['cpu']} ({result['machine']['cores']} cores)", fill="black")
    top_rate = max(r["edits_per_second"] for _, r in rows)
    top_lat = max(r["latency_p99_s"] for _, r in rows)
    d.text((left, 30), "edits per second", fill="black")
    d.text((left + 340, 30), "latency per request: p50 (dark), p99 (light), seconds", fill="black")
    for i, (label, r) in enumerate(rows):
        y = 54 + 46 * i
        d.text((10, y + 6), label, fill="black")
        w = 300 * r["edits_per_second"] / top_rate
        d.rectangle([left, y, left + w, y + bar_h], fill=(0, 114, 178))
        d.text((left + w + 4, y + 6), f"{r['edits_per_second']:.2f}", fill="black")
        for value, colour in ((r["latency_p99_s"], (230, 159, 0)), (r["latency_p50_s"], (213, 94, 0))):
            d.rectangle([left + 340, y, left + 340 + 260 * value / top_lat, y + bar_h], fill=colour)
        d.text((left + 340 + 264 * r["latency_p99_s"] / top_lat, y + 6),
               f"{r['latency_p50_s']:.2f} / {r['latency_p99_s']:.2f}", fill="black")
    im.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="engine dir of models/shapes (default: export one)")
    ap.add_argument("--edits", type=int, default=32)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from svdedit.runtime.editing.learn import learn
    from benchmarks.engines import ensure_engine
    from benchmarks.machine import describe
    from benchmarks.serving.serving import free_port, start_uvicorn, wait_ready
    from svdedit.runtime.editing import Editor
    from svdedit.runtime.pipeline import Pipeline
    from svdedit.serve.store import AttributeStore

    engine = ensure_engine(ROOT / "models" / "shapes", args.engine)
    store = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "store"
    with Pipeline(engine) as pipe:
        attr = learn(Editor(pipe), "a large red circle in the middle", "a large blue circle in the middle")
        attr_id = AttributeStore(store, pipe.manifest.identities()).save(attr)
    seeds = list(range(2000, 2000 + args.edits))
    result = {"benchmark": "bench_serve", "command": "python -m benchmarks.serving.bench_serve " + " ".join(sys.argv[1:]),
              "machine": describe(), "edits": args.edits, "steps": attr.knobs.steps, "repeats": args.repeats,
              "server_settings": "svdedit serve defaults (max_batch 8, max_wait_ms 25, max_queue 64)"}
    print("Python API ...", file=sys.stderr)
    result["python_api"] = python_api(engine, attr, seeds, args.repeats)
    port = free_port()
    proc = start_uvicorn(engine, store, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        result["server"] = []
        for c in (int(x) for x in args.clients.split(",")):
            print(f"server, {c} clients ...", file=sys.stderr)
            result["server"].append(served(f"http://127.0.0.1:{port}", attr_id, seeds, c, args.repeats))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    base = result["python_api"]["edits_per_second"]
    for r in result["server"]:
        r["throughput_vs_python_api"] = round(r["edits_per_second"] / base, 2)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_batching.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "serve_batching.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
