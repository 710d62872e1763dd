"""The yardstick of every validation: the bundle's float graph in ONNX Runtime FP32 on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FloatReference:
    """The float graph in ONNX Runtime FP32 (CPU): the yardstick every artifact is compared with."""

    def __init__(self, float_model: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(float_model), so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0], np.float32)
