"""The names of the TensorRT files of a bundle, in one place.

Files written at compile time are listed (with their hashes) in the manifest. Files the *device* writes later
(the engine and its record, the timing cache, the build log, the calibration cache with the device's header, the
DeepStream engine) cannot be hashed in advance; their names are declared in ``artifact.device_build`` instead, so
the manifest still names every path the bundle may hold and every path is resolved through the bundle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BUILD_SCRIPT = "build_engine.sh"
CALIBRATION_CACHE = "calibration.cache"  # the scales, with the header of the profile's default TensorRT
DEEPSTREAM_CONFIG = "deepstream_nvinfer.txt"
DEEPSTREAM_LABELS = "labels.deepstream.txt"  # nvinfer's format: one line per output layer, labels ';'-separated
DEEPSTREAM_ONNX = "model.deepstream.onnx"  # DeepStream's graph: raw-pixel input, and a Softmax for classifiers
FRAMES_ONNX = "model.frames.onnx"  # the runtime's frame graph: uint8 N x S x S x 3 frames in (see .frames)
FRAMES_ENGINE = "model.frames.plan"


@dataclass(frozen=True)
class DeviceBuild:
    """Files ``build_engine.sh`` (or the Python build) writes on the device."""

    engine: str = "model.plan"
    record: str = "engine.json"
    timing_cache: str = "timing.cache"
    log: str = "trtexec.log"
    calibration_cache: str | None = None  # implicit builds: calibration.cache with this device's header
    deepstream_engine: str | None = None  # the DeepStream graph's engine (./build_engine.sh --deepstream)
    deepstream_log: str | None = None
    frames_engine: str | None = None  # the frame graph's engine (./build_engine.sh --frames)
    frames_log: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def make(cls, implicit: bool, deepstream: bool, frames: bool = False) -> DeviceBuild:
        return cls(calibration_cache="calibration.device.cache" if implicit else None,
                   deepstream_engine="model.deepstream.plan" if deepstream else None,
                   deepstream_log="trtexec.deepstream.log" if deepstream else None,
                   frames_engine=FRAMES_ENGINE if frames else None,
                   frames_log="trtexec.frames.log" if frames else None)
