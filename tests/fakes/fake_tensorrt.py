"""A recording fake of the ``tensorrt`` module (only what edge_resnet calls) plus a fake CUDA runtime.

``FakeTensorRT("8.6.1" | "10.3.0" | "11.0.0")`` has the real names of that generation and their enum values,
and lacks what that generation lacks, so a call the real library would reject fails here too:

* 8.6: NetworkDefinitionCreationFlag EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1; BuilderFlag with STRICT_TYPES=4
  (so PREFER_PRECISION_CONSTRAINTS=11); binding-index API on engines and contexts (plus the 8.5+ named API).
  The ONNX parser refuses a network created without EXPLICIT_BATCH, as the real 8.x parser does.
* 10.x: EXPLICIT_BATCH=0 (deprecated, ignored), STRONGLY_TYPED=1; STRICT_TYPES gone (REFIT=4 ...
  PREFER_PRECISION_CONSTRAINTS=10); no binding API. A strongly typed network with INT8/FP16 flags fails to build.
* 11.x: no BuilderFlag.FP16/INT8/OBEY/PREFER_PRECISION_CONSTRAINTS, no IInt8EntropyCalibrator2, no
  IBuilderConfig.int8_calibrator / set_calibration_profile (10.x->11.x "Removed Python APIs"); STRONGLY_TYPED=0
  and no EXPLICIT_BATCH (TensorRT 11 headers: ``kSTRONGLY_TYPED TRT_DEPRECATED_ENUM = 0``). The values of the
  remaining 11.x BuilderFlag members are assumed unchanged from 10.x; our code only uses names.

Everything our code does is appended to ``fake.calls`` as ``(name, args)``; ``fake.called(name)`` filters.
The fake engine computes ``logits[n, k] = mean(input[n]) * (k + 1)`` so the runner can be checked end to end.
"""

from __future__ import annotations

import json
from enum import IntEnum
from itertools import count
from typing import Any

import numpy as np
import onnx

from edge_resnet.backends.tensorrt import DeviceInfo

# ------------------------------------------------------------------------------------------------ enums

_NETWORK_FLAGS = {
    8: {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1},
    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
    11: {"STRONGLY_TYPED": 0},
}
_BUILDER_FLAGS = {
    8: {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "STRICT_TYPES": 4, "REFIT": 5, "DISABLE_TIMING_CACHE": 6,
        "TF32": 7, "SPARSE_WEIGHTS": 8, "SAFETY_SCOPE": 9, "OBEY_PRECISION_CONSTRAINTS": 10,
        "PREFER_PRECISION_CONSTRAINTS": 11, "DIRECT_IO": 12},
    10: {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
         "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
         "DIRECT_IO": 11, "FP8": 15, "BF16": 17},
    11: {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
         "SAFETY_SCOPE": 8},
}
_MEMORY_POOLS = {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3}
_DEVICE_TYPES = {"GPU": 0, "DLA": 1}
_IO_MODES = {"NONE": 0, "INPUT": 1, "OUTPUT": 2}
_DATA_TYPES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4}
_NPTYPES = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.bool_}

PLAN_MAGIC = b"FAKEPLAN"
TIMING_MAGIC = b"FAKETIMING"


def _generation(version: str) -> int:
    return int(version.split(".")[0])


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


# ---------------------------------------------------------------------------------------------- builder


class _HostMemory(bytes):
    """IHostMemory supports the buffer protocol; bytes() of it gives the serialized data."""


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class _Network:
    def __init__(self, trt: FakeTensorRT, flags: int) -> None:
        self.trt, self.flags = trt, flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []

    def has_flag(self, name: str) -> bool:
        value = _NETWORK_FLAGS[self.trt.generation].get(name)
        return value is not None and bool(self.flags & (1 << value))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _OnnxParser:
    def __init__(self, network: _Network, logger: Any) -> None:
        self.network, self.trt = network, network.trt
        self.errors: list[_ParserError] = []
        self.trt.record("OnnxParser", network.flags)

    def parse(self, model: bytes) -> bool:
        self.trt.record("OnnxParser.parse", len(model))
        if self.trt.generation == 8 and not self.network.has_flag("EXPLICIT_BATCH"):
            self.errors.append(_ParserError("ONNX parser only supports networks with an explicit batch dimension"))
            return False
        graph = onnx.load_from_string(model).graph
        bad = sorted({n.op_type for n in graph.node} & self.trt.unsupported_ops)
        self.errors += [_ParserError(f"No importer registered for op: {op}") for op in bad]
        if bad:
            return False
        dims = lambda vi: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)  # noqa: E731
        self.network.inputs = [_Tensor(vi.name, dims(vi)) for vi in graph.input]
        self.network.outputs = [_Tensor(vi.name, dims(vi)) for vi in graph.output]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]


