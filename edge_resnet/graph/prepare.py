"""Any ResNet ONNX graph -> the canonical, BN-folded float graph (no torch needed).

The steps, each a pass of :mod:`edge_resnet.graph.passes` (verified against its input on a probe
batch when ``verify``): the foreign-graph passes of :mod:`edge_resnet.graph.foreign` (opset, NHWC,
ONNX Runtime's basic level, decomposed BatchNorm, Pad merging), our BatchNormalization fold, the
canonical names and head forms of :mod:`edge_resnet.graph.canonical`, and the head
(:mod:`edge_resnet.graph.head`: kind, no trailing Softmax, output ``logits`` or ``features``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from edge_resnet.errors import GraphError
from edge_resnet.graph.canonical import canonicalize
from edge_resnet.graph.fold_bn import FoldSummary, fold_batchnorm
from edge_resnet.graph.foreign import ForeignPasses
from edge_resnet.graph.head import HeadKind, HeadPass, single_output
from edge_resnet.graph.ort_optimize import describe_change
from edge_resnet.graph.passes import CanonReport, PassOutput, op_counts, run_passes

INPUT_NAME = "input"


@dataclass
class FloatGraph:
    model: onnx.ModelProto
    fold: FoldSummary
    output_name: str
    kind: HeadKind = HeadKind.CLASSIFIER
    canon: CanonReport = field(default_factory=CanonReport)


class _FoldBN:
    def __init__(self) -> None:
        self.summary = FoldSummary()

    def __call__(self, model: onnx.ModelProto) -> PassOutput:
        folded, self.summary = fold_batchnorm(model)
        if not self.summary.folded and not self.summary.converted_to_affine:
            return PassOutput(model)
        return PassOutput(folded, [str(self.summary).splitlines()[0]])


def _canonical(model: onnx.ModelProto) -> PassOutput:
    changes: list[str] = []
    out = canonicalize(model, changes)
    return PassOutput(out, describe_change(op_counts(model), op_counts(out), "head forms") + changes, adopt=True)


def prepare_float_graph(model: onnx.ModelProto, head: HeadKind | str | None = None, verify: bool = True) -> FloatGraph:
    """Canonicalize a graph of any exporter, fold BatchNorm, read its head (``head`` overrides it)."""
    _check_convolutional(model)
    single_output(model)  # before the work: a graph with several outputs is refused
    fold, head_pass = _FoldBN(), HeadPass(head)
    passes = ForeignPasses().passes() + [("fold-bn", fold), ("canonical", _canonical), ("head", head_pass)]
    graph, report = run_passes(model, passes, verify=verify)
    graph.producer_name = "edge-resnet"
    assert head_pass.kind is not None
    return FloatGraph(graph, fold.summary, graph.graph.output[0].name, head_pass.kind, report)


def _check_convolutional(model: onnx.ModelProto) -> None:
    if any(n.op_type == "Conv" for n in model.graph.node):
        return
    ops = ", ".join(sorted({n.op_type for n in model.graph.node})[:8]) or "none"
    raise GraphError(f"the graph has no convolution (its ops: {ops}); expected a ResNet-like image model",
                     "pass the ONNX file of the convolutional network itself (a ResNet exported with its image input)")
