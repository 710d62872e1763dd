"""Load options are declared with their types: an unknown one or one of another type is one BackendError."""

from __future__ import annotations

import pytest

from edge_resnet.backends.base import check_load_options, get_backend
from edge_resnet.errors import BackendError
from edge_resnet.types import BackendName


@pytest.mark.parametrize("backend, options", [
    (BackendName.ONNXRUNTIME, {"threads": 2, "hint": "latency", "frame_input": None}),
    (BackendName.OPENVINO, {"threads": None, "hint": "throughput", "inference_precision": ""}),
    (BackendName.TENSORRT, {"trt": object(), "cuda": object(), "device_index": 0, "allow_device_mismatch": True}),
])
def test_declared_options_of_their_types_pass(backend, options):
    check_load_options(get_backend(backend), options)


@pytest.mark.parametrize("backend, options, problem", [
    (BackendName.ONNXRUNTIME, {"thread": 2}, "unknown load option(s) thread for the onnxruntime backend"),
    (BackendName.ONNXRUNTIME, {"threads": "2"},
     "load option threads='2' for the onnxruntime backend is a string, expected an integer or None"),
    (BackendName.OPENVINO, {"threads": True},
     "load option threads=True for the openvino backend is true/false, expected an integer or None"),
    (BackendName.OPENVINO, {"inference_precision": 16},
     "load option inference_precision=16 for the openvino backend is an integer, expected a string or None"),
    (BackendName.ONNXRUNTIME, {"frame_input": "bgr"},
     "load option frame_input='bgr' for the onnxruntime backend is a string, expected FrameInput or None"),
    (BackendName.TENSORRT, {"allow_device_mismatch": "yes"},
     "load option allow_device_mismatch='yes' for the tensorrt backend is a string, expected true/false"),
])
def test_unknown_or_mistyped_option_is_one_backend_error(backend, options, problem):
    with pytest.raises(BackendError) as exc:
        check_load_options(get_backend(backend), options)
    assert exc.value.problem == problem and exc.value.fix
