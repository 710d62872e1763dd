"""Run a deserialized engine: Polygraphy's runner shape (``infer`` checks the input against the declared input
metadata, ``infer_impl`` does the work; tools/Polygraphy polygraphy/backend/base/runner.py) over :mod:`.cuda`.

I/O per TensorRT generation: 8.x binding indices (``set_binding_shape`` / ``execute_async_v2``), 10.x/11.x named
tensors (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``; 8.x->10.x migration guide, and
samples/python/common_runtime.py of release/10.x, which sets every I/O tensor's address before
``execute_async_v3``).

A frame engine (see :mod:`.frames`) has a uint8 N x S x S x 3 input; its dtype comes from the engine like any
other (``trt.nptype`` maps uint8 in 10.0's python/packaging/bindings_wheel/tensorrt/__init__.py, and an older 8.x
``nptype`` has no uint8, so the DataType's name is the fallback). It must be in the LINEAR format the builds ask for
(``get_tensor_format``, named-tensor API), the row-major NHWC bytes the host copies.

Not thread-safe (one IExecutionContext, one stream, shared device buffers): ``thread_safe = False``, so the runtime
serialises calls; but the calls may come from any thread, so each makes the CUDA device current first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edge_resnet.backends.base import Runner
from edge_resnet.errors import BackendError

_NUMPY_OF_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                 "UINT8": np.uint8}


def numpy_dtype(trt: ModuleType, dtype: Any) -> np.dtype:
    """The numpy dtype of a TensorRT DataType: ``trt.nptype``, else by the member's name."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError, ValueError):
        name = getattr(dtype, "name", str(dtype).rpartition(".")[2])
        if name not in _NUMPY_OF_TRT:
            raise BackendError(f"the engine has a tensor of TensorRT type {name}, which edge-resnet does not feed",
                               "build the engine from the bundle's graphs (./build_engine.sh)") from None
        return np.dtype(_NUMPY_OF_TRT[name])


@dataclass
class _Binding:
    name: str
    index: int
    is_input: bool
    dtype: np.dtype
    ptr: int = 0


class _NamedTensorIO:
    """TensorRT 8.5+/10/11: tensors by name, execute_async_v3."""

    def __init__(self, trt: ModuleType, engine: Any) -> None:
        self.trt = trt
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.tensors = [
            _Binding(n, i, engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
                     numpy_dtype(trt, engine.get_tensor_dtype(n)))
            for i, n in enumerate(names)
        ]

    def max_shape(self, t: _Binding) -> tuple[int, ...]:
        shape = self.engine.get_tensor_profile_shape(t.name, 0)[2] if t.is_input else self.engine.get_tensor_shape(t.name)
        return tuple(int(d) for d in shape)

    def profile_batches(self, t: _Binding) -> tuple[int, int]:
        shapes = self.engine.get_tensor_profile_shape(t.name, 0)
        return int(shapes[0][0]), int(shapes[2][0])

    def set_input_shape(self, context: Any, t: _Binding, shape: tuple[int, ...]) -> None:
        if not context.set_input_shape(t.name, shape):
            raise BackendError(f"TensorRT rejected input shape {shape} for {t.name!r}")

    def output_shape(self, context: Any, t: _Binding) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_tensor_shape(t.name))

    def execute(self, context: Any, stream_handle: int) -> bool:
        for t in self.tensors:
            context.set_tensor_address(t.name, t.ptr)
        return bool(context.execute_async_v3(stream_handle))


class _BindingsIO:
    """TensorRT 8.x: binding indices, set_binding_shape, execute_async_v2 (deprecated in 8.5, gone in 10)."""

    def __init__(self, trt: ModuleType, engine: Any) -> None:
        self.trt = trt
        self.engine = engine
        self.tensors = [
            _Binding(engine.get_binding_name(i), i, engine.binding_is_input(i),
                     numpy_dtype(trt, engine.get_binding_dtype(i)))
            for i in range(engine.num_bindings)
        ]

    def max_shape(self, t: _Binding) -> tuple[int, ...]:
        shape = self.engine.get_profile_shape(0, t.index)[2] if t.is_input else self.engine.get_binding_shape(t.index)
        return tuple(int(d) for d in shape)

    def profile_batches(self, t: _Binding) -> tuple[int, int]:
        shapes = self.engine.get_profile_shape(0, t.index)
        return int(shapes[0][0]), int(shapes[2][0])

    def set_input_shape(self, context: Any, t: _Binding, shape: tuple[int, ...]) -> None:
        if not context.set_binding_shape(t.index, shape):
            raise BackendError(f"TensorRT rejected input shape {shape} for {t.name!r}")

    def output_shape(self, context: Any, t: _Binding) -> tuple[int, ...]:
        return tuple(int(d) for d in context.get_binding_shape(t.index))

    def execute(self, context: Any, stream_handle: int) -> bool:
        return bool(context.execute_async_v2([t.ptr for t in self.tensors], stream_handle))


