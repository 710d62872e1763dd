"""A recording fake of the ``tensorrt`` module (only what edge_resnet calls), of CUDA (cuda-python's runtime module,
pycuda's driver, and the runner's CUDA interface), and the plan/cache formats they share with ``fake_trtexec``.

``FakeTensorRT("8.6.1" | "10.3.0" | "11.0.0")`` has the real names of that generation and their enum values, lacks
what that generation lacks, and enforces that version's rules, so a call the real library would reject fails here
too. Each rule cites where it was read:

* Enums. 8.6: NetworkDefinitionCreationFlag EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1; BuilderFlag with STRICT_TYPES=4
  (so PREFER_PRECISION_CONSTRAINTS=11) (include/NvInfer.h, release/8.6). 10.x: EXPLICIT_BATCH=0 (deprecated,
  ignored), STRONGLY_TYPED=1; STRICT_TYPES gone (REFIT=4 ... PREFER_PRECISION_CONSTRAINTS=10) (NvInfer.h, release/10.x).
  11.x: no BuilderFlag.FP16/INT8/OBEY/PREFER_PRECISION_CONSTRAINTS, no IInt8EntropyCalibrator2, no
  IBuilderConfig.int8_calibrator / set_calibration_profile ("Removed Python APIs", 10.x->11.x migration);
  STRONGLY_TYPED=0 and no EXPLICIT_BATCH (11.x headers: ``kSTRONGLY_TYPED TRT_DEPRECATED_ENUM = 0``). The values of
  the remaining 11.x BuilderFlag members are assumed unchanged from 10.x; our code only uses names.
* The 8.x ONNX parser refuses a network without EXPLICIT_BATCH ("ONNX parser only supports networks with an explicit
  batch dimension"). A 10.x strongly typed network with INT8/FP16 flags fails to build (sampleOptions.cpp 10.x:
  "--best and --stronglyTyped cannot be both set").
* Binding-index API on 8.x engines and contexts only (removed in 10.0, 8.x->10.x migration guide).
* Plans: ``ftrt`` magic, bytes 24/25/26 = major/minor/patch of the writer (NVIDIA/TensorRT#3073); a runtime returns
  None for another version's plan ("The engine plan file is not compatible with this version of TensorRT,
  expecting library version ... got ...", NVIDIA/TensorRT#574, #2117).
* Calibration caches: this fake accepts only its own header ``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2``
  (8.x code MAJOR*1000+MINOR*100+PATCH, 10.x+ MAJOR*10000+MINOR*100+PATCH, NvInferRuntimeBase.h 10.x). TensorRT
  "will skip the file if it is incompatible" (NVIDIA/TensorRT#1378) and then calibrates, which with a cache-only
  calibrator has no data: 10.3 given a TRT-8600 header failed with "Tensor input is bound to nullptr"
  (NVIDIA/Deep-Learning-Accelerator-SW#26). Which headers the real one accepts is not published; exact match is the
  strictest reading, and our code writes the exact header, so it passes under any weaker rule.
* Timing caches: what ``create_timing_cache`` does with another version's or device's cache is not documented; the
  fake does one of the three things callers guard against (``foreign_timing_cache``): "reject" (set_timing_cache
  with ignore_mismatch=False returns False), "none" (create returns None, trtexec's "TimingCache creation failed"
  check, sampleEngines.cpp) or "raise".
* DataType UINT8 = 5 and TensorFormat LINEAR = 0 (NvInferRuntimeBase.h, 8.6 and 10.x); a UINT8 network input
  must feed a Cast to FP32/FP16, or the build fails (``formats.uint8_input_problem``, NVIDIA/TensorRT#3985). The
  engines report their input as LINEAR: the only format our builds request (trtexec's default for an input
  without ``--inputIOFormats``, sampleEngines.cpp 10.x).
* The build uses the CUDA device current on the calling thread (TensorRT builds on the current device); with no
  device selected on a thread, the runtime API uses device 0.

CUDA fakes (per-thread rules from the CUDA driver/runtime API references and inducer/pycuda#242):

* ``FakePyCudaDriver`` (pycuda.driver): the context stack is per thread; a retained primary context is not pushed;
  ``mem_alloc``/``memcpy_*``/``Stream`` on a thread with no current context raise pycuda's LogicError ("invalid device
  context - no currently active context?").
* ``FakeCudart`` (cuda.bindings.runtime): ``cudaSetDevice`` selects the device of the *calling thread*.
* ``FakeCuda``: the runner's interface, with the same rule (device work only inside ``activate()`` on that thread).

Everything our code does is appended to ``.calls`` as ``(name, args)``; ``.called(name)`` filters.
The fake engine computes ``logits[n, k] = mean(input[n]) * (k + 1)`` so the runner can be checked end to end; with
``execute_graphs=True`` it runs the ONNX graph it was built from with ONNX Runtime instead, so a test can compare
the numbers of two engines (the frame engine's against the float-input engine's).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from itertools import count
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

from edge_resnet.backends.tensorrt.cuda import DeviceInfo

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
_DATA_TYPES = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}
_NPTYPES = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.bool_, 5: np.uint8}
_TENSOR_FORMATS = {"LINEAR": 0, "CHW2": 1, "HWC8": 2, "CHW4": 3, "CHW16": 4, "CHW32": 5, "DHWC8": 6, "CDHW32": 7,
                   "HWC": 8}
_GRAPHS: dict[str, bytes] = {}  # graphs built in this process, by sha256 (execute_graphs)

from fakes.formats import (  # noqa: E402
    PLAN_MAGIC,
    TIMING_MAGIC,
    cache_header,
    engine_meta,
    nv_version_code,
    plan_bytes,
    read_plan,
    timing_cache_bytes,
    uint8_input_problem,
    version_tuple,
)

__all__ = ["PLAN_MAGIC", "TIMING_MAGIC", "cache_header", "engine_meta", "nv_version_code", "plan_bytes", "read_plan",
           "timing_cache_bytes", "version_tuple"]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def record(self, name: str, *args: Any) -> None:
        with self._lock:
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
        self.model: onnx.ModelProto | None = None

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
        proto = onnx.load_from_string(model)
        bad = sorted({n.op_type for n in proto.graph.node} & self.trt.unsupported_ops)
        self.errors += [_ParserError(f"No importer registered for op: {op}") for op in bad]
        if bad:
            return False
        dims = lambda vi: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)  # noqa: E731
        self.network.inputs = [_Tensor(vi.name, dims(vi)) for vi in proto.graph.input]
        self.network.outputs = [_Tensor(vi.name, dims(vi)) for vi in proto.graph.output]
        self.network.model = proto
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
        return _HostMemory(timing_cache_bytes(self.trt.__version__, self.trt.device_tag))


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

    def _own(self, data: bytes) -> bool:
        return not data or data == timing_cache_bytes(self.trt.__version__, self.trt.device_tag)

    def create_timing_cache(self, data: bytes) -> _TimingCache | None:
        data = bytes(data)
        self.trt.record("IBuilderConfig.create_timing_cache", data)
        if not self._own(data):
            if self.trt.foreign_timing_cache == "none":
                return None
            if self.trt.foreign_timing_cache == "raise":
                raise RuntimeError("Error Code 1: Serialization (timing cache of another TensorRT/device)")
        return _TimingCache(self.trt, data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        ok = self._own(cache.data) or ignore_mismatch
        self.trt.record("IBuilderConfig.set_timing_cache", cache.data, ignore_mismatch, ok)
        if ok:
            object.__setattr__(self, "timing_cache", cache)
        return ok

    def get_timing_cache(self) -> _TimingCache | None:
        return self.timing_cache


class _Builder:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt = trt
        self.device = trt.current_device()  # TensorRT builds on the calling thread's current device
        trt.record("Builder", logger)
        trt.record("Builder.device", self.device)

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
        uint8 = uint8_input_problem(network.model) if network.model is not None else None
        if uint8:
            return f"Error Code 4: API Usage Error ({uint8})"
        if config.calibrator is not None:
            cache = bytes(config.calibrator.read_calibration_cache() or b"")
            self.trt.record("calibrator.read_calibration_cache", cache)
            own = cache.decode("ascii", "replace").startswith(cache_header(self.trt.__version__) + "\n")
            # a skipped cache (NVIDIA/TensorRT#1378) means calibrating, which needs batches the calibrator lacks
            if not own and config.calibrator.get_batch(["input"]) is None:
                return "calibration cache rejected and no calibration data: Tensor \"input\" is bound to nullptr"
        return None

    def build_serialized_network(self, network: _Network, config: _Config) -> _HostMemory | None:
        self.trt.record("Builder.build_serialized_network")
        error = self._build_error(network, config)
        if error or self.trt.fail_build:
            self.trt.record("build_error", error or "forced failure")
            return None
        inp = network.inputs[0]
        shapes = config.profiles[0].shapes[inp.name] if config.profiles else (inp.shape,) * 3
        assert network.model is not None
        meta = {**engine_meta(network.model, shapes), "device": self.device}
        if self.trt.execute_graphs:
            import hashlib

            data = network.model.SerializeToString()
            meta["graph_sha"] = hashlib.sha256(data).hexdigest()
            _GRAPHS[meta["graph_sha"]] = data
        return _HostMemory(plan_bytes(self.trt.__version__, meta))


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
        built_on, here = self.engine.meta.get("device", 0), self.trt.current_device()
        if built_on != here:  # the engine's memory and kernels live on the device it was deserialized for
            raise RuntimeError(f"engine of CUDA device {built_on} executed with device {here} current")
        mem = self.trt.memory
        dtype = np.dtype(self.engine.meta.get("input_dtype", "float32"))
        x = np.frombuffer(mem[in_ptr], dtype, int(np.prod(self.input_shape))).reshape(self.input_shape)
        k = self.engine.meta["classes"]
        session = self.engine.session()
        if session is not None:
            y = session.run(None, {self.engine.meta["input"]: x})[0]
        else:
            y = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True, dtype=np.float32) * np.arange(1, k + 1,
                                                                                                 dtype=np.float32)
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
        self._session: Any = None

    def session(self) -> Any:
        """ONNX Runtime on the graph this engine was built from (execute_graphs), else None."""
        if not self.trt.execute_graphs:
            return None
        if self._session is None:
            import onnxruntime as ort

            data = _GRAPHS.get(self.meta.get("graph_sha", "")) or (
                Path(self.meta["graph_path"]).read_bytes() if "graph_path" in self.meta else None)
            if data is None:
                raise AssertionError("execute_graphs: this engine's graph was not built in this process")
            self._session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return self._session

    def _dtype(self, name: str) -> IntEnum:
        uint8 = name == self.meta["input"] and self.meta.get("input_dtype") == "uint8"
        return self.trt.DataType.UINT8 if uint8 else self.trt.DataType.FLOAT

    def get_tensor_format(self, name: str) -> IntEnum:
        return self.trt.TensorFormat.LINEAR

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
        return self._dtype(name)

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
            "get_binding_dtype": lambda i: self._dtype(self.names[i]),
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
        plan = read_plan(bytes(data))
        if plan is None or plan[0] != version_tuple(self.trt.__version__):
            return None  # "The engine plan file is not compatible with this version of TensorRT"
        # an engine lives on the device current when it is deserialized
        return _Engine(self.trt, {**plan[1], "built_on": plan[1].get("device"), "device": self.trt.current_device()})


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
                 fail_build: bool = False, device_tag: bytes = b"gpu0", foreign_timing_cache: str = "reject",
                 execute_graphs: bool = False) -> None:
        super().__init__()
        self.__version__ = version
        self.generation = int(version.split(".")[0])
        self.dla_cores = dla_cores
        self.unsupported_ops = set(unsupported_ops)
        self.fail_build = fail_build
        self.device_tag = device_tag
        self.foreign_timing_cache = foreign_timing_cache
        self.execute_graphs = execute_graphs
        self.memory: dict[int, bytearray] = {}
        self.current_device = lambda: 0  # replaced by the CUDA fake the test attaches (attach_cuda)
        self.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", _NETWORK_FLAGS[self.generation])
        self.BuilderFlag = IntEnum("BuilderFlag", _BUILDER_FLAGS[self.generation])
        self.MemoryPoolType = IntEnum("MemoryPoolType", _MEMORY_POOLS)
        self.DeviceType = IntEnum("DeviceType", _DEVICE_TYPES)
        self.TensorIOMode = IntEnum("TensorIOMode", _IO_MODES)
        self.DataType = IntEnum("DataType", _DATA_TYPES)
        self.TensorFormat = IntEnum("TensorFormat", _TENSOR_FORMATS)
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


# ------------------------------------------------------------------------------------------------ CUDA


class FakeCuda(_Recorder):
    """The runner's CUDA interface over host memory shared with a FakeTensorRT; device work only inside
    ``activate()`` on the calling thread (the per-thread rule of :mod:`edge_resnet.backends.tensorrt.cuda`)."""

    def __init__(self, trt: FakeTensorRT, device: DeviceInfo, devices: int = 2) -> None:
        super().__init__()
        self.trt = trt
        self.memory, self.device = trt.memory, device
        self.devices = devices
        self.index = 0
        self._local = threading.local()
        self._ptrs = count(0x1000, 0x1000)
        trt.current_device = self.current_device

    def current_device(self) -> int:
        return getattr(self._local, "device", 0)

    def _check(self, what: str) -> None:
        if getattr(self._local, "depth", 0) < 1:
            raise RuntimeError(f"{what} on thread {threading.current_thread().name} without an active CUDA device")

    def device_info(self, index: int) -> DeviceInfo:
        if not 0 <= index < self.devices:
            raise RuntimeError(f"invalid device ordinal {index}")
        return self.device

    def set_device(self, index: int) -> None:
        self.record("set_device", index)
        self.index = index

    @contextmanager
    def activate(self) -> Iterator[None]:
        self._local.depth = getattr(self._local, "depth", 0) + 1
        previous = getattr(self._local, "device", 0)
        self._local.device = self.index
        self.record("activate", threading.current_thread().name, self.index)
        try:
            yield
        finally:
            self._local.depth -= 1
            self._local.device = previous

    def malloc(self, nbytes: int) -> int:
        self._check("malloc")
        ptr = next(self._ptrs)
        self.memory[ptr] = bytearray(nbytes)
        self.record("malloc", nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        self._check("free")
        self.record("free", ptr)
        del self.memory[ptr]

    def stream_create(self) -> object:
        self._check("stream_create")
        return object()

    def stream_handle(self, stream: object) -> int:
        return 7

    def htod(self, ptr: int, host: np.ndarray, stream: object) -> None:
        self._check("htod")
        data = np.ascontiguousarray(host).tobytes()
        assert len(data) <= len(self.memory[ptr]), "host to device copy overflows the device buffer"
        self.memory[ptr][: len(data)] = data
        self.record("htod", ptr, host.shape)

    def dtoh(self, host: np.ndarray, ptr: int, stream: object) -> None:
        self._check("dtoh")
        host[...] = np.frombuffer(bytes(self.memory[ptr][: host.nbytes]), host.dtype).reshape(host.shape)
        self.record("dtoh", ptr, host.shape)

    def synchronize(self, stream: object) -> None:
        self.record("synchronize")

    def stream_destroy(self, stream: object) -> None:
        self._check("stream_destroy")
        self.record("stream_destroy")

    def release(self) -> None:
        self.record("release")


class LogicError(RuntimeError):
    """pycuda._driver.LogicError"""


class _PyCudaContext:
    def __init__(self, drv: FakePyCudaDriver, index: int) -> None:
        self.drv, self.index = drv, index

    def push(self) -> None:
        self.drv._stack().append(self)
        self.drv.record("Context.push", threading.current_thread().name, self.index)

    def detach(self) -> None:
        self.drv.record("Context.detach", self.index)


class _PyCudaAllocation:
    def __init__(self, drv: FakePyCudaDriver, ptr: int) -> None:
        self.drv, self.ptr = drv, ptr

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        self.drv._require("DeviceAllocation.free")
        self.drv.memory.pop(self.ptr, None)


class FakePyCudaDriver(_Recorder):
    """``pycuda.driver``: per-thread context stacks; device calls need a current context on the calling thread."""

    def __init__(self, trt: FakeTensorRT, device: DeviceInfo, devices: int = 1) -> None:
        super().__init__()
        self.trt, self.memory, self.info, self.devices = trt, trt.memory, device, devices
        self._local = threading.local()
        self._ptrs = count(0x10000, 0x1000)
        self.device_attribute = SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")
        drv = self

        class Context:
            @staticmethod
            def pop() -> None:
                stack = drv._stack()
                if not stack:
                    raise LogicError("context::pop failed: cannot pop non-current context")
                stack.pop()
                drv.record("Context.pop", threading.current_thread().name)

        class Device:
            def __init__(self, index: int) -> None:
                if not 0 <= index < drv.devices:
                    raise LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
                self.index = index

            def name(self) -> str:
                return drv.info.name

            def compute_capability(self) -> tuple[int, int]:
                major, minor = drv.info.compute_capability.split(".")
                return int(major), int(minor)

            def get_attribute(self, attribute: str) -> int:
                assert attribute == "MULTIPROCESSOR_COUNT"
                return int(drv.info.sm_count or 0)

            def total_memory(self) -> int:
                return int(drv.info.memory_mib or 0) << 20

            def retain_primary_context(self) -> _PyCudaContext:
                return _PyCudaContext(drv, self.index)  # retained, not pushed (cuDevicePrimaryCtxRetain)

        class Stream:
            def __init__(self) -> None:
                drv._require("Stream")
                self.handle = 0x51

            def synchronize(self) -> None:
                drv._require("Stream.synchronize")

        self.Context, self.Device, self.Stream = Context, Device, Stream
        trt.current_device = self.current_device

    def _stack(self) -> list[_PyCudaContext]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def current_device(self) -> int:
        stack = self._stack()
        return stack[-1].index if stack else 0

    def _require(self, what: str) -> None:
        if not self._stack():
            raise LogicError(f"{what} failed: explicit_context_dependent failed: invalid device context - no "
                             "currently active context?")

    def init(self) -> None:
        self.record("init")

    def mem_alloc(self, nbytes: int) -> _PyCudaAllocation:
        self._require("mem_alloc")
        ptr = next(self._ptrs)
        self.memory[ptr] = bytearray(nbytes)
        return _PyCudaAllocation(self, ptr)

    def memcpy_htod_async(self, dest: int, src: np.ndarray, stream: Any = None) -> None:
        self._require("memcpy_htod_async")
        data = np.ascontiguousarray(src).tobytes()
        self.memory[int(dest)][: len(data)] = data

    def memcpy_dtoh_async(self, dest: np.ndarray, src: int, stream: Any = None) -> None:
        self._require("memcpy_dtoh_async")
        dest[...] = np.frombuffer(bytes(self.memory[int(src)][: dest.nbytes]), dest.dtype).reshape(dest.shape)


class FakeCudart(_Recorder):
    """``cuda.bindings.runtime``: (err, value) tuples; ``cudaSetDevice`` selects the calling thread's device."""

    class cudaError_t:  # noqa: N801 - real name
        cudaSuccess = 0
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, trt: FakeTensorRT, device: DeviceInfo, devices: int = 2) -> None:
        super().__init__()
        self.trt, self.memory, self.info, self.devices = trt, trt.memory, device, devices
        self._local = threading.local()
        self._ptrs = count(0x100000, 0x1000)
        trt.current_device = self.current_device

    def current_device(self) -> int:
        return getattr(self._local, "device", 0)  # the runtime API's default device is 0

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, Any]:  # noqa: N802
        if not 0 <= index < self.devices:
            return (self.cudaError_t.cudaErrorInvalidDevice, None)
        major, minor = self.info.compute_capability.split(".")
        prop = SimpleNamespace(name=self.info.name.encode() + b"\0\0", major=int(major), minor=int(minor),
                               multiProcessorCount=self.info.sm_count or 0,
                               totalGlobalMem=(self.info.memory_mib or 0) << 20)
        return (self.cudaError_t.cudaSuccess, prop)

    def cudaSetDevice(self, index: int) -> tuple[int]:  # noqa: N802
        self.record("cudaSetDevice", threading.current_thread().name, index)
        if not 0 <= index < self.devices:
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self._local.device = index
        return (self.cudaError_t.cudaSuccess,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:  # noqa: N802
        ptr = next(self._ptrs)
        self.memory[ptr] = bytearray(nbytes)
        self.record("cudaMalloc", self.current_device(), nbytes)
        return (self.cudaError_t.cudaSuccess, ptr)

    def cudaFree(self, ptr: int) -> tuple[int]:  # noqa: N802
        self.memory.pop(ptr, None)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return (self.cudaError_t.cudaSuccess, 0x77)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:  # noqa: N802
        import ctypes

        self.record("cudaMemcpyAsync", self.current_device(), kind)
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:nbytes]), nbytes)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)
