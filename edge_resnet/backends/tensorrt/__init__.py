"""TensorRT: one package for the version policy and build plan (:mod:`.versions`, :mod:`.plan`), the Python build
(:mod:`.build`), CUDA and the runner (:mod:`.cuda`, :mod:`.runner`), engines and their records (:mod:`.engine`), and
what a device without edge-resnet's host needs (:mod:`.trtexec` writes ``build_engine.sh``, :mod:`.deepstream` the
nvinfer files, :mod:`.dla` NVIDIA's DLA route, :mod:`.calibration_cache` the legacy cache).

``tensorrt`` itself is imported only inside functions that build or run; names here load their module lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "TensorRTBackend": "backend", "prepare_tensorrt_bundle": "backend",
    "BuildPlan": "plan", "plan_build": "plan", "precision_policy": "plan",
    "batch_shapes": "plan", "check_quant_mode": "plan", "check_onnx_for_plan": "plan", "summarize_onnx": "plan",
    "effective_quant_mode": "plan", "ENGINE_FILE": "plan", "TIMING_CACHE_FILE": "plan",
    "CALIBRATION_CACHE_FILE": "plan",
    "TrtGeneration": "versions", "parse_version": "versions", "generation_of": "versions",
    "tensorrt_versions_ok": "versions", "version_code": "versions", "decode_version_code": "versions",
    "build_engine": "build", "import_tensorrt": "build", "make_cache_calibrator": "build",
    "DeviceInfo": "cuda", "device_index": "cuda", "load_cuda": "cuda", "CudaRuntime": "cuda", "PyCudaRuntime": "cuda",
    "TensorRTRunner": "runner",
    "check_engine_portability": "engine", "check_portability": "engine", "EngineRecord": "engine",
    "plan_version": "engine", "read_record": "engine", "verify_record": "engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