IO_CLASSES: dict[str, Callable[[ModuleType, Any], Any]] = {"tensors": _NamedTensorIO, "bindings": _BindingsIO}


class TensorRTRunner(Runner):
    """A deserialized engine. Device buffers are allocated once, for the profile's max batch."""

    thread_safe = False
    artifact_noun = "engine"

    def __init__(self, trt: ModuleType, engine: Any, cuda: Any, io_api: str, output_name: str | None = None, *,
                 reverse_channels: bool = False) -> None:
        self.trt, self.engine, self.cuda = trt, engine, cuda
        self.reverse_channels = reverse_channels  # frame engines: the frames' channel order is not the engine's
        with cuda.activate():
            self.io = IO_CLASSES[io_api](trt, engine)
            self.context = engine.create_execution_context()
            inputs = [t for t in self.io.tensors if t.is_input]
            outputs = [t for t in self.io.tensors if not t.is_input]
            if len(inputs) != 1 or not outputs:
                raise BackendError(f"engine has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and >=1")
            named = [t for t in outputs if t.name == output_name]
            self.output = named[0] if named else outputs[0]
            self.input = inputs[0]
            self.input_name = self.input.name
            self.input_dtype = self.input.dtype
            if self.input.dtype == np.uint8:
                _check_linear(trt, engine, self.input.name)
            elif reverse_channels:
                raise BackendError("channel reversal is for frame engines (uint8 input); this engine takes "
                                   f"{self.input.dtype} input")
            self.min_batch, self.max_batch = self.io.profile_batches(self.input)
            self.sample_shape = self.io.max_shape(self.input)[1:]
            self.stream = cuda.stream_create()
            for t in self.io.tensors:
                shape = self.io.max_shape(t)
                t.ptr = cuda.malloc(int(np.prod((self.max_batch, *shape[1:]))) * t.dtype.itemsize)

    # ---- working part (Runner.infer checks the batch and cuts it to max_batch)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.stream is None:
            raise BackendError("this TensorRT runner is closed", "load the bundle again")
        with self.cuda.activate():
            return self._run_chunk(batch)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        padded = n if n >= self.min_batch else self.min_batch  # static (DLA) engines: pad to the built batch
        host_in = np.zeros((padded, *self.sample_shape), self.input.dtype)
        host_in[:n] = chunk[..., ::-1] if self.reverse_channels else chunk  # the copy we make anyway
        self.io.set_input_shape(self.context, self.input, host_in.shape)
        self.cuda.htod(self.input.ptr, np.ascontiguousarray(host_in), self.stream)
        if not self.io.execute(self.context, self.cuda.stream_handle(self.stream)):
            raise BackendError("TensorRT execution failed (see the TensorRT log)")
        out = self.output
        host_out = np.empty(self.io.output_shape(self.context, out), out.dtype)
        self.cuda.dtoh(host_out, out.ptr, self.stream)
        self.cuda.synchronize(self.stream)
        return host_out[:n].astype(np.float32, copy=False)

    def close(self) -> None:
        if self.stream is None:
            return
        with self.cuda.activate():
            for t in self.io.tensors:
                if t.ptr:
                    self.cuda.free(t.ptr)
                    t.ptr = 0
            self.cuda.stream_destroy(self.stream)
            self.stream = None
        self.cuda.release()


def _check_linear(trt: ModuleType, engine: Any, name: str) -> None:
    """A uint8 frame input must be LINEAR (row-major NHWC bytes), what the builds request (see :mod:`.frames`)."""
    get_format = getattr(engine, "get_tensor_format", None)
    if get_format is None:  # no named-tensor API to ask: the builds only ever request LINEAR
        return
    fmt = get_format(name)
    if fmt != trt.TensorFormat.LINEAR:
        raise BackendError(f"the engine's uint8 input {name!r} has format {getattr(fmt, 'name', fmt)}, not LINEAR",
                           "build the frame engine with the bundle's ./build_engine.sh --frames (no --inputIOFormats)")
