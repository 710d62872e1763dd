"""``--exclude`` names checked against the graph: a name that matches no layer would silently quantize
everything, so it is an error that lists the closest real names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import onnx

from edge_resnet.errors import QuantizationError
from edge_resnet.quant.qdq import INT8_OPS


def check_exclude(model: onnx.ModelProto, exclude: Iterable[str]) -> None:
    """QuantizationError naming every entry of ``exclude`` that is neither a quantizable layer's name nor
    an op type of the graph (the two things QuantConfig.exclude matches)."""
    layers = [n.name for n in model.graph.node if n.op_type in INT8_OPS and n.name]
    names = set(layers) | {n.name for n in model.graph.node if n.name}
    op_types = {n.op_type for n in model.graph.node}
    unknown = [e for e in exclude if e not in names and e not in op_types]
    if not unknown:
        return
    hints = []
    for e in unknown:
        close = difflib.get_close_matches(e, layers + sorted(op_types & INT8_OPS), n=3, cutoff=0.5)
        hints.append(f"{e!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    example = ", ".join(layers[:4] + (["..."] if len(layers) > 4 else []))
    raise QuantizationError(
        f"--exclude {', '.join(hints)}: no layer of the graph has that name or op type, so nothing would be kept "
        "float", f"use layer names of the graph ({example}) or op types ({', '.join(sorted(op_types & INT8_OPS))})")
