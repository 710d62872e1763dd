"""One index of an ONNX graph's top level, for the passes that rewrite it (BN folding, Q/DQ insertion).

Producers, readers, initializers and constants, taken when the index is made: a pass that rewires
the graph afterwards still looks things up in the graph as it was (the Q/DQ writer relies on it).
A read inside a subgraph (If/Loop bodies reading an outer tensor) counts as a read by its node.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edge_resnet.errors import GraphError

__all__ = ["DEFAULT_DOMAINS", "GraphIndex", "constant_value", "node_uses"]

DEFAULT_DOMAINS = ("", "ai.onnx")


class GraphIndex:
    """``producer``/``consumers``: tensor -> node(s); ``producer_index``/``consumer_indices``: the same
    as positions in ``graph.node``; ``uses``: readers per tensor, a graph output counting as one;
    ``initializers``; ``constants``: initializers and the tensors of ``Constant(value=...)`` nodes;
    ``first_input``: tensor -> first input of the node that makes it."""

    def __init__(self, graph: onnx.GraphProto | onnx.ModelProto) -> None:
        if isinstance(graph, onnx.ModelProto):
            graph = graph.graph
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = dict(self.initializers)
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        self.inputs = {vi.name for vi in graph.input}
        self.outputs = {vi.name for vi in graph.output}
        self.producer_index: dict[str, int] = {}
        self.consumer_indices: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for o in node.output:
                if o:
                    self.producer_index[o] = i
            for name in node_uses(node):
                self.consumer_indices.setdefault(name, []).append(i)
        nodes = graph.node
        self.producer = {o: nodes[i] for o, i in self.producer_index.items()}
        self.consumers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
        for name, idx in self.consumer_indices.items():
            self.consumers[name] = [nodes[i] for i in idx]
        self.uses = Counter({k: len(v) for k, v in self.consumer_indices.items()})
        for name in self.outputs:
            self.uses[name] += 1
        # snapshot: the Q/DQ writer rewires inputs, scale lookups must see the float graph
        self.first_input = {o: n.input[0] for n in nodes for o in n.output if n.input}

    def const(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer, a Constant, or an Identity of one."""
        if not name or depth > 16:
            return None
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise GraphError(
                    f"initializer '{name}' is stored in external data that is not loaded",
                    "load the model with edge_resnet.graph.load_onnx, which reads external weights into memory",
                )
            return numpy_helper.to_array(t)
        if name in self.inputs:
            return None  # a real run-time input
        i = self.producer_index.get(name)
        if i is None:
            return None
        node = self.graph.node[i]
        if node.domain not in DEFAULT_DOMAINS:
            return None
        if node.op_type == "Constant":
            return constant_value(node)
        if node.op_type == "Identity":
            return self.const(node.input[0], depth + 1)
        return None

    def label(self, i: int) -> str:
        node = self.graph.node[i]
        return node.name or f"{node.op_type}({node.output[0] if node.output else i})"


def node_uses(node: onnx.NodeProto) -> Iterator[str]:
    """Tensor names a node reads, including those its subgraphs read from the outer scope."""
    yield from (n for n in node.input if n)
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for sn in sub.node:
                yield from node_uses(sn)
            yield from (vi.name for vi in sub.output)


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
    return None
