"""The TensorRT part of a bundle: the engine where TensorRT is here, and always what the device
needs to build and run it itself (trtexec script, DeepStream config, legacy calibration cache).

Preparing a Jetson bundle on an x86 workstation without TensorRT is the usual case: the engine
must be built on the device anyway, since engines are not portable across GPUs or TensorRT
versions (NVIDIA/TensorRT#818).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_resnet.backends.base import Artifact, Backend
from edge_resnet.backends.tensorrt import ENGINE_FILE, generation_of
from edge_resnet.deploy.jetson import deepstream_nvinfer_config, write_build_script
from edge_resnet.quant.qdq import activation_scale
from edge_resnet.quant.trt_cache import write_calibration_cache
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import BackendName, Precision, QuantMode

log = logging.getLogger(__name__)

BUILD_SCRIPT = "build_engine.sh"
DEEPSTREAM_CONFIG = "deepstream_nvinfer.txt"
CALIBRATION_CACHE = "calibration.cache"
LABELS = "labels.txt"


def prepare_tensorrt_bundle(backend: Backend, profile: TargetProfile, onnx_path: Path, out: Path, precision: Precision,
                            spec: Any, labels: list[str], stats: Any, options: Any) -> Artifact:
    trt_opts = profile.tensorrt or TensorRTOptions()
    version = trt_opts.default_version
    generation = generation_of(version, profile.platform)
    files: dict[str, str] = {"onnx": onnx_path.name}
    cache_name = None
    if stats is not None:
        # legacy cache (IInt8EntropyCalibrator2 text format): needed by the implicit path of
        # JetPack 5 / TensorRT 8.x; written for every int8 TensorRT bundle as a fallback
        amax = stats.amax(options.calibration.method, **options.calibration.params())
        write_calibration_cache(out / CALIBRATION_CACHE, {t: activation_scale(a) for t, a in amax.items()},
                                trt_version=version if generation.value == 8 else "8.5.2")
        files["calibration_cache"] = CALIBRATION_CACHE
        cache_name = CALIBRATION_CACHE if profile.quant_mode is QuantMode.IMPLICIT else None
    shape = (3, spec.input_size, spec.input_size)
    write_build_script(out / BUILD_SCRIPT, profile, onnx_path.name, ENGINE_FILE, precision, generation,
                       cache_name, input_shape=shape)
    files["build_script"] = BUILD_SCRIPT
    if labels:
        (out / DEEPSTREAM_CONFIG).write_text(deepstream_nvinfer_config(
            profile, spec.to_dict(), onnx_path.name, ENGINE_FILE, LABELS, len(labels), cache_name, precision=precision))
        files["deepstream_config"] = DEEPSTREAM_CONFIG

    if backend.available():
        art = backend.compile(onnx_path, profile, out, precision)
        art.files.update(files)
        art.info["runnable"] = True
        return art
    log.warning("TensorRT is not installed here: prepared the %s bundle; build the engine on the device with ./%s",
                profile.name, BUILD_SCRIPT)
    return Artifact(BackendName.TENSORRT, precision, files, {
        "runnable": False,
        "engine_built": False,
        "reason": "TensorRT is not installed on the host that prepared it",
        "how_to_build": f"copy the bundle to the {profile.name} device and run ./{BUILD_SCRIPT} "
                        f"(TensorRT {version} flags; JetPack {trt_opts.jetpack or '-'})",
        "assumed_tensorrt_version": version,
        "tensorrt_generation": int(generation),
    })
