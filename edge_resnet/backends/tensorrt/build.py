"""Execute a :class:`BuildPlan` with the ``tensorrt`` Python module (injectable, for tests).

The device: TensorRT builds on the calling thread's current CUDA device, so the plan's device is made current first
(see :mod:`.cuda`). The timing cache: ``IBuilderConfig.create_timing_cache`` documents only that an empty buffer
gives a new cache (python/src/infer/pyCore.cpp docstring, 10.x); what it does with another version's or device's
cache is not documented. Users of the C++ API check for a null result (trtexec: "TimingCache creation failed",
samples/common/sampleEngines.cpp, 8.6 and 10.x; ONNX Runtime's TensorRT EP likewise) and ``set_timing_cache``
returns False on a mismatch when ``ignore_mismatch`` is False. So all three answers are handled the same way: a
warning, and a fresh cache.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_resnet.backends.base import import_library
from edge_resnet.backends.tensorrt.calibration_cache import with_header
from edge_resnet.backends.tensorrt.plan import ENGINE_FILE, BuildPlan, check_plan_matches
from edge_resnet.errors import BackendError, BackendUnavailable, QuantizationError

log = logging.getLogger(__name__)


def import_tensorrt() -> ModuleType:
    return import_library("tensorrt", "pip install 'edge-resnet[tensorrt]' on a machine with an NVIDIA GPU, or use "
                                      "the bundle's build_engine.sh on the device")


def enum_member(trt: ModuleType, enum_name: str, member: str) -> Any:
    try:
        return getattr(getattr(trt, enum_name), member)
    except AttributeError:
        raise BackendError(
            f"TensorRT {trt.__version__} has no {enum_name}.{member}",
            "the plan was made for another TensorRT generation; make the plan with the installed version",
        ) from None


def _flag_mask(trt: ModuleType, enum_name: str, names: tuple[str, ...]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << int(enum_member(trt, enum_name, name))
    return mask


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if parser.parse(onnx_path.read_bytes()):
        return
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    raise BackendError(
        f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no detail)"]),
        "check the ops against TensorRT's ONNX support matrix; re-export with a supported opset",
    )


def _configure(trt: ModuleType, builder: Any, network: Any, config: Any, plan: BuildPlan) -> Any:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(enum_member(trt, "BuilderFlag", name))
    if plan.dla_core is not None:
        available = builder.num_DLA_cores
        if plan.dla_core >= available:
            raise BackendError(
                f"the plan wants DLA core {plan.dla_core} but this device has {available} DLA core(s)",
                "build DLA engines on the Jetson itself (the bundle's build_engine.sh)",
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, plan.min_shape, plan.opt_shape, plan.max_shape)
    config.add_optimization_profile(profile)
    return profile


def make_cache_calibrator(trt: ModuleType, cache: bytes) -> Any:
    """An IInt8EntropyCalibrator2 that only reads ``cache`` (8.x/10.x; gone in 11)."""
    try:
        base = trt.IInt8EntropyCalibrator2
    except AttributeError:
        raise BackendError(f"TensorRT {trt.__version__} has no INT8 calibrator (removed in 11)",
                           "use an explicit Q/DQ profile") from None

    class CacheOnlyCalibrator(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # pybind11 classes need the base __init__ called explicitly

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: the cache must cover every tensor

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            pass  # keep the cache we were given

    return CacheOnlyCalibrator()


def calibration_cache_for(trt_version: str, path: Path) -> bytes:
    """The bundle's cache with the header of the TensorRT that reads it (TensorRT skips other versions' caches,
    NVIDIA/TensorRT#1378; see :mod:`.calibration_cache`)."""
    try:
        return with_header(path.read_text(encoding="ascii"), trt_version).encode("ascii")
    except (OSError, UnicodeDecodeError, QuantizationError) as exc:
        raise BackendError(f"cannot read the calibration cache {path}: {exc}",
                           "compile the bundle again (it writes calibration.cache)") from exc


def _find_calibration_cache(plan: BuildPlan, onnx_path: Path, out_dir: Path) -> Path:
    assert plan.calibration_cache is not None
    for candidate in (out_dir / plan.calibration_cache, onnx_path.parent / plan.calibration_cache):
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"implicit INT8 needs {plan.calibration_cache} in {out_dir} or next to {onnx_path.name}",
        "write it with edge_resnet.backends.tensorrt.calibration_cache.write_calibration_cache(path, scales, version)",
    )


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fresh_timing_cache(config: Any) -> Any:
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise BackendError("TensorRT could not create an empty timing cache", "check the TensorRT installation")
    return cache


def use_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if not data:
        _fresh_timing_cache(config)
        return
    try:
        cache = config.create_timing_cache(data)
        accepted = cache is not None and bool(config.set_timing_cache(cache, False))  # False: refuse a mismatch
    except (RuntimeError, TypeError, ValueError) as exc:  # a binding that raises instead of returning None
        log.debug("create_timing_cache raised %s", exc)
        accepted = False
    if accepted:
        log.info("reusing timing cache %s", path)
        return
    log.warning("timing cache %s is from another device or TensorRT; starting a new one", path)
    _fresh_timing_cache(config)


def _device_context(cuda: Any, device: int) -> Any:
    """Make ``device`` current on this thread for the build (TensorRT builds on the current device)."""
    if cuda is None:
        if device != 0:
            raise BackendUnavailable(f"building for CUDA device {device} needs cuda-python or pycuda to select it",
                                     "pip install cuda-python")
        return nullcontext()
    cuda.set_device(device)
    return cuda.activate()


def build_engine(onnx_path: Path, plan: BuildPlan, out_dir: Path, trt: ModuleType | None = None, *,
                 cuda: Any = None, device: int = 0, engine_name: str = ENGINE_FILE) -> Path:
    """Build ``out_dir/engine_name`` as ``plan`` says, on CUDA device ``device``; reuses the timing cache."""
    trt = trt or import_tensorrt()
    check_plan_matches(trt.__version__, plan)
    out_dir, onnx_path = Path(out_dir), Path(onnx_path)
    with _device_context(cuda, device):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(_flag_mask(trt, "NetworkDefinitionCreationFlag", plan.network_flags))
        _parse_onnx(trt, network, logger, onnx_path)
        config = builder.create_builder_config()
        profile = _configure(trt, builder, network, config, plan)
        if plan.calibration_cache is not None:
            cache = calibration_cache_for(trt.__version__, _find_calibration_cache(plan, onnx_path, out_dir))
            config.int8_calibrator = make_cache_calibrator(trt, cache)
            config.set_calibration_profile(profile)
        timing_path = out_dir / plan.timing_cache
        use_timing_cache(config, timing_path)
        log.info("building TensorRT %s engine: %s", plan.trt_version, plan.to_dict())
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(
                f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the TensorRT log above)",
                "common causes: unsupported op or Q/DQ placement, workspace too small, DLA layer limits",
            )
        atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    engine_path = out_dir / engine_name
    atomic_write(engine_path, bytes(serialized))
    log.info("wrote %s (%d bytes)", engine_path, engine_path.stat().st_size)
    return engine_path
