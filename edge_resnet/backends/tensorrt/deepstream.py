"""DeepStream Gst-nvinfer files: a config nvinfer parses, its labels file, and the classifier graph it thresholds.

From the DeepStream nvinfer sources (libs/nvdsinfer, DeepStream 6.2 and later):

* ``NvDsInferContextImpl::parseLabelsFile`` (nvdsinfer_context_impl.cpp) reads one line per *output layer* and
  splits it on ';' (``m_Labels[line][word]``); the classifier looks labels up as
  ``m_Labels[attributeIndex][attributeValue]``, attribute index = output layer. A file with one label per line
  therefore names class 0 of each line only: the labels file holds one line, the classes ';'-separated.
* ``ClassifyPostprocessor::parseAttributesFromSoftmaxLayers`` (nvdsinfer_context_impl_output_parsing.cpp) starts
  at ``maxProbability = 0`` and takes a class only when ``probability > classifierThreshold && probability >
  maxProbability``: it expects a softmax output. On raw logits a frame whose best logit is <= 0 gets no label, and
  the shown confidence is a logit. So DeepStream gets its own graph, the classifier with a Softmax appended
  (``model.deepstream.onnx``, output ``probabilities``); the runtime keeps the logits graph.
* ``network-mode=1`` (INT8) builds INT8 only with an accessible ``int8-calib-file``; otherwise "INT8 calibration
  file not specified. Trying FP16 mode." (nvdsinfer_model_builder.cpp), and a weakly typed Q/DQ network needs the
  INT8 flag (NVIDIA/TensorRT#4021). For a Q/DQ network the file is only what turns the flag on: TensorRT ignores the
  calibrator there ("Calibrator won't be used in explicit precision mode"). Implicit builds need the cache with the
  device's header, which ``build_engine.sh`` writes.
* nvinfer computes ``net-scale-factor * (x - offsets)`` with one scalar scale (gstnvinfer_property_parser.cpp
  ``net-scale-factor``, per-channel ``offsets``), so a per-channel std (ImageNet's) cannot be reproduced there.
  The classifier graph therefore takes the raw 0..255 pixels nvinfer gives with ``net-scale-factor=1`` and zero
  offsets (input ``pixels``) and does the spec's mean/std itself (edge_resnet.graph.input_normalization): exact.
  Implicit-quantization builds (DLA) keep the scalar approximation: their calibration cache holds scales for the
  model's own tensors only.
* Headless bundles (output ``features``): ``network-type=100`` ("Other - Output layers will not be parsed by
  NvDsInferContext ... combined with gst-nvinfer feature to flow output tensors as metadata", nvdsinfer.h
  ``NvDsInferNetworkType_Other = 100``) and ``output-tensor-meta=1`` (gstnvinfer_property_parser.cpp
  ``CONFIG_GROUP_INFER_OUTPUT_TENSOR_META``), so features reach the app as tensors, not as class scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from edge_resnet.backends.tensorrt.plan import batch_shapes
from edge_resnet.data.preprocess import DeepStreamNormalization, PreprocessSpec
from edge_resnet.errors import BundleError

log = logging.getLogger(__name__)

# DeepStream NvDsInferNetworkMode (nvdsinfer.h): FP32 = 0, INT8 = 1, FP16 = 2
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
# NvDsInferFormat as model-color-format: RGB = 0, BGR = 1 (GRAY = 2)
COLOR_FORMAT: dict[str, int] = {"rgb": 0, "bgr": 1}
NETWORK_TYPE_CLASSIFIER = 1  # NvDsInferNetworkType: Detector = 0, Classifier = 1, ..., Other = 100
NETWORK_TYPE_OTHER = 100
PROBABILITIES = "probabilities"


def _input_hw(spec: Mapping[str, Any]) -> tuple[int, int]:
    size = spec["input_size"]
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def _fmt(x: float) -> str:
    return repr(float(x))


def _preprocessing_comments(spec: Mapping[str, Any], norm: DeepStreamNormalization | None) -> list[str]:
    comments = []
    if norm is None:
        comments.append("# mean/std are inside the ONNX graph (input 'pixels': raw 0..255 values), so nvinfer passes "
                        "pixels unscaled")
    elif norm.max_abs_error > 0:
        comments.append(f"# std differs per channel: one net-scale-factor gives up to {norm.max_abs_error:.4g} "
                        "absolute error in normalised input")
        log.warning("DeepStream has one net-scale-factor; with per-channel std %s the normalised input is off by up "
                    "to %.4g", list(spec["std"]), norm.max_abs_error)
    resize = spec.get("resize")
    hw = _input_hw(spec)
    if resize is not None and resize not in (hw[0], list(hw), tuple(hw)):
        comments.append(f"# the model was evaluated with resize {resize} + center crop {hw[0]}x{hw[1]}; nvinfer "
                        "scales the whole frame/object to the network size instead")
        log.warning("nvinfer does not reproduce resize %s + center crop; accuracy may differ", resize)
    return comments


@dataclass(frozen=True)
class DeepStreamFiles:
    """The names the config refers to (all relative to the config, which nvinfer resolves paths against)."""

    onnx: str
    engine: str
    calib_file: str | None  # int8-calib-file (INT8 builds)
    labels: str | None  # classifiers only
    output_name: str  # "probabilities" (classifiers) or "features"


def nvinfer_config(profile: Any, spec_dict: Mapping[str, Any], files: DeepStreamFiles, num_classes: int | None,
                   precision: str, *, classifier_threshold: float = 0.0, normalized_in_graph: bool = False,
                   own_engine: bool | None = None) -> str:
    """A Gst-nvinfer config (``[property]`` group) running the model as a primary classifier, or (no classes) as a
    network whose output tensors are attached as metadata. ``normalized_in_graph``: the graph takes raw pixels
    (:func:`edge_resnet.graph.input_normalization.with_pixel_input`): ``net-scale-factor=1``, zero offsets.
    ``own_engine`` (default: a classifier's): the engine is DeepStream's own, built by ``build_engine.sh --deepstream``."""
    raw_order = spec_dict.get("channel_order", "rgb")
    order = str(getattr(raw_order, "value", raw_order)).lower()  # a str or edge_resnet's ChannelOrder enum
    if order not in COLOR_FORMAT:
        raise BundleError(f"channel_order {order!r} is not one nvinfer supports", "use 'rgb' or 'bgr'")
    if precision == "int8" and not files.calib_file:
        raise BundleError("an INT8 nvinfer config needs int8-calib-file (nvinfer otherwise falls back to FP16)")
    classifier = num_classes is not None
    if classifier and (num_classes < 1 or not files.labels):  # type: ignore[operator]
        raise BundleError(f"a classifier config needs num_classes >= 1 and a labels file (got {num_classes})")
    norm = None if normalized_in_graph else PreprocessSpec.from_dict(dict(spec_dict)).deepstream_normalization()
    h, w = _input_hw(spec_dict)
    batch = batch_shapes(profile, (3, h, w))[2][0]
    dla = profile.tensorrt.dla_core if profile.tensorrt else None
    what = f"a primary classifier ({num_classes} classes, softmax output)" if classifier else \
        "a network whose output tensors are attached as NvDsInferTensorMeta (no class parsing)"
    lines = [
        f"# DeepStream nvinfer config for {profile.name}, made by edge-resnet: {what}.",
        *( ["# Build the engine first with ./build_engine.sh --deepstream (else nvinfer builds it from onnx-file)."]
           if (classifier if own_engine is None else own_engine) else ["# Build the engine first with ./build_engine.sh."]),
        *_preprocessing_comments(spec_dict, norm),
        "[property]",
        "gpu-id=0",
        f"onnx-file={files.onnx}",
        f"model-engine-file={files.engine}",
        *([f"int8-calib-file={files.calib_file}"] if files.calib_file else []),
        *([f"labelfile-path={files.labels}"] if classifier else []),
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODE[precision]}",
        f"network-type={NETWORK_TYPE_CLASSIFIER if classifier else NETWORK_TYPE_OTHER}",
        *([] if classifier else ["output-tensor-meta=1"]),
        "process-mode=1",
        "gie-unique-id=1",
        f"infer-dims=3;{h};{w}",
        f"model-color-format={COLOR_FORMAT[order]}",
        f"net-scale-factor={_fmt(1.0 if norm is None else norm.net_scale_factor)}",
        "offsets=" + ";".join(_fmt(o) for o in ((0.0, 0.0, 0.0) if norm is None else norm.offsets)),
        f"output-blob-names={files.output_name}",
        *([f"classifier-threshold={_fmt(classifier_threshold)}"] if classifier else []),
        *(["enable-dla=1", f"use-dla-core={dla}"] if dla is not None else []),
    ]
    return "\n".join(lines) + "\n"


def labels_text(names: Sequence[str]) -> str:
    """nvinfer's labels file for one classifier output: one line, the class names ';'-separated."""
    if not names:
        raise BundleError("a DeepStream classifier needs at least one label")
    clean = []
    for i, name in enumerate(names):
        text = " ".join(str(name).split())  # no newlines: one output layer is one line
        if ";" in text:
            log.warning("label %r contains ';', nvinfer's separator: written with ',' instead", text)
            text = text.replace(";", ",")
        clean.append(text or f"class_{i}")
    return ";".join(clean) + "\n"


def write_labels(path: Path | str, names: Sequence[str]) -> Path:
    path = Path(path)
    path.write_text(labels_text(names), encoding="utf-8", newline="\n")
    return path


def softmax_graph(model: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """``model`` with ``Softmax(axis=1)`` on its ``logits`` output, which becomes the only output."""
    outputs = [o for o in model.graph.output if o.name == logits]
    if not outputs:
        raise BundleError(f"the graph has no output {logits!r} to put a Softmax on")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(helper.make_node("Softmax", [logits], [PROBABILITIES], axis=1, name="deepstream/softmax"))
    shape = outputs[0].type.tensor_type
    value = helper.make_tensor_value_info(PROBABILITIES, shape.elem_type, None)
    value.type.tensor_type.shape.CopyFrom(shape.shape)
    del out.graph.output[:]
    out.graph.output.append(value)
    return out
