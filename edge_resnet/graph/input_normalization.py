"""The preprocessing spec's normalisation as ONNX ops in front of a model, so the engine does it.

Two entry points, one arithmetic. The ops are the spec's own float32 steps in its order
(``pixel / 255``, ``- mean``, ``/ std``, see ``PreprocessSpec._lut``), so an executor that runs them
as written (ONNX Runtime) gives the host path's numbers bit for bit:

* :func:`with_frame_input`: a uint8 ``N x S x S x 3`` input (camera frames after resize + crop, in a
  given channel order) -> NHWC -> NCHW, channel swap, cast, normalisation. The runtime's ONNX
  Runtime path; with ``cast_first`` the cast comes first, TensorRT's frame graph (TensorRT takes uint8
  only as network I/O, converted to float before any other layer: see :mod:`edge_resnet.backends.tensorrt.frames`).
  The cast is exact, so both orders give the same floats.
* :func:`with_pixel_input`: a float32 NCHW input of raw 0..255 pixels in the model's channel order
  -> normalisation. DeepStream's graph: nvinfer then runs with ``net-scale-factor=1`` and zero
  offsets, which is exact whatever the per-channel std (one scalar scale is not).

The normalised tensor keeps the model's input name, so anything keyed on it (Q/DQ scales, a
TensorRT calibration cache) still applies; the new graph input gets its own name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.errors import DataError
from edge_resnet.graph.names import FreshNames

__all__ = ["FRAMES_INPUT", "PIXELS_INPUT", "with_frame_input", "with_pixel_input"]

FRAMES_INPUT = "frames"
PIXELS_INPUT = "pixels"
_PREFIX = "edge_resnet/normalize"


def _image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise DataError(f"the graph has {len(inputs)} inputs; normalisation goes in front of one NCHW image input")
    return inputs[0]


def _batch_dim(value: onnx.ValueInfoProto) -> int | str:
    dim = value.type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "N")


def _normalize(model: onnx.ModelProto, spec: PreprocessSpec, source: str, target: str, names: FreshNames,
               const_shape: tuple[int, ...]) -> list[onnx.NodeProto]:
    """``target = (source / 255 - mean) / std`` in float32, constants broadcast as ``const_shape``."""
    consts = {
        "scale": np.asarray(255, dtype=np.float32),
        "mean": np.asarray(spec.mean, dtype=np.float32).reshape(const_shape),
        "std": np.asarray(spec.std, dtype=np.float32).reshape(const_shape),
    }
    names_of = {key: names.new(f"{_PREFIX}/{key}") for key in consts}
    for key, value in consts.items():
        model.graph.initializer.append(numpy_helper.from_array(value, names_of[key]))
    unit, centred = names.new(f"{_PREFIX}/unit"), names.new(f"{_PREFIX}/centred")
    return [
        helper.make_node("Div", [source, names_of["scale"]], [unit], name=names.new(f"{_PREFIX}/div255")),
        helper.make_node("Sub", [unit, names_of["mean"]], [centred], name=names.new(f"{_PREFIX}/sub_mean")),
        helper.make_node("Div", [centred, names_of["std"]], [target], name=names.new(f"{_PREFIX}/div_std")),
    ]


def _replace_input(model: onnx.ModelProto, old: onnx.ValueInfoProto, new: onnx.ValueInfoProto,
                   nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = [i for i, v in enumerate(graph.input) if v.name == old.name][0]
    graph.input.remove(graph.input[index])
    graph.input.insert(index, new)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    return out


def with_frame_input(model: onnx.ModelProto, spec: PreprocessSpec, frame_order: ChannelOrder | str, *,
                     cast_first: bool = False) -> onnx.ModelProto:
    """``model`` taking uint8 ``N x S x S x 3`` frames in ``frame_order`` (see the module docstring)."""
    frame_order = ChannelOrder(getattr(frame_order, "value", frame_order))
    old = _image_input(model)
    size = spec.input_size
    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = FreshNames(work.graph)
    source = names.new(FRAMES_INPUT)
    # layout and channel order on the uint8 frames (a quarter of the bytes), then float: in ONNX Runtime the
    # prefix then costs about what host normalisation did, where normalising in NHWC first cost more
    nodes: list[onnx.NodeProto] = []
    current = source
    as_float = names.new(f"{_PREFIX}/float")
    cast = helper.make_node("Cast", [current], [as_float], to=TensorProto.FLOAT, name=names.new(f"{_PREFIX}/cast"))
    if cast_first:
        nodes.append(cast)
        current = as_float
    nchw = names.new(f"{_PREFIX}/nchw")
    nodes.append(helper.make_node("Transpose", [current], [nchw], perm=[0, 3, 1, 2], name=names.new(f"{_PREFIX}/to_nchw")))
    current = nchw
    if frame_order is not spec.channel_order:  # the frame's channel c is the model's channel 2 - c
        swapped, order = names.new(f"{_PREFIX}/swapped"), names.new(f"{_PREFIX}/reverse")
        work.graph.initializer.append(numpy_helper.from_array(np.asarray([2, 1, 0], dtype=np.int64), order))
        nodes.append(helper.make_node("Gather", [current, order], [swapped], axis=1, name=names.new(f"{_PREFIX}/swap")))
        current = swapped
    if not cast_first:
        cast.input[0] = current
        nodes.append(cast)
        current = as_float
    nodes += _normalize(work, spec, current, old.name, names, (1, 3, 1, 1))
    new = helper.make_tensor_value_info(source, TensorProto.UINT8, [_batch_dim(old), size, size, 3])
    return _replace_input(work, old, new, nodes)


def with_pixel_input(model: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """``model`` taking float32 NCHW pixels 0..255 in the model's channel order (see the module docstring)."""
    old = _image_input(model)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = FreshNames(work.graph)
    source = names.new(PIXELS_INPUT)
    nodes = _normalize(work, spec, source, old.name, names, (1, 3, 1, 1))
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in old.type.tensor_type.shape.dim]
    new = helper.make_tensor_value_info(source, TensorProto.FLOAT, dims)
    return _replace_input(work, old, new, nodes)
