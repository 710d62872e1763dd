"""Any ResNet ONNX graph -> the canonical, BN-folded float graph (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edge_resnet.graph.canonical import canonicalize
from edge_resnet.graph.fold_bn import FoldSummary, fold_batchnorm

INPUT_NAME = "input"


@dataclass
class FloatGraph:
    model: onnx.ModelProto
    fold: FoldSummary
    output_name: str


def prepare_float_graph(model: onnx.ModelProto) -> FloatGraph:
    """Fold BatchNorm into convs and canonicalize (names, global pools), for graphs of any exporter."""
    folded, summary = fold_batchnorm(model)
    graph = canonicalize(folded)
    graph.producer_name = "edge-resnet"
    return FloatGraph(graph, summary, graph.graph.output[0].name)
