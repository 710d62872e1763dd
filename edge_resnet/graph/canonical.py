"""Put a ResNet ONNX graph in the one form the quantizer and backends expect.

- Node names are the model's module names (``layer3.2.conv2``, ``layer3.2.add``, ``fc``), so
  reports and ``--exclude`` speak the user's language. Conv/Gemm take the name of their weight;
  other nodes the module scope the torch exporter recorded; nodes of other exporters keep their
  names (made unique and non-empty).
- ``ReduceMean``/``ReduceMax`` over H and W become ``GlobalAveragePool`` / ``GlobalMaxPool`` (with a
  ``Flatten`` when they dropped the axes, as Keras' global pooling does), and the following reshape
  or squeeze to (N, C) becomes ``Flatten``: the forms every backend (and ORT's
  QLinearGlobalAveragePool) knows, and no Shape/Concat chain for a dynamic batch.
- A ``Gemm`` whose weight is stored (in, out) (``transB=0``: a MatMul + Add head, Keras' Dense) gets it
  transposed to (out, in) with ``transB=1``, as torch's Linear stores it: OpenVINO otherwise keeps a
  Transpose of the (int8) weight in its runtime graph.
- Each node's single output tensor takes the node's name (``layer4.2.conv3``), so calibration
  scales, the TensorRT calibration cache and per-layer reports read like the model. Graph inputs
  and outputs keep their names.
- Exporter metadata (stack traces with local file paths) is dropped, so the same model gives the
  same bytes on every machine.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_resnet.graph.prune import drop_dead_nodes, drop_unused_initializers

log = logging.getLogger(__name__)

_GLOBAL_POOL = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}


def canonicalize(model: onnx.ModelProto, changes: list[str] | None = None) -> onnx.ModelProto:
    """The canonical copy of ``model``; rewrites that keep the op counts are described into ``changes``."""
    model = _copy(model)
    changes = changes if changes is not None else []
    _name_nodes(model.graph)
    _global_pools(model.graph)
    _flatten_after_pool(model.graph)
    changes += [f"Gemm {name}: weight (in, out) -> (out, in), transB=1" for name in _gemm_weights_out_by_in(model.graph)]
    _remove_dead_nodes(model.graph)
    _name_tensors(model.graph)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _scope_name(node: onnx.NodeProto) -> str | None:
    md = {e.key: e.value for e in node.metadata_props}
    scopes = md.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None
    parts = [s.strip(" '\"") for s in scopes.strip("[]").split(",")]
    parts = [p for p in parts if p]
    if len(parts) < 2:
        return None
    module = parts[-2]
    return f"{module}.{node.op_type.lower()}" if node.op_type in ("Add", "Mul", "Concat") else module


def _name_nodes(graph: onnx.GraphProto) -> None:
    inits = {i.name for i in graph.initializer}
    wanted: list[str] = []
    for i, node in enumerate(graph.node):
        name = None
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = node.input[1]
            name = w[: -len(".weight")] if w.endswith(".weight") else None
        name = name or _scope_name(node) or node.name or f"{node.op_type}_{i}"
        wanted.append(name)
    counts = Counter(wanted)
    seen: Counter[str] = Counter()
    for node, name in zip(graph.node, wanted, strict=True):
        if counts[name] > 1:
            seen[name] += 1
            name = name if seen[name] == 1 else f"{name}_{seen[name] - 1}"
        node.name = name


def _name_tensors(graph: onnx.GraphProto) -> None:
    keep = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
    taken = set(keep)
    rename: dict[str, str] = {}
    for node in graph.node:
        if len(node.output) != 1 or node.output[0] in keep or not node.name or node.name in taken:
            continue
        rename[node.output[0]] = node.name
        taken.add(node.name)
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    for vi in graph.value_info:
        vi.name = rename.get(vi.name, vi.name)


def _const_ints(graph: onnx.GraphProto, name: str) -> list[int] | None:
    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(node.attribute[0].t).ravel()]
    return None


def _global_pools(graph: onnx.GraphProto) -> None:
    nodes: list[onnx.NodeProto] = []
    taken = {t for n in graph.node for t in (*n.input, *n.output)}
    for node in graph.node:
        nodes.append(node)
        if node.op_type not in _GLOBAL_POOL:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = _const_ints(graph, node.input[1])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            continue
        node.op_type = _GLOBAL_POOL[node.op_type]
        del node.input[1:]
        del node.attribute[:]
        if attrs.get("keepdims", 1) == 0:  # (N, C): the pool keeps (N, C, 1, 1), a Flatten drops them
            pooled = _fresh(f"{node.output[0]}_pooled", taken)
            flat = helper.make_node("Flatten", [pooled], [node.output[0]], name=_fresh(f"{node.name}_flatten", taken), axis=1)
            node.output[0] = pooled
            nodes.append(flat)
    del graph.node[:]
    graph.node.extend(nodes)


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _flatten_after_pool(graph: onnx.GraphProto) -> None:
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type not in ("Reshape", "Squeeze"):
            continue
        src = producers.get(node.input[0])
        if src is None or src.op_type not in ("GlobalAveragePool", "GlobalMaxPool"):
            continue
        if node.op_type == "Squeeze":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axes = attrs.get("axes") or (_const_ints(graph, node.input[1]) if len(node.input) > 1 else None)
            if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
                continue  # a squeeze without axes also drops a batch of 1
        node.op_type = "Flatten"
        del node.input[1:]
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", 1))


def _gemm_weights_out_by_in(graph: onnx.GraphProto) -> list[str]:
    done = []
    inits = {t.name: t for t in graph.initializer}
    readers = Counter(i for n in graph.node for i in n.input)
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or readers[node.input[1]] != 1:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "transB" in attrs and attrs["transB"].i == 1:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2:
            continue
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), node.input[1]))
        if "transB" in attrs:
            attrs["transB"].i = 1
        else:
            node.attribute.append(helper.make_attribute("transB", 1))
        done.append(node.name)
    return done


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    removed = drop_dead_nodes(graph)
    dead_inits = drop_unused_initializers(graph)
    if removed or dead_inits:
        log.debug("removed %d dead nodes and %d unused initializers", removed, dead_inits)
