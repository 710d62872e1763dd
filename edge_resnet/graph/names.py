"""Fresh tensor and node names for graph rewrites: one generator for every pass."""

from __future__ import annotations

import onnx


class FreshNames:
    """Names that collide with nothing in the graph (initializers, inputs, outputs, value_info, nodes)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.used: set[str] = {t.name for t in graph.initializer}
        self.used |= {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
        for node in graph.node:
            self.used.add(node.name)
            self.used.update(node.input)
            self.used.update(node.output)

    def new(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name