class _Profile:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - real keyword names
        self.trt.record("IOptimizationProfile.set_shape", name, tuple(min), tuple(opt), tuple(max))
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class _TimingCache:
    def __init__(self, trt: FakeTensorRT, data: bytes) -> None:
        self.trt, self.data = trt, data

    def serialize(self) -> _HostMemory:
        self.trt.record("ITimingCache.serialize")
        return _HostMemory(TIMING_MAGIC + self.trt.device_tag)


class _Config:
    """IBuilderConfig. Setting an attribute the real generation lacks raises AttributeError."""

    _COMMON = {"trt", "flags", "pools", "profiles", "timing_cache", "default_device_type", "DLA_core", "calibrator"}

    def __init__(self, trt: FakeTensorRT) -> None:
        object.__setattr__(self, "trt", trt)
        object.__setattr__(self, "flags", 0)
        object.__setattr__(self, "pools", {})
        object.__setattr__(self, "profiles", [])
        object.__setattr__(self, "timing_cache", None)
        object.__setattr__(self, "default_device_type", trt.DeviceType.GPU)
        object.__setattr__(self, "DLA_core", -1)
        object.__setattr__(self, "calibrator", None)

    def __setattr__(self, name: str, value: Any) -> None:
        allowed = self._COMMON | ({"int8_calibrator"} if self.trt.generation < 11 else set())
        if name not in allowed:
            raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")
        self.trt.record(f"IBuilderConfig.{name}", value)
        object.__setattr__(self, "calibrator" if name == "int8_calibrator" else name, value)

    def __getattr__(self, name: str) -> Any:
        if name == "set_calibration_profile" and self.trt.generation < 11:
            return lambda profile: self.trt.record("IBuilderConfig.set_calibration_profile", profile)
        raise AttributeError(f"'tensorrt.IBuilderConfig' object has no attribute '{name}'")

    def set_flag(self, flag: IntEnum) -> None:
        self.trt.record("IBuilderConfig.set_flag", flag.name)
        object.__setattr__(self, "flags", self.flags | (1 << int(flag)))

    def get_flag(self, flag: IntEnum) -> bool:
        return bool(self.flags & (1 << int(flag)))

    def set_memory_pool_limit(self, pool: IntEnum, size: int) -> None:
        self.trt.record("IBuilderConfig.set_memory_pool_limit", pool.name, size)
        self.pools[pool.name] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.trt.record("IBuilderConfig.add_optimization_profile", profile.shapes)
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        self.trt.record("IBuilderConfig.create_timing_cache", bytes(data))
        return _TimingCache(self.trt, bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        ok = not cache.data or cache.data == TIMING_MAGIC + self.trt.device_tag or ignore_mismatch
        self.trt.record("IBuilderConfig.set_timing_cache", cache.data, ignore_mismatch, ok)
        if ok:
            object.__setattr__(self, "timing_cache", cache)
        return ok

    def get_timing_cache(self) -> _TimingCache | None:
        return self.timing_cache


class _Builder:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt = trt
        trt.record("Builder", logger)

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - real name
        return self.trt.dla_cores

    def create_network(self, flags: int = 0) -> _Network:
        self.trt.record("Builder.create_network", flags)
        return _Network(self.trt, flags)

    def create_builder_config(self) -> _Config:
        return _Config(self.trt)

    def create_optimization_profile(self) -> _Profile:
        return _Profile(self.trt)

    def _build_error(self, network: _Network, config: _Config) -> str | None:
        weak = [f for f in ("INT8", "FP16") if f in _BUILDER_FLAGS[self.trt.generation]
                and config.get_flag(getattr(self.trt.BuilderFlag, f))]
        if self.trt.generation == 10 and network.has_flag("STRONGLY_TYPED") and weak:
            return f"strongly typed network cannot use precision flags {weak}"
        if any(-1 in t.shape for t in network.inputs) and not config.profiles:
            return "network has dynamic inputs but no optimization profile"
        return None

    def build_serialized_network(self, network: _Network, config: _Config) -> _HostMemory | None:
        self.trt.record("Builder.build_serialized_network")
        if config.calibrator is not None:
            self.trt.record("calibrator.read_calibration_cache", config.calibrator.read_calibration_cache())
        error = self._build_error(network, config)
        if error or self.trt.fail_build:
            self.trt.record("build_error", error or "forced failure")
            return None
        inp, out = network.inputs[0], network.outputs[0]
        shapes = config.profiles[0].shapes[inp.name] if config.profiles else (inp.shape,) * 3
        meta = {"input": inp.name, "output": out.name, "classes": out.shape[1], "shapes": shapes,
                "version": self.trt.__version__}
        return _HostMemory(PLAN_MAGIC + json.dumps(meta).encode())


# ---------------------------------------------------------------------------------------------- runtime


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.trt = engine, engine.trt
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    # named-tensor API (8.5+)
    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.trt.record("IExecutionContext.set_input_shape", name, tuple(shape))
        lo, _, hi = self.engine.meta["shapes"]
        ok = name == self.engine.meta["input"] and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
        if ok:
            self.input_shape = tuple(shape)
        return ok

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert self.input_shape is not None
        if name == self.engine.meta["input"]:
            return self.input_shape
        return (self.input_shape[0], self.engine.meta["classes"])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.trt.record("IExecutionContext.set_tensor_address", name, ptr)
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.trt.record("IExecutionContext.execute_async_v3", stream_handle)
        return self._run(self.addresses[self.engine.meta["input"]], self.addresses[self.engine.meta["output"]])

    def _run(self, in_ptr: int, out_ptr: int) -> bool:
        assert self.input_shape is not None
        mem = self.trt.memory
        x = np.frombuffer(mem[in_ptr], np.float32, int(np.prod(self.input_shape))).reshape(self.input_shape)
        k = self.engine.meta["classes"]
        y = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True) * np.arange(1, k + 1, dtype=np.float32)
        mem[out_ptr][: y.nbytes] = y.astype(np.float32).tobytes()
        return True

    def __getattr__(self, name: str) -> Any:
        # binding-index API: 8.x only (removed in 10.0)
        if self.trt.generation != 8:
            raise AttributeError(f"'tensorrt.IExecutionContext' object has no attribute '{name}'")
        return getattr(_BindingContextMixin(self), name)


