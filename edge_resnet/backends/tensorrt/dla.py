"""NVIDIA's DLA route from a Q/DQ model: Q/DQ scales -> calibration cache for the Q/DQ-free graph.

DLA takes INT8 only from implicit quantization (NVIDIA/TensorRT#2222: "if you convert it to implicit quantization,
it would work with DLA"). With implicit quantization deprecated, NVIDIA's suggested workflow is to quantize
explicitly and run the Q/DQ Translator "to obtain the calib.cache and layer_arg.txt files, which can be used with the
non-quantized model to generate a DLA loadable" (NVIDIA/Model-Optimizer PR #1661). The translator
(NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator/qdq_translator.py):

1. takes each activation QuantizeLinear's scale as the scale of the tensor it quantizes (``extract_precision_config``);
2. copies scales across ops that do not change them, first downstream then upstream
   (``infer_unchanged_scales``; ``DEFAULT_OPS_TO_INFER_ADJACENT_SCALES`` = MaxPool, Flatten, Relu, Pad, Transpose,
   Reshape, Squeeze, Sigmoid, of which a ResNet has all but the last three's special cases);
3. lists the consumers of every tensor still without a scale as FP16 layers (``--layerPrecisions``), because on DLA
   "a tensor without a usable scale typically forces either that region to run in FP16 or a GPU fallback"
   (PR #1661).

We do 1 and 2 the same way, on our own Q/DQ graph, so the DLA engine uses the very scales the GPU engine uses. For
3 we have more than a Q/DQ model: the calibration statistics of every activation (TensorRT profiles calibrate all of
them), so a tensor the translator would leave without a scale (a conv output feeding a fused residual add, a pooled
output, the logits) gets its scale from the same calibration instead of pushing its consumers to FP16. The graph
TensorRT builds from is the float graph the Q/DQ graph was made from: the Q/DQ graph is that graph plus Q/DQ nodes,
so the tensor names agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from edge_resnet.errors import QuantizationError

# the translator's DEFAULT_OPS_TO_INFER_ADJACENT_SCALES minus Sigmoid (its scale is not copied but recomputed)
ADJACENT_SCALE_OPS = frozenset({"MaxPool", "Flatten", "Relu", "Pad", "Transpose", "Reshape", "Squeeze"})
QDQ, PROPAGATED, CALIBRATION = "qdq", "propagated", "calibration"


@dataclass
class ImplicitScales:
    """Scale (amax / 127) per tensor of the float graph, and where each came from."""

    scales: dict[str, float]
    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # tensors nothing gave a scale (their consumers run FP16)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.sources.values()))


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph input and every node output that is not a constant, in graph order (what TensorRT calibrates)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    out = [i.name for i in g.input if i.name not in inits]
    out += [o for n in g.node if n.op_type != "Constant" for o in n.output if o]
    return out


def _propagate(model: onnx.ModelProto, scales: dict[str, float], sources: dict[str, str]) -> None:
    """The translator's ``infer_unchanged_scales``: a downstream pass, then an upstream one."""
    nodes = [n for n in model.graph.node if n.op_type in ADJACENT_SCALE_OPS and n.input and n.output]
    for node in nodes:  # graph order is topological
        src, dst = node.input[0], node.output[0]
        if src in scales and dst not in scales:
            scales[dst], sources[dst] = scales[src], PROPAGATED
    for node in reversed(nodes):
        src, dst = node.input[0], node.output[0]
        if dst in scales and src not in scales:
            scales[src], sources[src] = scales[dst], PROPAGATED


def implicit_scales(float_model: onnx.ModelProto, quantizers: Mapping[str, tuple[float, int]],
                    calibrated: Mapping[str, float] | None = None) -> ImplicitScales:
    """Scales for a calibration cache of ``float_model``: the Q/DQ ones, propagated as the Q/DQ Translator does,
    then the calibration's for the rest (``calibrated``: tensor -> scale)."""
    tensors = activation_tensors(float_model)
    known = set(tensors)
    scales: dict[str, float] = {}
    sources: dict[str, str] = {}
    for tensor, (scale, zero_point) in quantizers.items():
        if zero_point != 0:
            raise QuantizationError(f"tensor {tensor!r} has zero point {zero_point}; a TensorRT calibration cache is "
                                    "symmetric (zero point 0)", "quantize for TensorRT in s8s8")
        if tensor in known:
            scales[tensor], sources[tensor] = float(scale), QDQ
    _propagate(float_model, scales, sources)
    for tensor in tensors:
        if tensor not in scales and calibrated and tensor in calibrated:
            scales[tensor], sources[tensor] = float(calibrated[tensor]), CALIBRATION
    missing = [t for t in tensors if t not in scales]
    ordered = {t: scales[t] for t in tensors if t in scales}
    return ImplicitScales(ordered, {t: sources[t] for t in ordered}, missing)
