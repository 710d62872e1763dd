"""The spec's normalisation as ONNX ops in front of a model (edge_resnet.graph.input_normalization), checked in
ONNX Runtime against the host path (PreprocessSpec.apply): bit for bit, for every frame/model channel order."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.errors import DataError
from edge_resnet.graph.input_normalization import (
    FRAMES_INPUT,
    PIXELS_INPUT,
    with_frame_input,
    with_pixel_input,
)

SIZE = 12


def _conv_graph(n_inputs: int = 1) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    inputs = [helper.make_tensor_value_info(f"input{'' if i == 0 else i}", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
              for i in range(n_inputs)]
    graph = helper.make_graph([helper.make_node("Conv", ["input", "W"], ["logits"], pads=[1, 1, 1, 1])], "g", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, SIZE, SIZE])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the normalised tensor, the model's output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    normalized, out = session.run(["input", "logits"], feeds)
    return normalized, out


@pytest.mark.parametrize("cast_first", [False, True], ids=["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("frame_order", ["rgb", "bgr"])
@pytest.mark.parametrize("model_order", ["rgb", "bgr"])
def test_frame_input_gives_the_host_paths_numbers_bit_for_bit(frame_order: str, model_order: str,
                                                              cast_first: bool) -> None:
    spec = PreprocessSpec(input_size=SIZE, resize=SIZE, channel_order=model_order, mean=(0.5, 0.25, 0.125),
                          std=(0.2, 0.3, 0.4))
    base = _conv_graph()
    model = with_frame_input(base, spec, frame_order, cast_first=cast_first)
    onnx.checker.check_model(model, full_check=True)
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [(FRAMES_INPUT, TensorProto.UINT8)]
    readers = [n.op_type for n in model.graph.node if FRAMES_INPUT in n.input]
    assert readers == (["Cast"] if cast_first else ["Transpose"])  # TensorRT: uint8 converts before any other layer
    frames = np.random.default_rng(1).integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    normalized, out = _run(model, {FRAMES_INPUT: frames})
    host = spec.apply_batch(list(frames), frame_order)
    np.testing.assert_array_equal(normalized, host)
    reference = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(out, reference.run(None, {"input": host})[0])


def test_pixel_input_for_deepstream_gives_the_host_paths_numbers_bit_for_bit() -> None:
    spec = PreprocessSpec(input_size=SIZE, resize=SIZE)  # ImageNet's per-channel std
    model = with_pixel_input(_conv_graph(), spec)
    onnx.checker.check_model(model, full_check=True)
    rgb = np.random.default_rng(2).integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    pixels = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)  # nvinfer, net-scale-factor=1
    normalized, _ = _run(model, {PIXELS_INPUT: pixels})
    np.testing.assert_array_equal(normalized, spec.apply_batch(list(rgb), "rgb"))


def test_the_new_input_takes_a_fresh_name_and_only_one_image_input_is_taken() -> None:
    base = _conv_graph()
    base.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), FRAMES_INPUT))
    model = with_frame_input(base, PreprocessSpec(input_size=SIZE, resize=SIZE), ChannelOrder.BGR)
    assert model.graph.input[0].name not in {FRAMES_INPUT, "input"}
    with pytest.raises(DataError, match="2 inputs"):
        with_frame_input(_conv_graph(2), PreprocessSpec(input_size=SIZE, resize=SIZE), "bgr")
