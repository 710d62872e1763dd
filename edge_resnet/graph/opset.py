"""Bring graphs below opset 13 up to 13 with ONNX's own version converter.

The Q/DQ graph quantizes weights per output channel: ``DequantizeLinear(axis=...)`` exists from
opset 13 on, so an opset-11/12 graph would quantize into a model ``onnx.checker`` rejects.
"""

from __future__ import annotations

import onnx
from onnx import version_converter

from edge_resnet.errors import GraphError
from edge_resnet.graph.passes import PassOutput

QDQ_OPSET = 13  # per-channel DequantizeLinear (axis attribute)


def default_opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return None


def upgrade_opset(model: onnx.ModelProto, target: int = QDQ_OPSET) -> PassOutput:
    opset = default_opset(model)
    if opset is None or opset >= target:
        return PassOutput(model)
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError/C++ errors
        raise GraphError(
            f"cannot convert the graph from opset {opset} to opset {target} (needed for per-channel int8 weights): "
            f"{' '.join(str(e).split())[:300]}",
            f"export the model again with opset_version={target} or newer",
        ) from e
    return PassOutput(converted, [f"opset {opset} -> {target} (onnx.version_converter)"])
