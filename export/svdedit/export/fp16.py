"""``svdedit export --precision fp16``: convert one exported ONNX graph to fp16, in place.

onnxruntime's converter with fp32 inputs and outputs (``keep_io_types``); the ops of the contract's
precision policy (contract.FP16_KEEP_FP32_OPS: softmax and normalisation statistics, where SD
overflows) stay fp32. Which networks are converted is the policy's too (contract.network_precision:
the VAE stays fp32). Graphs above EXTERNAL_DATA_BYTES keep their weights in one external file.
"""

from __future__ import annotations

from pathlib import Path

from svdedit.export.graph import topological_order
from svdedit.runtime.engines.contract import FP16_KEEP_FP32_OPS
from svdedit.runtime.errors import ExportError

#: above this many bytes of weights a graph keeps its tensors in one external .onnx.data file (protobuf caps at 2 GB)
EXTERNAL_DATA_BYTES = 1_500_000_000


def convert_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    external = path.with_name(path.name + ".data")
    model = onnx.load(str(path), load_external_data=True)
    model16 = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32_OPS
    )
    del model
    drop_duplicate_nodes(model16.graph)
    if external.exists():
        external.unlink()
    if model16.ByteSize() > EXTERNAL_DATA_BYTES:
        onnx.save_model(model16, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=external.name)
    else:
        onnx.save_model(model16, str(path))


def drop_duplicate_nodes(graph) -> None:
    """Remove exact repeats of a node (same name, op, inputs, outputs, attributes).

    onnxruntime's fp16 converter inserts one Cast per *consumer* of a blocked op's fp16 input, all with
    the same name and output; the dynamo exporter shares constants between many nodes, so one
    constant gets dozens of identical Casts, which onnxruntime refuses ("two nodes with same node
    name"). The converter also appends its Casts after their consumers, so the kept nodes are then
    put back in topological order (onnx.checker requires it).
    """
    seen: set[bytes] = set()
    kept = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    outputs = [o for n in kept for o in n.output if o]
    if len(outputs) != len(set(outputs)):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise ExportError(f"the fp16 conversion produced two nodes writing {dup!r}; export with --precision fp32.")
    del graph.node[:]
    graph.node.extend(topological_order(kept))
