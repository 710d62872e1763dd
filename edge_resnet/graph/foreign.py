"""The passes that bring a graph from any exporter to the canonical form, in order.

1. ``opset``: below 13 -> 13 (onnx.version_converter), for per-channel Q/DQ.
2. ``layout``: an NHWC graph anchored in NCHW (:mod:`edge_resnet.graph.layout`).
3. ``onnxruntime``: ORT's offline basic level -- constant folding, no-op Cast/Identity removal,
   Transpose cancelling, Conv + Add/Mul, MatMul + Add -> Gemm (:mod:`edge_resnet.graph.ort_optimize`);
   then, for an NHWC graph, the proof that no Transpose is left.
4. ``affine``: decomposed BatchNorm chains -> ``x * s + t`` (:mod:`edge_resnet.graph.affine`), and
   ORT once more to fold those that follow a Conv into it.
5. ``onnxslim``: ``Pad`` + ``Conv`` -> the conv's pads (:mod:`edge_resnet.graph.slim`).
6. ``maxpool-pad``: ``Pad`` + ``MaxPool`` where exact (:mod:`edge_resnet.graph.pool_pad`).

Steps 3-5 run only when the graph has something for them (ops outside the canonical set, a Conv
followed by a constant Add/Mul, a Pad), so a graph that is already canonical (every zoo export) is
left byte for byte as it is.
"""

from __future__ import annotations

import onnx

from edge_resnet.graph import layout
from edge_resnet.graph.affine import collapse_affine
from edge_resnet.graph.opset import upgrade_opset
from edge_resnet.graph.ort_optimize import ort_basic
from edge_resnet.graph.passes import Pass, PassOutput
from edge_resnet.graph.pool_pad import merge_pad_into_maxpool
from edge_resnet.graph.slim import slim

# what a BN-folded ResNet is made of; anything else is for ONNX Runtime's basic level to simplify
CANONICAL_OPS = frozenset({"Conv", "Relu", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                           "Flatten", "Gemm", "BatchNormalization", "Softmax", "Pad", "ReduceMean", "ReduceMax", "Clip"})
_CONST_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


def _conv_then_constant_op(model: onnx.ModelProto) -> bool:
    consts = {t.name for t in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    convs = {n.output[0] for n in model.graph.node if n.op_type == "Conv"}
    return any(n.op_type in _CONST_ELEMENTWISE and any(i in convs for i in n.input) and any(i in consts for i in n.input)
               for n in model.graph.node)


def needs_ort(model: onnx.ModelProto) -> bool:
    return any(n.op_type not in CANONICAL_OPS for n in model.graph.node) or _conv_then_constant_op(model)


class ForeignPasses:
    """The pass list for one graph; holds what earlier passes found (was it NHWC, did affine change it)."""

    def __init__(self) -> None:
        self.nhwc_shape: str | None = None
        self.affine_changed = False

    def passes(self) -> list[tuple[str, Pass]]:
        return [("opset", upgrade_opset), ("layout", self._layout), ("onnxruntime", self._ort),
                ("affine", self._affine), ("onnxruntime", self._ort_after_affine), ("onnxslim", self._slim),
                ("maxpool-pad", merge_pad_into_maxpool)]

    def _layout(self, model: onnx.ModelProto) -> PassOutput:
        if layout.channels_last(model):
            self.nhwc_shape = layout.input_shape_text(model)
        return layout.to_nchw(model)

    def _ort(self, model: onnx.ModelProto) -> PassOutput:
        out = ort_basic(model) if needs_ort(model) else PassOutput(model)
        if self.nhwc_shape is not None:
            layout.check_no_transposes(out.model, self.nhwc_shape)
        return out

    def _affine(self, model: onnx.ModelProto) -> PassOutput:
        out = collapse_affine(model)
        self.affine_changed = bool(out.changes)
        return out

    def _ort_after_affine(self, model: onnx.ModelProto) -> PassOutput:
        return ort_basic(model) if self.affine_changed and _conv_then_constant_op(model) else PassOutput(model)

    def _slim(self, model: onnx.ModelProto) -> PassOutput:
        producers = {o: n for n in model.graph.node for o in n.output}
        pad_conv = any(n.op_type == "Conv" and producers.get(n.input[0]) is not None
                       and producers[n.input[0]].op_type == "Pad" for n in model.graph.node)
        return slim(model) if pad_conv else PassOutput(model)
