"""What a Jetson needs when the bundle is prepared on a host without TensorRT.

TensorRT engines are not portable across GPUs or TensorRT versions, so the bundle carries the ONNX (and, for
the implicit JetPack 5 path, the calibration cache) plus:

* ``build_engine.sh``: the exact ``trtexec`` command for the target profile, run on the device;
* a DeepStream ``nvinfer`` config for the model as a primary classifier, and its labels file.

trtexec flags per TensorRT generation (trtexec --help of 8.x and 10.5; TensorRT migration guides):

* 8.x: ``--workspace=<MiB>``; ``--int8`` / ``--fp16``; ``--calib=<cache>`` with ``--int8`` for implicit INT8.
* 10.x: ``--workspace`` removed, ``--memPoolSize=workspace:<size>`` (suffixes B/K/M/G, default MiB);
  ``--stronglyTyped`` exists but may not be combined with ``--int8``/``--fp16``.
* 11.x: ``--int8``, ``--fp16``, ``--best``, ``--calib`` removed; "--stronglyTyped is no longer needed: it is
  always enabled" (10.x->11.x trtexec migration), so no precision flag at all: INT8 comes from the Q/DQ nodes.
* DLA: ``--useDLACore=N`` and ``--allowGPUFallback``; shapes must be static (min = opt = max).
"""

from __future__ import annotations

import logging
import shlex
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_resnet.backends.tensorrt import (
    TrtGeneration,
    batch_shapes,
    check_quant_mode,
    precision_policy,
)
from edge_resnet.data.preprocess import DeepStreamNormalization, PreprocessSpec
from edge_resnet.errors import BackendError, BundleError
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import Precision, QuantMode

log = logging.getLogger(__name__)

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"

# --------------------------------------------------------------------------------------------- trtexec

_TRTEXEC_BUILDER_FLAGS: dict[str, str] = {"INT8": "--int8", "FP16": "--fp16", "GPU_FALLBACK": "--allowGPUFallback"}
# Network flags that need a trtexec switch; EXPLICIT_BATCH needs none (ONNX is always explicit batch in
# trtexec 8.x) and STRONGLY_TYPED needs none on 11 (always on).
_TRTEXEC_NETWORK_FLAGS: dict[tuple[TrtGeneration, str], str] = {(TrtGeneration.TRT10, "STRONGLY_TYPED"): "--stronglyTyped"}


def _workspace_flag(generation: TrtGeneration, mib: int) -> str:
    table = {
        TrtGeneration.TRT8: f"--workspace={mib}",
        TrtGeneration.TRT10: f"--memPoolSize=workspace:{mib}M",
        TrtGeneration.TRT11: f"--memPoolSize=workspace:{mib}M",
    }
    return table[generation]


def _generation(trt_generation: int | TrtGeneration) -> TrtGeneration:
    try:
        return TrtGeneration(int(trt_generation))
    except ValueError:
        raise BackendError(f"unknown TensorRT generation {trt_generation}", "use 8, 10 or 11") from None


