"""TensorRT's legacy INT8 calibration cache (the text file IInt8EntropyCalibrator2 reads and writes).

Used for the IMPLICIT quantization path (TensorRT 8.x on JetPack 5): the engine is built from the float
ONNX and this cache, instead of from a Q/DQ graph. Format::

    TRT-8502-EntropyCalibration2
    input: 3c010a14
    /conv1/Conv_output_0: 3d8f5c29

The header number is NV_TENSORRT_VERSION of the TensorRT that wrote it. Its encoding changed in 10.0:
TensorRT 8.x headers define ``kNV_TENSORRT_VERSION_IMPL = MAJOR*1000 + MINOR*100 + PATCH`` (8.5.2 -> 8502,
8.6.1 -> 8601), TensorRT 10+ headers ``NV_TENSORRT_VERSION_INT = MAJOR*10000 + MINOR*100 + PATCH``
(10.3.0 -> 100300; trtexec 10.5 prints "TensorRT v100500"). Each line after the header is a tensor name and
the big-endian IEEE-754 float32 bit pattern of its scale (amax / 127), 8 lowercase hex digits.
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

from edge_resnet.errors import QuantizationError

log = logging.getLogger(__name__)

CALIBRATOR_NAME = "EntropyCalibration2"
_HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")

# major version -> (multiplier of major, multiplier of minor); see the module docstring for the sources.
_VERSION_ENCODING: dict[int, tuple[int, int]] = {8: (1000, 100), 10: (10000, 100)}


def tensorrt_version_code(trt_version: str) -> int:
    """NV_TENSORRT_VERSION for a version string such as "8.5.2" or "10.3.0"."""
    parts = re.findall(r"\d+", trt_version)
    if len(parts) < 2:
        raise QuantizationError(f"cannot read TensorRT version {trt_version!r}", 'write it as "8.5.2"')
    major, minor, patch = (int(p) for p in (parts + ["0"])[:3])
    major_mult, minor_mult = _VERSION_ENCODING[8] if major < 10 else _VERSION_ENCODING[10]
    return major * major_mult + minor * minor_mult + patch


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
    header = f"TRT-{tensorrt_version_code(trt_version)}-{CALIBRATOR_NAME}"
    return "\n".join([header, *(f"{name}: {scale_to_hex(s)}" for name, s in scales.items())]) + "\n"


def write_calibration_cache(path: Path | str, scales: Mapping[str, float], trt_version: str = "8.5.2") -> Path:
    """Write ``scales`` (tensor name -> amax/127) as a cache for TensorRT ``trt_version`` (atomically).

    The default is the TensorRT of JetPack 5.1 (8.5.2), the only JetPack that needs this path.
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
            "write it with edge_resnet.quant.trt_cache.write_calibration_cache",
        )
    scales: dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise QuantizationError(f"bad line in calibration cache {path}: {ln!r}", "regenerate the cache")
        scales[name] = hex_to_scale(value)
    return lines[0], scales