class _BindingContextMixin:
    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
        self.ctx.trt.record("IExecutionContext.set_binding_shape", index, tuple(shape))
        return self.ctx.set_input_shape(self.ctx.engine.names[index], shape)

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        return self.ctx.get_tensor_shape(self.ctx.engine.names[index])

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        self.ctx.trt.record("IExecutionContext.execute_async_v2", list(bindings), stream_handle)
        return self.ctx._run(bindings[0], bindings[1])


class _Engine:
    def __init__(self, trt: FakeTensorRT, meta: dict[str, Any]) -> None:
        self.trt, self.meta = trt, meta
        self.names = [meta["input"], meta["output"]]

    def create_execution_context(self) -> _Context:
        self.trt.record("ICudaEngine.create_execution_context")
        return _Context(self)

    @property
    def num_io_tensors(self) -> int:
        return 2

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> IntEnum:
        return self.trt.TensorIOMode.INPUT if name == self.meta["input"] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> IntEnum:
        return self.trt.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.meta["input"]:
            return (-1, *self.meta["shapes"][0][1:])
        return (-1, self.meta["classes"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.meta["shapes"]]

    def __getattr__(self, name: str) -> Any:
        if self.trt.generation != 8:
            raise AttributeError(f"'tensorrt.ICudaEngine' object has no attribute '{name}'")
        table = {
            "num_bindings": 2,
            "get_binding_name": lambda i: self.names[i],
            "binding_is_input": lambda i: i == 0,
            "get_binding_dtype": lambda i: self.trt.DataType.FLOAT,
            "get_binding_shape": lambda i: self.get_tensor_shape(self.names[i]),
            "get_profile_shape": lambda profile, i: self.get_tensor_profile_shape(self.names[i], profile),
        }
        if name not in table:
            raise AttributeError(name)
        return table[name]


class _Runtime:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        object.__setattr__(self, "trt", trt)
        object.__setattr__(self, "DLA_core", -1)

    def __setattr__(self, name: str, value: Any) -> None:
        self.trt.record(f"Runtime.{name}", value)
        object.__setattr__(self, name, value)

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        self.trt.record("Runtime.deserialize_cuda_engine", len(data))
        if not data.startswith(PLAN_MAGIC):
            return None
        return _Engine(self.trt, json.loads(data[len(PLAN_MAGIC):]))


class _Logger:
    Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}, start=0)
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, severity: Any = None) -> None:
        self.min_severity = severity


