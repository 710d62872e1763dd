"""ONNX Runtime's offline basic-level optimisation, as a graph pass.

``ORT_ENABLE_BASIC`` with ``optimized_model_filepath`` writes the graph after ORT's
provider-independent rewrites, all of them plain ONNX ops: constant folding (Shape/Concat/Reshape
chains, constant Casts), removal of Identity and of Casts to the same type, the transpose optimiser
(cancels Transpose pairs, pushes them through elementwise ops, Pad, reductions), Conv + Add/Mul
folding and MatMul + Add -> Gemm. Two of its fusions are switched off here:

- ``ConvBNFusion``: BatchNormalization is folded by :mod:`edge_resnet.graph.fold_bn`, verified and
  reported per node;
- ``PadFusion``: it folds a zero ``Pad`` into a following MaxPool as well as into a Conv, which changes
  the result where a pool window sees only negative values (MaxPool pads with -inf; see
  onnx/optimizer#318 for the same bug in onnx-optimizer). ``Pad`` + ``Conv`` is merged by onnxslim,
  ``Pad`` + ``MaxPool`` only where it is exact (:mod:`edge_resnet.graph.pool_pad`).

Levels above basic are not used: they write ORT-only ops (``com.microsoft``) and layouts for this
machine's CPU.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from edge_resnet.errors import GraphError
from edge_resnet.graph.passes import PassOutput, op_counts

DISABLED = ("ConvBNFusion", "PadFusion")
_DEFAULT_DOMAINS = ("", "ai.onnx")


def ort_basic(model: onnx.ModelProto) -> PassOutput:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edge-resnet-ort-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED))
        except Exception as e:  # noqa: BLE001 - ORT's own exception types
            raise GraphError(f"ONNX Runtime cannot load the graph: {' '.join(str(e).split())[:300]}",
                             "check the model with onnx.checker.check_model(model, full_check=True)") from e
        optimized = onnx.load(str(dst))
    _keep_used_domains(optimized, model)
    optimized.producer_name, optimized.producer_version = model.producer_name, model.producer_version
    return PassOutput(optimized, describe_change(op_counts(model), op_counts(optimized), "ONNX Runtime basic level"))


def _keep_used_domains(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """ORT writes an opset import for every domain it knows; keep those the graph uses (and the original's)."""
    used = {n.domain for n in model.graph.node} | {o.domain for o in original.opset_import}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in _DEFAULT_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def describe_change(before: Counter, after: Counter, tool: str) -> list[str]:
    """One line: the ops whose count changed, e.g. 'Transpose 133 -> 0, Cast 302 -> 0 (tool)'; [] if none."""
    changed = [(op, before.get(op, 0), after.get(op, 0)) for op in sorted(set(before) | set(after))
               if before.get(op, 0) != after.get(op, 0)]
    if not changed:
        return []
    changed.sort(key=lambda c: -abs(c[1] - c[2]))
    return [", ".join(f"{op} {a} -> {b}" for op, a, b in changed) + f" ({tool})"]
