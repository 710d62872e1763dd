"""The few CUDA calls the runner needs, over cuda-python's runtime bindings or pycuda.

CUDA's current device and context belong to a *host thread*, and ``Model.stream()`` infers on worker threads, so
every entry point makes the device current on the calling thread (:meth:`activate`) instead of once at load:

* runtime API (cuda-python): ``cudaSetDevice`` "Sets device as the current device for the calling host thread"
  (CUDA Runtime API reference); a thread that never calls it uses device 0, so device index > 0 needs it on every
  thread that touches the engine.
* driver API (pycuda): the context stack is per CPU thread (cuCtxPopCurrent: "That context may then be made
  current to a different CPU thread by calling cuCtxPushCurrent()"), and a retained primary context "is not pushed
  onto the stack" (cuDevicePrimaryCtxRetain). pycuda's author: "Do *not* use autoinit. You need to push the primary
  context onto the context stack to activate it" (inducer/pycuda#242); without it a worker thread fails with
  "invalid device context - no currently active context?". So each call pushes the primary context (which
  TensorRT's runtime API also uses) and pops it again.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edge_resnet.errors import BackendError, BackendUnavailable


@dataclass(frozen=True)
class DeviceInfo:
    """What identifies a GPU for an engine: cudaDeviceProp name, major.minor, multiProcessorCount and
    totalGlobalMem (trtexec prints the same four as "Selected Device", "Compute Capability", "SMs" and "Device
    Global Memory ... MiB", samples/common/sampleDevice.cpp setCudaDevice). Jetson Orin modules all report the name
    "Orin" (trtexec logs of AGX Orin and Orin NX), so the SM count and memory tell an AGX Orin from an Orin NX/Nano."""

    name: str
    compute_capability: str  # "8.7"
    sm_count: int | None = None
    memory_mib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_index(profile_device: str) -> int:
    """"cuda:1" -> 1, "cuda" / "" -> 0."""
    m = re.fullmatch(r"(?:cuda|gpu)?:?(\d*)", str(profile_device).strip().lower())
    if not m:
        raise BackendError(f"cannot read CUDA device {profile_device!r}", 'write it as "cuda:0"')
    return int(m.group(1) or 0)


class CudaRuntime:
    """cuda-python's runtime bindings (cuda.bindings.runtime, or the older cuda.cudart)."""

    def __init__(self, cudart: ModuleType) -> None:
        self.rt = cudart
        self.index = 0
        self._local = threading.local()

    def _call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA call failed: {err}", "check the GPU and driver with nvidia-smi / tegrastats")
        return rest[0] if len(rest) == 1 else None

    def device_info(self, index: int) -> DeviceInfo:
        prop = self._call(self.rt.cudaGetDeviceProperties(index))
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name, f"{prop.major}.{prop.minor}", int(prop.multiProcessorCount),
                          int(prop.totalGlobalMem) >> 20)

    def set_device(self, index: int) -> None:
        """Select the device for this runtime and make it current on the calling thread."""
        self.index = index
        self._local.device = None
        with self.activate():
            pass

    @contextmanager
    def activate(self) -> Iterator[None]:
        if getattr(self._local, "device", None) != self.index:
            self._call(self.rt.cudaSetDevice(self.index))
            self._local.device = self.index
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call(self.rt.cudaFree(ptr))

    def stream_create(self) -> Any:
        return self._call(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def htod(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream))

    def dtoh(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamDestroy(stream))

    def release(self) -> None:
        pass


class PyCudaRuntime:
    """pycuda's driver API over the device's primary context (the one TensorRT's runtime API uses)."""

    def __init__(self, driver: ModuleType) -> None:
        self.drv = driver
        self.drv.init()
        self._allocs: dict[int, Any] = {}
        self._ctx: Any = None
        self.index = 0

    def device_info(self, index: int) -> DeviceInfo:
        dev = self.drv.Device(index)
        major, minor = dev.compute_capability()
        sms = dev.get_attribute(self.drv.device_attribute.MULTIPROCESSOR_COUNT)
        return DeviceInfo(dev.name(), f"{major}.{minor}", int(sms), int(dev.total_memory()) >> 20)

    def set_device(self, index: int) -> None:
        if self._ctx is None:
            self.index = index
            self._ctx = self.drv.Device(index).retain_primary_context()

    @contextmanager
    def activate(self) -> Iterator[None]:
        if self._ctx is None:
            raise BackendError("the CUDA device was not selected before use", "call set_device(index) first")
        self._ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(nbytes)
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def stream_create(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(ptr, host, stream)

    def dtoh(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(host, ptr, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        pass  # pycuda frees the stream with the object

    def release(self) -> None:
        if self._ctx is not None:
            self._ctx.detach()  # the retain's reference
            self._ctx = None


# tried in order; cuda-python 13 removed the cuda.cudart alias (cuda-bindings 13.0.0 release notes)
CUDA_LOADERS: tuple[tuple[str, Callable[[ModuleType], Any]], ...] = (
    ("cuda.bindings.runtime", CudaRuntime),
    ("cuda.cudart", CudaRuntime),
    ("pycuda.driver", PyCudaRuntime),
)


def load_cuda() -> Any:
    for module_name, wrap in CUDA_LOADERS:
        try:
            return wrap(importlib.import_module(module_name))
        except ImportError:
            continue
    raise BackendUnavailable(
        "neither cuda-python nor pycuda is installed, so TensorRT engines cannot be run from Python here",
        "pip install cuda-python (or pycuda)",
    )
