"""TensorRT's legacy INT8 calibration cache (the text file IInt8EntropyCalibrator2 reads and writes).

Used for the IMPLICIT quantization path (TensorRT 8.x on JetPack 5): the engine is built from the float
ONNX and this cache, instead of from a Q/DQ graph. Format::

    TRT-8502-EntropyCalibration2
    input: 3c010a14
    /conv1/Conv_output_0: 3d8f5c29

The header number is NV_TENSORRT_VERSION of the TensorRT that wrote it (8.5.2 -> 8502, 10.3.0 -> 100300; see
:func:`edge_resnet.backends.tensorrt.versions.version_code`). Each line after the header is a tensor name and the
IEEE-754 float32 bit pattern of its scale (amax / 127) in hex, as NVIDIA's Q/DQ Translator writes it
(NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator/utils.py ``float_to_hex``/``export_to_trt_calib``).

TensorRT skips a cache it deems incompatible (NVIDIA/TensorRT#1378: "trt will skip the file if it is
incompatible") and then calibrates without data: TensorRT 10.3 given a ``TRT-8600`` header failed with "Tensor
input is bound to nullptr" (NVIDIA/Deep-Learning-Accelerator-SW#26). What exactly it compares is not published,
so a cache is always written for the exact TensorRT that reads it: the bundle carries the scales, and the device
(``build_engine.sh``, or the Python build) writes the header of its own TensorRT (:func:`with_header`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

from edge_resnet.backends.tensorrt.versions import version_code
from edge_resnet.errors import QuantizationError

log = logging.getLogger(__name__)

CALIBRATOR_NAME = "EntropyCalibration2"
_HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")



def tensorrt_version_code(trt_version: str) -> int:
    """NV_TENSORRT_VERSION for a version string such as "8.5.2" or "10.3.0"."""
    if len(re.findall(r"\d+", trt_version)) < 2:
        raise QuantizationError(f"cannot read TensorRT version {trt_version!r}", 'write it as "8.5.2"')
    return version_code(trt_version)


def header_for(trt_version: str) -> str:
    return f"TRT-{tensorrt_version_code(trt_version)}-{CALIBRATOR_NAME}"


def scale_to_hex(scale: float) -> str:
    """The cache's spelling of a scale: big-endian float32 bits, 8 lowercase hex digits."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def _check_scales(scales: Mapping[str, float]) -> None:
    if not scales:
        raise QuantizationError("no tensor scales to write into the calibration cache", "calibrate first")
    for name, scale in scales.items():
        if not name or any(c in name for c in ":\n"):
            raise QuantizationError(
                f"tensor name {name!r} cannot be written into a TensorRT calibration cache",
                "the cache format is 'name: hex' per line; rename the tensor in the ONNX graph",
            )
        if not (math.isfinite(scale) and scale > 0):
            raise QuantizationError(
                f"scale of tensor {name!r} is {scale}; a calibration cache needs a finite positive scale",
                "check the calibration data: an all-zero activation gives amax 0",
            )


def format_calibration_cache(scales: Mapping[str, float], trt_version: str = "8.5.2") -> str:
    _check_scales(scales)
    return "\n".join([header_for(trt_version), *(f"{name}: {scale_to_hex(s)}" for name, s in scales.items())]) + "\n"


def with_header(text: str, trt_version: str) -> str:
    """The same cache with the header of TensorRT ``trt_version`` (what the device does before a build)."""
    lines = text.splitlines()
    if not lines or not _HEADER_RE.match(lines[0].strip()):
        raise QuantizationError("not a TensorRT calibration cache (no TRT-<version>-<calibrator> header)",
                                "write it with edge_resnet.backends.tensorrt.calibration_cache")
    return "\n".join([header_for(trt_version), *lines[1:]]) + "\n"


def write_calibration_cache(path: Path | str, scales: Mapping[str, float], trt_version: str = "8.5.2") -> Path:
    """Write ``scales`` (tensor name -> amax/127) as a cache for TensorRT ``trt_version`` (atomically).

    The header only fits that TensorRT: the device rewrites it for its own (:func:`with_header`).
    """
    path = Path(path)
    text = format_calibration_cache(scales, trt_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote TensorRT calibration cache %s (%d tensors, %s)", path, len(scales), text.split("\n", 1)[0])
    return path


def read_calibration_cache(path: Path | str) -> tuple[str, dict[str, float]]:
    """(header line, tensor name -> scale). Raises QuantizationError for a file that is not a cache."""
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text(encoding="ascii").splitlines() if ln.strip()]
    if not lines or not _HEADER_RE.match(lines[0]):
        raise QuantizationError(
            f"{path} is not a TensorRT calibration cache (first line {lines[:1]})",
            "write it with edge_resnet.backends.tensorrt.calibration_cache.write_calibration_cache",
        )
    scales: dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise QuantizationError(f"bad line in calibration cache {path}: {ln!r}", "regenerate the cache")
        scales[name] = hex_to_scale(value)
    return lines[0], scales
