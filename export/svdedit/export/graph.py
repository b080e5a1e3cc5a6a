"""ONNX graph helpers shared by the graph rewrites of the export (fp16.py, fusion.py)."""

from __future__ import annotations

from svdedit.runtime.errors import ExportError


def topological_order(nodes: list) -> list:
    """The nodes ordered so that each comes after the producers of its inputs (Kahn's algorithm over tensor
    names); onnx.checker requires that order, and graph rewrites append nodes after their consumers."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ExportError("a rewrite of the ONNX graph produced a cycle; export with --precision fp32 --no-fuse, and "
                          "report the model.")
    return [nodes[i] for i in order]
