"""Removing what no graph output depends on: dead nodes, then unused initializers."""

from __future__ import annotations

import onnx

__all__ = ["drop_dead_nodes", "drop_unused_initializers"]


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove the nodes no graph output depends on (``graph.node`` in topological order); how many."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    return removed


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove the initializers no node and no graph output reads, keeping the others' order; how many."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    removed = len(graph.initializer) - len(keep)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return removed
