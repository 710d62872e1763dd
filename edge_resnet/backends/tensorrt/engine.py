"""A built engine and its record: which TensorRT and GPU built it, checked before anything deserializes it.

Engines are not portable across GPUs or TensorRT versions ("The engine plan file is generated on an incompatible
device, expecting compute 6.1 got compute 7.5, please rebuild", NVIDIA/TensorRT#818, #564), and TensorRT only
warns when the GPU model differs at the same compute capability ("Using an engine plan file across different
models of devices is not recommended and is likely to affect performance or even cause errors",
NVIDIA/TensorRT#4233). So we check ourselves, from three sources:

* the plan header: a serialized engine starts with the magic ``ftrt`` (torch-tensorrt checks
  ``startswith(b"ftrt")``) and bytes 24, 25, 26 hold the major, minor and patch of the TensorRT that wrote it
  (NVIDIA's answer in NVIDIA/TensorRT#3073, comment 1599934548; autowarefoundation/autoware_universe
  tensorrt_common ``TRT_MAJOR_IDX = 24`` ... ``validateEngine``, used with TensorRT 8.6 and 10);
* the record (``engine.json``) written next to the engine by whoever built it (``build_engine.sh`` from trtexec's
  "=== Device Information ===" lines, or the Python build from cudaDeviceProp): TensorRT version, GPU name,
  compute capability, SM count, memory, the engine's sha256, the ONNX it was built from and the manifest of the
  bundle it belongs to;
* the device it is loaded on.

Orin modules all report the device name "Orin" (trtexec on AGX Orin and Orin NX), so the name alone cannot tell
an AGX Orin engine from an Orin Nano one: the SM count (an AGX Orin's trtexec log shows "SMs: 16" and
"Device Global Memory: 28826 MiB") and the memory (which also separates an Orin NX 16 GB from an Orin Nano 8 GB
of the same SM count) are compared too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_resnet.backends.tensorrt.cuda import DeviceInfo
from edge_resnet.backends.tensorrt.versions import Version, format_version, parse_version
from edge_resnet.errors import BundleError

log = logging.getLogger(__name__)

PLAN_MAGIC = b"ftrt"
_VERSION_OFFSET = 24  # bytes 24, 25, 26: major, minor, patch (NVIDIA/TensorRT#3073)
RECORD_FORMAT = 1
MAX_RECORD_BYTES = 1 << 20
MEMORY_TOLERANCE = 0.15  # Jetson memory seen by CUDA moves a little with carve-outs; 8 vs 16 GB does not
REBUILD_FIX = ("TensorRT engines are not portable across GPUs or TensorRT versions (NVIDIA/TensorRT#818): rebuild it "
               "on this device with the bundle's ./build_engine.sh (or edge-resnet compile there)")


def sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_version(path: Path) -> Version:
    """The TensorRT (major, minor, patch) that serialized the plan at ``path``, from its header."""
    with open(path, "rb") as f:
        head = f.read(_VERSION_OFFSET + 3)
    if len(head) < _VERSION_OFFSET + 3 or not head.startswith(PLAN_MAGIC):
        raise BundleError(f"{path} is not a TensorRT engine (no 'ftrt' plan header)",
                          "build it again with the bundle's ./build_engine.sh")
    return head[_VERSION_OFFSET], head[_VERSION_OFFSET + 1], head[_VERSION_OFFSET + 2]


# ----------------------------------------------------------------------------------------------- record


@dataclass
class EngineRecord:
    """``engine.json``: how, where and from what an engine was built."""

    engine: str
    engine_sha256: str
    tensorrt_version: str
    device: DeviceInfo
    onnx: str | None = None
    onnx_sha256: str | None = None
    manifest_sha256: str | None = None
    dla_core: int | None = None
    built_by: str = "edge-resnet"
    trtexec: list[str] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "engine": self.engine, "engine_sha256": self.engine_sha256,
                "tensorrt_version": self.tensorrt_version, "device": self.device.to_dict(), "onnx": self.onnx,
                "onnx_sha256": self.onnx_sha256, "manifest_sha256": self.manifest_sha256, "dla_core": self.dla_core,
                "built_by": self.built_by, "trtexec": list(self.trtexec), "timing": dict(self.timing), **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> EngineRecord:
        try:
            if d.get("format") != RECORD_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {RECORD_FORMAT}")
            dev = d["device"]
            device = DeviceInfo(str(dev["name"]), str(dev["compute_capability"]),
                                _opt_int(dev.get("sm_count")), _opt_int(dev.get("memory_mib")))
            known = {"format", "engine", "engine_sha256", "tensorrt_version", "device", "onnx", "onnx_sha256",
                     "manifest_sha256", "dla_core", "built_by", "trtexec", "timing"}
            return cls(str(d["engine"]), str(d["engine_sha256"]), str(d["tensorrt_version"]), device,
                       d.get("onnx"), d.get("onnx_sha256"), d.get("manifest_sha256"), _opt_int(d.get("dla_core")),
                       str(d.get("built_by", "")), [str(a) for a in d.get("trtexec", [])], dict(d.get("timing") or {}),
                       {k: v for k, v in d.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"engine record {where} is not valid ({exc})",
                              "build the engine again with ./build_engine.sh") from exc


def _opt_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def read_record(path: Path) -> EngineRecord:
    if not path.is_file():
        raise BundleError(f"the engine has not been built on this device yet ({path.name} is missing)",
                          f"run ./build_engine.sh in {path.parent} on the device first")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise BundleError(f"engine record {path} is {path.stat().st_size} bytes, too large to be one",
                          "build the engine again with ./build_engine.sh")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"engine record {path} is not valid JSON ({exc})",
                          "build the engine again with ./build_engine.sh") from exc
    if not isinstance(data, dict):
        raise BundleError(f"engine record {path} is not a JSON object", "build the engine again with ./build_engine.sh")
    return EngineRecord.from_dict(data, str(path))


# ------------------------------------------------------------------------------------------------ checks


def device_problems(built: DeviceInfo, here: DeviceInfo) -> tuple[list[str], list[str]]:
    """(hard, soft) differences between the GPU that built an engine and this one.

    Hard: compute capability (TensorRT refuses such an engine, NVIDIA/TensorRT#818). Soft: the GPU model, by name,
    SM count and memory (TensorRT loads it with a warning, NVIDIA/TensorRT#4233; tactics were timed on another GPU).
    """
    hard, soft = [], []
    if str(built.compute_capability) != here.compute_capability:
        hard.append(f"compute capability {built.compute_capability} (this GPU: {here.compute_capability})")
    if built.name != here.name:
        soft.append(f"GPU {built.name!r} (this GPU: {here.name!r})")
    if built.sm_count is not None and here.sm_count is not None and built.sm_count != here.sm_count:
        soft.append(f"{built.sm_count} SMs (this GPU: {here.sm_count})")
    if built.memory_mib and here.memory_mib and abs(built.memory_mib - here.memory_mib) > MEMORY_TOLERANCE * max(
            built.memory_mib, here.memory_mib):
        soft.append(f"{built.memory_mib} MiB of GPU memory (this GPU: {here.memory_mib} MiB)")
    return hard, soft


def check_portability(built_trt: str, built_device: DeviceInfo, trt_version: str, here: DeviceInfo,
                      allow_device_mismatch: bool = False) -> None:
    """Refuse an engine built by another TensorRT or for another GPU (another model: unless allowed)."""
    hard, soft = device_problems(built_device, here)
    if parse_version(built_trt) != parse_version(trt_version):
        hard.insert(0, f"TensorRT {built_trt} (this machine: {trt_version})")
    if soft and allow_device_mismatch and not hard:
        log.warning("engine built for %s, loading on %s (same compute capability, allowed): %s", built_device.name,
                    here.name, "; ".join(soft))
        soft = []
    problems = hard + soft
    if problems:
        raise BundleError("this TensorRT engine was built for " + "; ".join(problems), REBUILD_FIX)


def check_engine_portability(built: Mapping[str, Any], trt_version: str, device: DeviceInfo,
                             allow_gpu_name_mismatch: bool = False) -> None:
    """The check for an artifact's ``info`` (an engine built at compile time)."""
    built_device = DeviceInfo(str(built.get("gpu_name")), str(built.get("compute_capability")),
                              _opt_int(built.get("sm_count")), _opt_int(built.get("memory_mib")))
    check_portability(str(built.get("tensorrt_version", "0")), built_device, trt_version, device,
                      allow_gpu_name_mismatch)


def verify_record(record: EngineRecord, engine_path: Path, trt_version: str, here: DeviceInfo, *,
                  manifest_sha256: str | None, onnx_sha256: str | None, allow_device_mismatch: bool = False) -> None:
    """Everything that must hold before the engine at ``engine_path`` is deserialized on this device."""
    if not engine_path.is_file():
        raise BundleError(f"engine record names {engine_path.name}, which is missing",
                          "build the engine again with ./build_engine.sh")
    if sha256_path(engine_path) != record.engine_sha256:
        raise BundleError(f"{engine_path.name} is not the engine its record describes (sha256 differs): it was "
                          "modified or replaced after the build", "build the engine again with ./build_engine.sh")
    if manifest_sha256 is not None and record.manifest_sha256 not in (None, manifest_sha256):
        raise BundleError(f"the engine in {engine_path.parent} was built for another bundle (its record names another "
                          "manifest)", "build the engine again with this bundle's ./build_engine.sh")
    if onnx_sha256 is not None and record.onnx_sha256 not in (None, onnx_sha256):
        raise BundleError(f"the engine in {engine_path.parent} was built from another ONNX than this bundle's",
                          "build the engine again with this bundle's ./build_engine.sh")
    header = plan_version(engine_path)
    if header != parse_version(record.tensorrt_version):
        raise BundleError(f"{engine_path.name} was serialized by TensorRT {format_version(header)}, but its record "
                          f"says {record.tensorrt_version}", "build the engine again with ./build_engine.sh")
    check_portability(format_version(header), record.device, trt_version, here, allow_device_mismatch)
