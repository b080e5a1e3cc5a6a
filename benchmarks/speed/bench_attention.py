"""One attention layer on onnxruntime's CPU provider: torch's decomposed form against the fused
MultiHeadAttention that `svdedit export` writes (export/svdedit/export/fusion.py), with torch's SDPA as the peer.

    python -m benchmarks.speed.bench_attention [--batch 2] [--tokens 4096] [--heads 8] [--head-dim 40]

The defaults are SD 1.5's largest self-attention (64x64 latent) under classifier-free guidance. Each
graph runs in its own process without a memory arena, so its peak RSS above the inputs is the layer's
own; median of the last 3 of 4 runs. Writes benchmarks/results/attention_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
KINDS = ("decomposed", "fused", "torch_sdpa")


def graph(kind: str, b: int, s: int, h: int, d: int) -> bytes:
    from onnx import TensorProto as T
    from onnx import helper

    io = [helper.make_tensor_value_info(n, T.FLOAT, [b, s, h * d]) for n in "qkvo"]
    if kind == "fused":
        nodes = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=h)]
        inits, opsets = [], [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    else:  # as torch's exporter writes it: split heads, sqrt(scale) on q and k, softmax(q k^T) v, merge
        inits = [helper.make_tensor("heads", T.INT64, [4], [b, s, h, d]),
                 helper.make_tensor("merged", T.INT64, [3], [b, s, h * d]),
                 helper.make_tensor("s", T.FLOAT, [], [d ** -0.25])]
        nodes = []
        for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes += [helper.make_node("Reshape", [n, "heads"], [n + "4"]),
                      helper.make_node("Transpose", [n + "4"], [n + "h"], perm=perm)]
        nodes += [helper.make_node("Mul", ["qh", "s"], ["qs"]), helper.make_node("Mul", ["kh", "s"], ["ks"]),
                  helper.make_node("MatMul", ["qs", "ks"], ["scores"]), helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
                  helper.make_node("MatMul", ["p", "vh"], ["a"]), helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["at", "merged"], ["o"])]
        opsets = [helper.make_opsetid("", 20)]
    g = helper.make_graph(nodes, "attention", io[:3], io[3:], initializer=inits)
    return helper.make_model(g, opset_imports=opsets, ir_version=10).SerializeToString()


def child(kind: str, b: int, s: int, h: int, d: int) -> dict:
    import resource
    import statistics
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((b, s, h * d)).astype(np.float32) for n in "qkv"}
    if kind == "torch_sdpa":
        import torch

        q, k, v = (torch.from_numpy(feeds[n]).view(b, s, h, d).transpose(1, 2) for n in "qkv")

        def run():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, h * d).numpy()
    else:
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.log_severity_level = 3
        o.enable_cpu_mem_arena = False
        sess = ort.InferenceSession(graph(kind, b, s, h, d), o, providers=["CPUExecutionProvider"])

        def run():
            return sess.run(None, feeds)[0]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, out = [], None
    for _ in range(4):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    np.save(f"/tmp/bench-attention-{kind}.npy", out)
    return {"kind": kind, "ms_median": round(1e3 * statistics.median(times[1:]), 1),
            "peak_gib_above_inputs": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=40)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    dims = (args.batch, args.tokens, args.heads, args.head_dim)
    if args.child:
        print(json.dumps(child(args.child, *dims)))
        return
    import numpy as np

    from benchmarks.machine import describe

    rows = []
    for kind in KINDS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.speed.bench_attention", "--child", kind, "--batch", str(dims[0]),
                              "--tokens", str(dims[1]), "--heads", str(dims[2]), "--head-dim", str(dims[3])],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = np.load("/tmp/bench-attention-decomposed.npy")
    for r in rows:
        r["max_abs_vs_decomposed"] = float(np.abs(np.load(f"/tmp/bench-attention-{r['kind']}.npy") - ref).max())
    result = {"benchmark": "bench_attention", "command": "python -m benchmarks.speed.bench_attention " + " ".join(sys.argv[1:]),
              "shape": {"batch": dims[0], "tokens": dims[1], "heads": dims[2], "head_dim": dims[3]},
              "machine": describe(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
