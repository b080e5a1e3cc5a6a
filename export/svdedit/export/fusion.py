"""Attention fusion: torch's decomposed scaled-dot-product attention -> one com.microsoft.MultiHeadAttention.

torch's ONNX exporter writes `F.scaled_dot_product_attention` as

    q_flat (B, S, H*D) -> Reshape -> Transpose -> Mul(sqrt scale) --\
    k_flat (B, L, H*D) -> Reshape -> Transpose ... -> Mul(sqrt scale) -> MatMul -> Softmax -> MatMul -> Transpose -> Reshape -> out (B, S, H*D)
    v_flat (B, L, H*D) -> Reshape -> Transpose ----------------------------------------------/

which makes onnxruntime materialise the (B, H, S, L) score matrix twice (1 GiB each for SD 1.5's
4096-token self-attention at batch 2). onnxruntime's own transformer optimizer does not recognise
this form (it matches the older TorchScript exporter's), so this module does the rewrite: every
Softmax whose input is a MatMul of two head-split tensors and whose output feeds a MatMul with a
head-split value becomes MultiHeadAttention(q_flat, k_flat, v_flat, num_heads=H, scale=s), which
onnxruntime runs tiled on CPU and CUDA (one 4096-token attention at batch 2 on this project's 2-core
CPU: 196 ms and 0.15 GiB against 644 ms and 1.10 GiB, benchmarks/results/attention_cpu.json; the whole
SD 1.5 UNet: benchmarks/results/session_memory_sd15_cpu.md).

The head count of each attention is read from a probe run (the candidate tensors added as graph
outputs, one onnxruntime call at batch 1), not guessed from the graph's shape arithmetic; every
match is checked (ranks, H*D) before it is rewritten, and the exporter's parity check against torch
runs on the fused graph afterwards. MultiHeadAttention is an onnxruntime operator: TensorRT cannot
parse fused graphs (`svdedit build` refuses them; export with --no-fuse for TensorRT).
"""

from __future__ import annotations

from pathlib import Path

from svdedit.export.graph import topological_order

PASS_THROUGH = ("Reshape", "Transpose")


def _constant_scalar(name: str, consts: dict) -> float | None:
    v = consts.get(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _climb(name: str, prod: dict, consts: dict) -> tuple[str, float]:
    """Walk up through Reshape / Transpose / Mul-by-a-scalar-constant; return the tensor reached and the
    product of the scalars met on the way."""
    scale = 1.0
    while name in prod:
        node = prod[name]
        if node.op_type in PASS_THROUGH:
            name = node.input[0]
        elif node.op_type == "Mul":
            a, b = node.input
            if (c := _constant_scalar(b, consts)) is not None:
                name, scale = a, scale * c
            elif (c := _constant_scalar(a, consts)) is not None:
                name, scale = b, scale * c
            else:
                break
        else:
            break
    return name, scale


def _only_consumer(name: str, users: dict):
    us = users.get(name, [])
    return us[0] if len(us) == 1 else None


def find_attentions(graph) -> list[dict]:
    """Candidate decomposed attentions: the tensors they start from, the nodes they end at, their scale."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_location != 1}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    prod = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for sm in graph.node:
        if sm.op_type != "Softmax" or sm.input[0] not in prod or prod[sm.input[0]].op_type != "MatMul":
            continue
        scores = prod[sm.input[0]]
        pv = _only_consumer(sm.output[0], users)
        if pv is None or pv.op_type != "MatMul" or pv.input[0] != sm.output[0]:
            continue
        tr = _only_consumer(pv.output[0], users)
        rs = _only_consumer(tr.output[0], users) if tr is not None and tr.op_type == "Transpose" else None
        if rs is None or rs.op_type != "Reshape":
            continue
        (q, sq), (k, sk), (v, sv) = (_climb(x, prod, consts) for x in (scores.input[0], scores.input[1], pv.input[1]))
        if sv != 1.0:  # a scaled value is not this pattern
            continue
        found.append({"q": q, "k": k, "v": v, "scale": sq * sk, "q_heads": scores.input[0], "v_heads": pv.input[1],
                      "output": rs.output[0]})
    return found


def _probe_shapes(path: Path, names: list[str], feeds: dict) -> dict[str, tuple]:
    """Shapes of the given intermediate tensors, from one onnxruntime run of a copy with them as outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    probe = path.with_name(f".probe-{path.name}")
    try:
        onnx.save_model(model, str(probe))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
        out = ort.InferenceSession(str(probe), opts, providers=["CPUExecutionProvider"]).run(names, feeds)
    finally:
        probe.unlink(missing_ok=True)
    return {n: a.shape for n, a in zip(names, out)}


def fuse_attention(path: Path, feeds: dict) -> int:
    """Rewrite every decomposed attention of the ONNX file at `path` in place; return how many."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    cands = find_attentions(graph)
    if not cands:
        return 0
    names = sorted({c[k] for c in cands for k in ("q", "k", "v", "q_heads", "v_heads", "output")})
    shapes = _probe_shapes(path, names, feeds)
    fused, drop = [], set()
    for c in cands:
        qf, kf, vf, qh, vh, out = (shapes[c[k]] for k in ("q", "k", "v", "q_heads", "v_heads", "output"))
        if not (len(qf) == len(kf) == len(vf) == 3 and len(qh) == len(vh) == 4):
            continue
        heads, d_qk, d_v = qh[1], qh[3], vh[3]
        if heads * d_qk != qf[2] or heads * d_qk != kf[2] or heads * d_v != vf[2] or tuple(out) != (qf[0], qf[1], vf[2]):
            continue
        fused.append(helper.make_node("MultiHeadAttention", [c["q"], c["k"], c["v"]], [c["output"]],
                                      name=f"fused_attention_{len(fused)}", domain="com.microsoft",
                                      num_heads=int(heads), scale=float(c["scale"])))
        drop.add(c["output"])
    if not fused:
        return 0
    kept = [n for n in graph.node if not set(n.output) & drop] + fused
    # drop what only fed the replaced subgraphs
    needed = {o.name for o in graph.output}
    live = []
    for n in reversed(topological_order(kept)):
        if set(n.output) & needed:
            live.append(n)
            needed.update(i for i in n.input if i)
    del graph.node[:]
    graph.node.extend(reversed(live))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(model, str(path))
    return len(fused)