class _Calibrator:
    """Stands for tensorrt.IInt8EntropyCalibrator2 (8.x, 10.x): subclasses must call __init__."""

    def __init__(self) -> None:
        self._base_init_called = True


# ---------------------------------------------------------------------------------------------- module


class FakeTensorRT(_Recorder):
    """Pass as ``trt=`` wherever edge_resnet takes an injectable tensorrt module."""

    def __init__(self, version: str = "10.3.0", dla_cores: int = 0, unsupported_ops: frozenset[str] = frozenset(),
                 fail_build: bool = False, device_tag: bytes = b"gpu0") -> None:
        super().__init__()
        self.__version__ = version
        self.generation = _generation(version)
        self.dla_cores = dla_cores
        self.unsupported_ops = set(unsupported_ops)
        self.fail_build = fail_build
        self.device_tag = device_tag
        self.memory: dict[int, bytearray] = {}
        self.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", _NETWORK_FLAGS[self.generation])
        self.BuilderFlag = IntEnum("BuilderFlag", _BUILDER_FLAGS[self.generation])
        self.MemoryPoolType = IntEnum("MemoryPoolType", _MEMORY_POOLS)
        self.DeviceType = IntEnum("DeviceType", _DEVICE_TYPES)
        self.TensorIOMode = IntEnum("TensorIOMode", _IO_MODES)
        self.DataType = IntEnum("DataType", _DATA_TYPES)
        self.Logger = _Logger
        if self.generation < 11:
            self.IInt8EntropyCalibrator2 = _Calibrator

    def Builder(self, logger: Any) -> _Builder:  # noqa: N802 - mirrors the class name
        return _Builder(self, logger)

    def OnnxParser(self, network: _Network, logger: Any) -> _OnnxParser:  # noqa: N802
        return _OnnxParser(network, logger)

    def Runtime(self, logger: Any) -> _Runtime:  # noqa: N802
        return _Runtime(self, logger)

    @staticmethod
    def nptype(dtype: IntEnum) -> type:
        return _NPTYPES[int(dtype)]


class FakeCuda(_Recorder):
    """The runner's CUDA interface over host memory shared with a FakeTensorRT."""

    def __init__(self, trt: FakeTensorRT, device: DeviceInfo) -> None:
        super().__init__()
        self.memory, self.device = trt.memory, device
        self._ptrs = count(0x1000, 0x1000)

    def device_info(self, index: int) -> DeviceInfo:
        return self.device

    def set_device(self, index: int) -> None:
        self.record("set_device", index)

    def malloc(self, nbytes: int) -> int:
        ptr = next(self._ptrs)
        self.memory[ptr] = bytearray(nbytes)
        self.record("malloc", nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        self.record("free", ptr)
        del self.memory[ptr]

    def stream_create(self) -> object:
        return object()

    def stream_handle(self, stream: object) -> int:
        return 7

    def htod(self, ptr: int, host: np.ndarray, stream: object) -> None:
        data = np.ascontiguousarray(host).tobytes()
        assert len(data) <= len(self.memory[ptr]), "host to device copy overflows the device buffer"
        self.memory[ptr][: len(data)] = data
        self.record("htod", ptr, host.shape)

    def dtoh(self, host: np.ndarray, ptr: int, stream: object) -> None:
        host[...] = np.frombuffer(bytes(self.memory[ptr][: host.nbytes]), host.dtype).reshape(host.shape)
        self.record("dtoh", ptr, host.shape)

    def synchronize(self, stream: object) -> None:
        self.record("synchronize")

    def stream_destroy(self, stream: object) -> None:
        self.record("stream_destroy")

    def release(self) -> None:
        self.record("release")
