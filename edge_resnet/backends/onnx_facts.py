"""What the backends check in an ONNX file before they build it, read once without its weights.

Each backend keeps its own precision checks and messages; this reads the file (their own errors for
a missing, corrupt or multi-input file are obscure) and reports the facts they check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.backends.base import read_onnx_structure
from edge_resnet.errors import BackendError

__all__ = ["OnnxFacts", "inspect_onnx"]


@dataclass(frozen=True)
class OnnxFacts:
    input_name: str
    input_dims: tuple[int | None, ...]  # of the image input; None: dynamic (or unknown)
    has_qdq: bool
    activation_dtypes: frozenset[str]  # element types of the activation QuantizeLinear outputs: "uint8"/"int8"
    uses_external_data: bool
    op_types: frozenset[str]
    has_float16: bool  # an fp16 initializer or a Cast to fp16
    output_names: tuple[str, ...] = ()

    @property
    def batch_dim(self) -> int | None:
        """The input's fixed batch size; None when dynamic."""
        return (self.input_dims[0] or None) if self.input_dims else None

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The input's dims after the batch (C, H, W for NCHW)."""
        return self.input_dims[1:]


def _quantize_dtype(node: Any, inits: dict[str, Any]) -> str | None:
    """uint8/int8 from a QuantizeLinear's zero point (its output type); None when not an initializer."""
    from onnx import helper

    if len(node.input) < 3 or not node.input[2]:
        return "uint8"  # the ONNX default without a zero point
    if node.input[2] not in inits:
        return None
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(inits[node.input[2]].data_type)))


def inspect_onnx(onnx_path: Path, backend: str) -> OnnxFacts:
    """The facts about ``onnx_path``; BackendError unless it has exactly one image input (``backend``
    names who expects it, e.g. "ONNX Runtime")."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = read_onnx_structure(onnx_path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BackendError(f"{onnx_path} has {len(inputs)} inputs; the {backend} backend expects one image input")
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim)
    quants = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    f16 = onnx.TensorProto.FLOAT16
    has_f16 = any(i.data_type == f16 for i in graph.initializer) or any(
        a.name == "to" and a.i == f16 for n in graph.node if n.op_type == "Cast" for a in n.attribute
    )
    return OnnxFacts(
        input_name=inputs[0].name,
        input_dims=dims,
        has_qdq=bool(quants),
        activation_dtypes=frozenset(d for d in (_quantize_dtype(n, inits) for n in quants) if d),
        uses_external_data=any(uses_external_data(t) for t in graph.initializer),
        op_types=frozenset(n.op_type for n in graph.node),
        has_float16=has_f16,
        output_names=tuple(o.name for o in graph.output),
    )
