"""Small enums shared across the pipeline."""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """What a compiled artifact computes in. INT8 means: from the Q/DQ graph."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class ActivationFormat(str, Enum):
    """How activations are stored in the Q/DQ graph.

    S8S8: signed int8 activations, zero point 0 (TensorRT explicit quantization requires it).
    U8S8: unsigned int8 activations, zero point 128 (ONNX Runtime on x86 fuses QLinearConv with it).
    Weights are always signed int8, per output channel, symmetric.
    """

    S8S8 = "s8s8"
    U8S8 = "u8s8"


class BackendName(str, Enum):
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class Mode(str, Enum):
    """How a model is run: for the quickest single result, or for the most results per second.

    LATENCY: one inference at a time spread over all cores (the model's own runner). THROUGHPUT: the
    backend's throughput configuration (``Backend.throughput_config``), several inferences at once.
    A stream and the benchmark both take one.
    """

    LATENCY = "latency"
    THROUGHPUT = "throughput"

    @property
    def hint(self) -> str:
        """The performance hint the runner is loaded with (OpenVINO's PERFORMANCE_HINT)."""
        return self.value


class QuantMode(str, Enum):
    """EXPLICIT: a Q/DQ graph. IMPLICIT: float graph + TensorRT calibration cache (TensorRT < 10)."""

    EXPLICIT = "explicit"
    IMPLICIT = "implicit"


class WeightRange(str, Enum):
    """The integer range of int8 weights.

    FULL: [-127, 127]. REDUCED: [-63, 63] (7 bits), so that x86 CPUs without VNNI never saturate
    their int16 intermediate sums (see edge_resnet.host_cpu). AUTO: REDUCED when the compiling host
    is such a CPU, else FULL; a profile for x86 CPUs says AUTO, other targets FULL.
    """

    FULL = "full"
    REDUCED = "reduced"
    AUTO = "auto"
