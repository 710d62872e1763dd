"""The one helper that opens a CPU ONNX Runtime session for edge-resnet's own work: the float
reference, calibration, per-layer errors, graph checks. (The onnxruntime backend configures its
deployment sessions itself: backends/onnxruntime.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx


def cpu_session(model: onnx.ModelProto | str | Path, *, optimization: str = "ORT_ENABLE_ALL",
                threads: int | None = None, **session_kwargs: Any) -> Any:
    """An InferenceSession on the CPU execution provider, logging only errors. ``optimization``: the name
    of a GraphOptimizationLevel (ORT_DISABLE_ALL runs the graph as written)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
    if threads:
        so.intra_op_num_threads = int(threads)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"], **session_kwargs)
