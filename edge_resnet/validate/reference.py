"""The yardstick of every validation: the bundle's float graph in ONNX Runtime FP32 on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_resnet.backends.base import Runner
from edge_resnet.ort_session import cpu_session


class FloatReference(Runner):
    """The float graph in ONNX Runtime FP32 (CPU): the yardstick every artifact is compared with."""

    thread_safe = True  # an InferenceSession's run() may be called from several threads

    def __init__(self, float_model: Path, threads: int | None = None) -> None:
        self.session = cpu_session(float_model, threads=threads)
        node = self.session.get_inputs()[0]
        self.input_name = node.name
        self.sample_shape = tuple(d if isinstance(d, int) else None for d in node.shape[1:])

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)
