"""Rewrites of a traced step.onnx that ONNX Runtime's own optimizer does not make (docs/state.md, "The step graph").

A lone stream runs one step per token, so every node of the step is paid once per token. Measured on the
char-Transformer (batch 1, ONNX Runtime 1.32, one thread), these take its step from ~166 to ~154 µs, with the same
outputs, and leave batch 16 as it was:

- GroupQueryAttention fed the packed q|k|v that its query, key and value were split from (key and value left
  empty; the kernel reads them at their offsets): the Split per layer goes.
- Its total_sequence_length a constant, the cache length, instead of max(pos) + 1 computed per step: with past
  and present sharing one buffer the kernel reads each row's length from seqlens_k (attending over the slots
  j <= pos only), and total only sets the present buffer's length (the cache's) and whether the call is a
  prompt (never, for one position per row, when the cache holds more than one slot).
- Where(c, ConstantOfShape(Shape(x)), x) (the start token at position 0) -> Where(c, scalar, x): a broadcast
  instead of a tensor filled per step.

Nodes nothing reads any more are then dropped. The exporter applies this to every step graph it writes, before
its parity gate; `python -m models.upgrade --step-graph FOLDER` applies it to a shipped step.onnx alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

GQA = "GroupQueryAttention"


def fuse_step_graph(graph: onnx.GraphProto) -> list[str]:
    """Rewrite graph in place; returns what was done, e.g. ["4 packed qkv", "4 constant total", "1 scalar fill"]."""
    done = [f"{n} {what}" for what, n in (("packed qkv", _pack_qkv(graph)), ("constant total", _constant_total(graph)),
                                          ("scalar fill", _scalar_fill(graph))) if n]
    _drop_unread(graph)
    return done


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _readers(graph: onnx.GraphProto) -> dict[str, int]:
    count: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            count[name] = count.get(name, 0) + 1
    for out in graph.output:
        count[out.name] = count.get(out.name, 0) + 1
    return count


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of a Constant node's output or an initializer (None if it is neither, or stored outside)."""
    for t in graph.initializer:
        if t.name == name:
            return None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
    node = _producers(graph).get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _pack_qkv(graph: onnx.GraphProto) -> int:
    producers, readers, n = _producers(graph), _readers(graph), 0
    for node in graph.node:
        if node.op_type != GQA or len(node.input) < 3 or _attr(node, "num_heads") != _attr(node, "kv_num_heads"):
            continue
        split = producers.get(node.input[0])
        if (split is None or split.op_type != "Split" or list(split.output) != list(node.input[:3])
                or any(readers.get(o, 0) != 1 for o in split.output) or _attr(split, "axis") not in (2, -1)):
            continue
        sizes = _constant(graph, split.input[1]) if len(split.input) > 1 else None
        if sizes is None or len(set(sizes.tolist())) != 1:  # q, k and v of one width, in that order
            continue
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        n += 1
    return n


def _constant_total(graph: onnx.GraphProto) -> int:
    n = 0
    for node in list(graph.node):
        if node.op_type != GQA or len(node.input) < 7:
            continue
        past = next((i for i in graph.input if i.name == node.input[3]), None)
        if past is None or len(past.type.tensor_type.shape.dim) != 4:
            continue
        length = past.type.tensor_type.shape.dim[2]
        # the cache is bound as past and present (BoundStep), so its length is the present length too
        if not length.HasField("dim_value") or length.dim_value < 2:
            continue
        name = f"gqa_total_sequence_length_{length.dim_value}"
        if node.input[6] == name:  # rewritten before
            continue
        if name not in _producers(graph):
            graph.node.insert(0, helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(
                np.array(length.dim_value, dtype=np.int32), name)))
        node.input[6] = name
        n += 1
    return n


def _scalar_fill(graph: onnx.GraphProto) -> int:
    producers, n = _producers(graph), 0
    for node in list(graph.node):
        if node.op_type != "Where":
            continue
        fill = producers.get(node.input[1])
        shape = producers.get(fill.input[0]) if fill is not None and fill.op_type == "ConstantOfShape" else None
        if shape is None or shape.op_type != "Shape" or shape.input[0] != node.input[2] or _attr(shape, "start"):
            continue
        value = _attr(fill, "value")
        scalar = numpy_helper.to_array(value).reshape(()) if value is not None else np.array(0.0, np.float32)
        name = f"{node.input[1]}_scalar"
        graph.node.insert(list(graph.node).index(node), helper.make_node(
            "Constant", [], [name], name=name, value=numpy_helper.from_array(scalar, name)))
        node.input[1] = name
        n += 1
    return n


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (repeatedly), then initializers nothing reads."""
    while True:
        readers = _readers(graph)
        dead = [node for node in graph.node if not any(readers.get(o, 0) for o in node.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = _readers(graph)
    keep = [t for t in graph.initializer if read.get(t.name, 0)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
