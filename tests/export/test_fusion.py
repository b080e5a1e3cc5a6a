"""The attention fusion (export/svdedit/export/fusion.py): decomposed attention -> MultiHeadAttention, same numbers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from svdedit.export.fusion import find_attentions, fuse_attention

B, S, L, H, D = 2, 24, 10, 4, 8


def decomposed(path, masked: bool = False):
    """torch's form of scaled-dot-product attention: split heads, scale q and k by sqrt(scale) each,
    softmax(q k^T) v, merge heads; projections in front so that q, k, v are computed tensors."""
    rng = np.random.default_rng(0)
    inits = [h.make_tensor(n, T.FLOAT, [H * D, H * D], rng.standard_normal((H * D, H * D)).astype(np.float32).ravel())
             for n in ("wq", "wk", "wv")]
    inits += [h.make_tensor("heads", T.INT64, [4], [0, -1, H, D]), h.make_tensor("merged", T.INT64, [3], [0, -1, H * D]),
              h.make_tensor("s", T.FLOAT, [], [D ** -0.25]), h.make_tensor("mask", T.FLOAT, [S, L], np.zeros(S * L))]
    nodes = [h.make_node("MatMul", ["x", "wq"], ["q"]), h.make_node("MatMul", ["c", "wk"], ["k"]),
             h.make_node("MatMul", ["c", "wv"], ["v"])]
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [h.make_node("Reshape", [n, "heads"], [n + "4"]), h.make_node("Transpose", [n + "4"], [n + "h"], perm=perm)]
    nodes += [h.make_node("Mul", ["qh", "s"], ["qs"]), h.make_node("Mul", ["s", "kh"], ["ks"]),
              h.make_node("MatMul", ["qs", "ks"], ["scores"])]
    if masked:  # CLIP's causal mask sits between the MatMul and the Softmax: not this pattern
        nodes += [h.make_node("Add", ["scores", "mask"], ["scores_m"]), h.make_node("Softmax", ["scores_m"], ["p"], axis=-1)]
    else:
        nodes += [h.make_node("Softmax", ["scores"], ["p"], axis=-1)]
    nodes += [h.make_node("MatMul", ["p", "vh"], ["a"]), h.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["at", "merged"], ["y"])]
    graph = h.make_graph(nodes, "attention", [h.make_tensor_value_info("x", T.FLOAT, ["b", S, H * D]),
                                              h.make_tensor_value_info("c", T.FLOAT, ["b", L, H * D])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["b", S, H * D])], initializer=inits)
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 20)], ir_version=10), str(path))


def run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.fixture
def feeds():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((B, S, H * D)).astype(np.float32),
            "c": rng.standard_normal((B, L, H * D)).astype(np.float32)}


def test_fused_attention_computes_the_same(tmp_path, feeds):
    path = tmp_path / "a.onnx"
    decomposed(path)
    before = run(path, feeds)
    assert fuse_attention(path, feeds) == 1
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops
    mha = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: h.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == H and attrs["scale"] == pytest.approx(D ** -0.5)
    np.testing.assert_allclose(run(path, feeds), before, atol=1e-5)
    other = {k: v[:1] for k, v in feeds.items()}  # and still dynamic in the batch
    decomposed(tmp_path / "b.onnx")
    np.testing.assert_allclose(run(path, other), run(tmp_path / "b.onnx", other), atol=1e-5)


def test_masked_softmax_is_left_alone(tmp_path, feeds):
    path = tmp_path / "a.onnx"
    decomposed(path, masked=True)
    assert find_attentions(onnx.load(str(path)).graph) == []
    assert fuse_attention(path, feeds) == 0


def test_export_fuses_by_default_and_no_fuse_keeps_plain_attention(shapes_engine, tmp_path):
    m = json.loads((shapes_engine / "manifest.json").read_text())
    assert m["options"]["fuse"] is True
    assert m["networks"]["unet"]["fused"]["MultiHeadAttention"] > 0
    unet = onnx.load(str(shapes_engine / "unet.onnx"), load_external_data=False)
    assert "Softmax" not in {n.op_type for n in unet.graph.node}
    assert "fused" not in m["networks"]["text_encoder"]  # CLIP's masked attention is not fused
