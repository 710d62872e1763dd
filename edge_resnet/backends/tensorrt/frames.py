"""TensorRT's frame input: an engine of its own whose input is the camera's uint8 ``N x S x S x 3`` frames.

OpenVINO and ONNX Runtime add the normalisation when the model is loaded; a TensorRT engine is fixed when it is
built, so the frame graph (``model.frames.onnx``) is written at compile time and built beside the float-input
engine (at compile time when this machine is the target, else ``./build_engine.sh --frames`` on the device).

What TensorRT allows, and where it was read:

* UINT8 network inputs exist from TensorRT 8.5 ("UINT8 input is supported start TRT8.5", NVIDIA/TensorRT#1503).
  They must be converted to float before any other layer: ``DataType::kUINT8`` "Use the IdentityLayer to convert
  kUINT8 network-level inputs to {kFLOAT, kHALF} prior to use with other TensorRT layers" (include/
  NvInferRuntimeBase.h, 8.6 and 10.x), and "All UINT8 inputs must directly feed into a cast layer in TensorRT. No
  other layers support UINT8 inputs, even just data-movement ops like reshape / transpose" (NVIDIA/TensorRT#3985).
  So the graph casts first (``with_frame_input(cast_first=True)``), then transposes, swaps channels and normalises
  in float; the cast is exact, so the numbers are those of ONNX Runtime's frame graph.
* trtexec leaves a UINT8 input's type alone when ``--inputIOFormats`` is not given, and allows only the LINEAR
  format (samples/common/sampleEngines.cpp setupNetworkAndConfig, 10.x: ``case DataType::kUINT8: // Leave these
  as is``; ``setAllowedFormats(1U << kLINEAR)``), which for an NHWC tensor is its row-major byte order. The
  Python build leaves the parsed input as it is too.
* The channel order is fixed in the engine (``FRAMES_ORDER``, OpenCV's BGR); the runner reverses RGB frames while it
  copies them into its staging buffer, which it does anyway.
* Implicit INT8 builds (DLA on 8.x/10.x) get no frame graph: their calibration cache has no scales for the
  normalisation ops, and the builder wants one for every tensor feeding an INT8 layer (NVIDIA/TensorRT#4131,
  "Missing scale and zero-point for tensor input" for a Cast at the input).
"""

from __future__ import annotations

import onnx

from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.graph.input_normalization import with_frame_input

__all__ = ["FRAMES_ORDER", "frames_graph"]

FRAMES_ORDER = ChannelOrder.BGR


def frames_graph(model: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """``model`` taking uint8 ``N x S x S x 3`` BGR frames, the cast first (see the module docstring)."""
    return with_frame_input(model, spec, FRAMES_ORDER, cast_first=True)