def _shape_arg(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:{'x'.join(str(d) for d in shape)}"


def _calibration_args(profile: TargetProfile, calib_cache_name: str | None) -> list[str]:
    implicit = profile.quant_mode == QuantMode.IMPLICIT
    if implicit and not calib_cache_name:
        raise BackendError(f"target {profile.name} uses implicit INT8 and needs a calibration cache",
                           "pass calib_cache_name (write it with edge_resnet.quant.trt_cache)")
    if not implicit and calib_cache_name:
        raise BackendError(f"target {profile.name} is explicit (Q/DQ): a calibration cache would be ignored",
                           "drop calib_cache_name, or use an implicit profile")
    return [f"--calib={calib_cache_name}"] if implicit else []


def trtexec_command(
    profile: TargetProfile,
    onnx_name: str,
    engine_name: str,
    precision: Precision,
    trt_generation: int | TrtGeneration,
    calib_cache_name: str | None = None,
    input_name: str = "input",
    input_shape: tuple[int, int, int] = (3, 224, 224),
    timing_cache_name: str = "timing.cache",
    trtexec: str = "trtexec",
) -> list[str]:
    """The trtexec argv that builds ``engine_name`` from ``onnx_name`` for ``profile`` on the device."""
    generation = _generation(trt_generation)
    check_quant_mode(generation, profile, precision)
    opts = profile.tensorrt or TensorRTOptions()
    if opts.dla_core is not None and generation == TrtGeneration.TRT11:
        log.warning("DLA with TensorRT 11 needs 11.4.1+ on Jetson AGX Orin with JetPack 7.2.2 or later")
    policy = precision_policy(generation, profile, precision)
    if policy.onnx_precision == "fp16":
        log.warning("TensorRT 11 builds FP16 only from an fp16 ONNX: convert %s with ModelOpt AutoCast", onnx_name)
    min_s, opt_s, max_s = batch_shapes(profile, input_shape)
    cmd = [
        trtexec,
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={_shape_arg(input_name, min_s)}",
        f"--optShapes={_shape_arg(input_name, opt_s)}",
        f"--maxShapes={_shape_arg(input_name, max_s)}",
        _workspace_flag(generation, opts.workspace_mb),
        f"--timingCacheFile={timing_cache_name}",
    ]
    cmd += [_TRTEXEC_NETWORK_FLAGS[(generation, f)] for f in policy.network_flags
            if (generation, f) in _TRTEXEC_NETWORK_FLAGS]
    cmd += [_TRTEXEC_BUILDER_FLAGS[f] for f in policy.builder_flags]
    if opts.dla_core is not None:
        cmd.append(f"--useDLACore={opts.dla_core}")
    return cmd + _calibration_args(profile, calib_cache_name)


_SCRIPT = """#!/usr/bin/env bash
# Built by edge-resnet for target {target} ({platform}, TensorRT {generation}.x{jetpack}).
# TensorRT engines only run on the GPU and TensorRT version that built them: run this on the device.
set -euo pipefail
cd "$(dirname "$0")"

TRTEXEC="${{TRTEXEC:-}}"
if [[ -z "$TRTEXEC" ]]; then
  if command -v trtexec >/dev/null 2>&1; then
    TRTEXEC="$(command -v trtexec)"
  elif [[ -x {jetson_trtexec} ]]; then
    TRTEXEC={jetson_trtexec}
  else
    echo "error: trtexec not found (on Jetson it is {jetson_trtexec}, from the TensorRT packages of JetPack);" >&2
    echo "       install TensorRT or set TRTEXEC=/path/to/trtexec" >&2
    exit 1
  fi
fi
{file_checks}
ARGS=(
  {args}
)
echo "building {engine} for {target}:"
echo "  $TRTEXEC ${{ARGS[*]}}"
"$TRTEXEC" "${{ARGS[@]}}"
echo "wrote {engine}"
"""


def write_build_script(
    path: Path | str,
    profile: TargetProfile,
    onnx_name: str,
    engine_name: str,
    precision: Precision,
    trt_generation: int | TrtGeneration,
    calib_cache_name: str | None = None,
    input_name: str = "input",
    input_shape: tuple[int, int, int] = (3, 224, 224),
) -> Path:
    """Write ``build_engine.sh`` (bash, executable) that runs :func:`trtexec_command` on the device."""
    path = Path(path)
    argv = trtexec_command(profile, onnx_name, engine_name, precision, trt_generation, calib_cache_name,
                           input_name, input_shape)[1:]
    inputs = [onnx_name] + ([calib_cache_name] if calib_cache_name else [])
    checks = "\n".join(
        f'[[ -f {shlex.quote(n)} ]] || {{ echo "error: {n} is missing next to this script" >&2; exit 1; }}'
        for n in inputs
    )
    jetpack = f", JetPack {profile.tensorrt.jetpack}" if profile.tensorrt and profile.tensorrt.jetpack else ""
    text = _SCRIPT.format(
        target=profile.name, platform=profile.platform, generation=int(_generation(trt_generation)), jetpack=jetpack,
        jetson_trtexec=JETSON_TRTEXEC, file_checks=checks, engine=shlex.quote(engine_name),
        args="\n  ".join(shlex.quote(a) for a in argv),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log.info("wrote %s", path)
    return path


# ------------------------------------------------------------------------------------------- DeepStream

# DeepStream NvDsInferNetworkMode (nvdsinfer.h): FP32 = 0, INT8 = 1, FP16 = 2
NETWORK_MODE: dict[Precision, int] = {Precision.FP32: 0, Precision.INT8: 1, Precision.FP16: 2}
# NvDsInferFormat as model-color-format: RGB = 0, BGR = 1 (GRAY = 2)
COLOR_FORMAT: dict[str, int] = {"rgb": 0, "bgr": 1}
NETWORK_TYPE_CLASSIFIER = 1  # NvDsInferNetworkType: Detector = 0, Classifier = 1


def _input_hw(spec: Mapping[str, Any]) -> tuple[int, int]:
    size = spec["input_size"]
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def _fmt(x: float) -> str:
    return repr(float(x))


def _preprocessing_comments(spec: Mapping[str, Any], norm: DeepStreamNormalization) -> list[str]:
    comments = []
    if norm.max_abs_error > 0:
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


def deepstream_nvinfer_config(
    profile: TargetProfile,
    spec_dict: Mapping[str, Any],
    onnx_name: str,
    engine_name: str,
    labels_name: str,
    num_classes: int,
    calib_cache_name: str | None = None,
    *,
    precision: Precision = Precision.INT8,
    output_name: str = "logits",
    classifier_threshold: float = 0.0,
) -> str:
    """A Gst-nvinfer config (``[property]`` group) that runs the model as a primary classifier."""
    if num_classes < 1:
        raise BundleError(f"num_classes must be >= 1, got {num_classes}")
    raw_order = spec_dict.get("channel_order", "rgb")
    order = str(getattr(raw_order, "value", raw_order)).lower()  # a str or edge_resnet's ChannelOrder enum
    if order not in COLOR_FORMAT:
        raise BundleError(f"channel_order {order!r} is not one nvinfer supports", "use 'rgb' or 'bgr'")
    implicit = profile.quant_mode == QuantMode.IMPLICIT
    if implicit != bool(calib_cache_name):
        raise BundleError(f"int8-calib-file is for implicit profiles only (target {profile.name} is "
                          f"{profile.quant_mode.value}, calib_cache_name={calib_cache_name!r})")
    norm = PreprocessSpec.from_dict(spec_dict).deepstream_normalization()
    h, w = _input_hw(spec_dict)
    batch = batch_shapes(profile, (3, h, w))[2][0]
    dla = profile.tensorrt.dla_core if profile.tensorrt else None
    lines = [
        f"# DeepStream nvinfer config for {profile.name}, made by edge-resnet ({num_classes} classes).",
        "# DeepStream's classifier parser reads the output as scores and applies classifier-threshold to them.",
        *_preprocessing_comments(spec_dict, norm),
        "[property]",
        "gpu-id=0",
        f"onnx-file={onnx_name}",
        f"model-engine-file={engine_name}",
        *([f"int8-calib-file={calib_cache_name}"] if implicit else []),
        f"labelfile-path={labels_name}",
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODE[precision]}",
        f"network-type={NETWORK_TYPE_CLASSIFIER}",
        "process-mode=1",
        "gie-unique-id=1",
        f"infer-dims=3;{h};{w}",
        f"model-color-format={COLOR_FORMAT[order]}",
        f"net-scale-factor={_fmt(norm.net_scale_factor)}",
        "offsets=" + ";".join(_fmt(o) for o in norm.offsets),
        f"output-blob-names={output_name}",
        f"classifier-threshold={_fmt(classifier_threshold)}",
        *(["enable-dla=1", f"use-dla-core={dla}"] if dla is not None else []),
    ]
    return "\n".join(lines) + "\n"


def write_labels(path: Path | str, names: Sequence[str]) -> Path:
    """DeepStream classifier labels: one line per output layer, labels separated by ';'."""
    bad = [n for n in names if not n or any(c in n for c in ";\n\r")]
    if not names or bad:
        raise BundleError(f"labels {bad or 'list is empty'} cannot be written to a DeepStream labels file",
                          "labels must be non-empty and contain no ';' or newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(";".join(names) + "\n", encoding="utf-8", newline="\n")
    return path
