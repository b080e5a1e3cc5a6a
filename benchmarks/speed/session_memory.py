"""onnxruntime session options for the four networks of an edit: peak RSS and time per call.

    python -m benchmarks.speed.session_memory --engines /tmp/svdedit-sd15/engine-fp32 /tmp/svdedit-sd15/engine-fp32-nofuse

For each engine dir (fused attention or not, see export/svdedit/export/fusion.py) and each memory policy, a fresh
process opens all four sessions and runs the edit's call sequence three times (text encoder at batch
3, VAE encoder at batch 1, UNet at batch 1 (inversion) and 2 (guided), VAE decoder at batch 1); the
median of the last two rounds per call, and the process's peak RSS. Policies:

    arena      onnxruntime's default: one CPU memory arena per session
    shared     one arena shared by all sessions (create_and_register_allocator + session.use_env_allocators)
    noarena    no arena (plain malloc/free per tensor): what runtime/svdedit/runtime/engines/onnxrt.py uses

Writes benchmarks/results/session_memory_<label>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
POLICIES = ("arena", "shared", "noarena")


def child(engine: str, policy: str) -> dict:
    import resource
    import time

    import numpy as np
    import onnxruntime as ort

    from svdedit.runtime.engines.manifest import read_manifest

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    o = ort.SessionOptions()
    o.log_severity_level = 3
    if policy == "noarena":
        o.enable_cpu_mem_arena = False
    elif policy == "shared":
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        o.add_session_config_entry("session.use_env_allocators", "1")
    manifest = read_manifest(engine, verify="none")
    s = {n: ort.InferenceSession(str(Path(engine) / net.file), o, providers=["CPUExecutionProvider"])
         for n, net in manifest.networks.items()}
    after_load = peak()
    side = manifest.image_size.default
    lat = side // manifest.latent.vae_scale_factor
    hidden = manifest.text.hidden_size
    r = np.random.default_rng(0)

    def unet(b):
        return s["unet"].run(None, {"sample": r.standard_normal((b, 4, lat, lat), dtype=np.float32),
                                    "timestep": np.full((b,), 500, np.float32),
                                    "encoder_hidden_states": r.standard_normal((b, 77, hidden), dtype=np.float32)})

    calls = [("text_encoder", lambda: s["text_encoder"].run(None, {"input_ids": np.full((3, 77), 49407, np.int64)})),
             ("vae_encoder", lambda: s["vae_encoder"].run(None, {"image": r.standard_normal((1, 3, side, side), dtype=np.float32)})),
             ("unet_batch1", lambda: unet(1)), ("unet_batch2", lambda: unet(2)),
             ("vae_decoder", lambda: s["vae_decoder"].run(None, {"latent": r.standard_normal((1, 4, lat, lat), dtype=np.float32)}))]
    times: dict[str, list[float]] = {k: [] for k, _ in calls}
    for _ in range(3):
        for k, f in calls:
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {"engine": engine, "fused": bool((manifest.options or {}).get("fuse")), "policy": policy,
            "peak_rss_after_load_gib": round(after_load, 2), "peak_rss_gib": round(peak(), 2),
            "seconds_median": {k: round(float(np.median(v[1:])), 3) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", required=True, help="engine dirs (e.g. fused and --no-fuse exports)")
    ap.add_argument("--label", default="sd15_cpu")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from benchmarks.machine import describe

    rows = []
    for engine in args.engines:
        for policy in POLICIES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.speed.session_memory", "--engines", engine, "--child",
                                  engine, policy], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"session_memory_{args.label}.json").write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2) + "\n")
    calls = list(rows[0]["seconds_median"])
    md = [f"# onnxruntime session options, {args.label}", "",
          "Command: `python -m benchmarks.speed.session_memory " + " ".join(sys.argv[1:]) + "`; seconds per call (median), "
          "peak RSS of the process with all four sessions open.", "",
          "| attention | memory policy | peak RSS GiB | " + " | ".join(calls) + " |",
          "|---|---|---|" + "---|" * len(calls)]
    for r in rows:
        md.append(f"| {'fused' if r['fused'] else 'plain'} | {r['policy']} | {r['peak_rss_gib']:.2f} | "
                  + " | ".join(f"{r['seconds_median'][c]:.2f}" for c in calls) + " |")
    (RESULTS / f"session_memory_{args.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
