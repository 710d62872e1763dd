"""Target device profiles: one declarative TOML file per target, shipped in ``targets/``.

A profile says which backend builds the artifact, for which device, in which Q/DQ activation
format, with which fallback precision, batch range and (for TensorRT) DLA core, workspace and the
TensorRT versions it expects. A user can pass the path of their own profile instead of a name.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from edge_resnet.errors import TargetError
from edge_resnet.types import ActivationFormat, BackendName, Precision, QuantMode, WeightRange

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class BatchRange:
    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise TargetError(
                f"invalid batch range min={self.min} opt={self.opt} max={self.max}",
                "use 1 <= min <= opt <= max in the profile's [batch] table",
            )


@dataclass(frozen=True)
class TensorRTOptions:
    versions: str = ">=8.6"  # a version specifier, e.g. ">=10,<12"; see tensorrt_versions_ok()
    dla_core: int | None = None  # None: GPU only
    gpu_fallback: bool = True  # layers the DLA cannot run go to the GPU
    workspace_mb: int = 1024
    jetpack: str | None = None  # the JetPack release the profile is written for (Jetson only)
    sm: str | None = None  # the device's compute capability, e.g. "8.7" for Orin, when known
    # the TensorRT release the device is assumed to have when the bundle is prepared on a host
    # without TensorRT (it picks the trtexec flags of build_engine.sh)
    default_version: str = "10.3.0"


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    backend: BackendName
    device: str  # OpenVINO device name ("CPU", "GPU", "NPU"), "cpu" for ORT, "cuda:0" for TensorRT
    activation_format: ActivationFormat
    quant_mode: QuantMode = QuantMode.EXPLICIT
    fallback_precision: Precision = Precision.FP32  # for layers kept out of int8
    # "auto" on x86 CPU targets: 7-bit weights when the compiling host's CPU has no VNNI (edge_resnet.host_cpu)
    weight_range: WeightRange = WeightRange.FULL
    # None: the activation format's placement; True: no Q/DQ on the conv branch of residual Adds
    # (edge_resnet.quant.qdq.QuantConfig.fuse_residual)
    fuse_residual: bool | None = None
    platform: str = "desktop"  # "desktop" | "jetson"
    performance_hint: str = "latency"  # OpenVINO: "latency" | "throughput"
    threads: int | None = None  # intra-op threads; None: the backend's default
    batch: BatchRange = field(default_factory=BatchRange)
    tensorrt: TensorRTOptions | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""  # where the profile was read from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("backend", "activation_format", "quant_mode", "fallback_precision", "weight_range"):
            d[k] = getattr(self, k).value
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> TargetProfile:
        try:
            data = dict(data)
            batch = BatchRange(**data.pop("batch", {}))
            trt = data.pop("tensorrt", None)
            default_range = _default_weight_range(data)
            return cls(
                name=data.pop("name"),
                description=data.pop("description", ""),
                backend=BackendName(data.pop("backend")),
                device=data.pop("device"),
                activation_format=ActivationFormat(data.pop("activation_format")),
                quant_mode=QuantMode(data.pop("quant_mode", "explicit")),
                fallback_precision=Precision(data.pop("fallback_precision", "fp32")),
                weight_range=WeightRange(data.pop("weight_range", None) or default_range),
                fuse_residual=_optional_bool(data.pop("fuse_residual", None), "fuse_residual"),
                platform=data.pop("platform", "desktop"),
                performance_hint=data.pop("performance_hint", "latency"),
                threads=data.pop("threads", None),
                batch=batch,
                tensorrt=TensorRTOptions(**trt) if trt is not None else None,
                aliases=tuple(data.pop("aliases", ())),
                source=source or data.pop("source", ""),
                **_reject_unknown(data, source),
            )
        except TargetError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise TargetError(
                f"invalid target profile {source or data.get('name', '?')}: {exc}",
                "compare it with a shipped profile (`edge-resnet targets --json`)",
            ) from exc


def _optional_bool(value: Any, key: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _default_weight_range(data: dict[str, Any]) -> WeightRange:
    """A profile that does not say: AUTO where the artifact runs on a CPU (OpenVINO CPU, ONNX Runtime's CPU
    execution provider), FULL elsewhere (GPUs, NPUs and DLA accumulate int8 products in int32)."""
    backend, device = str(data.get("backend", "")), str(data.get("device", "")).upper()
    on_cpu = backend == BackendName.ONNXRUNTIME.value or (backend == BackendName.OPENVINO.value and device.startswith("CPU"))
    return WeightRange.AUTO if on_cpu else WeightRange.FULL


def resolve_weight_range(profile: TargetProfile, host_saturates: bool | None = None) -> WeightRange:
    """The profile's weight range with AUTO decided for this host (``host_saturates``: for tests)."""
    return resolve_weight_range_choice(profile.weight_range, host_saturates)


def resolve_weight_range_choice(choice: WeightRange, host_saturates: bool | None = None) -> WeightRange:
    if choice is not WeightRange.AUTO:
        return choice
    if host_saturates is None:
        from edge_resnet.host_cpu import host_saturates_int8

        host_saturates = host_saturates_int8()
    return WeightRange.REDUCED if host_saturates else WeightRange.FULL


def _reject_unknown(rest: dict[str, Any], source: str) -> dict[str, Any]:
    rest = {k: v for k, v in rest.items() if k != "source"}
    if rest:
        raise TargetError(f"unknown keys in target profile {source}: {sorted(rest)}", "remove or rename them")
    return {}


def _read_toml(path: Path | Any, source: str) -> TargetProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target profile {source} is not valid TOML: {exc}") from exc
    return TargetProfile.from_dict(data, source=source)


@cache
def shipped_profiles() -> dict[str, TargetProfile]:
    """Every profile shipped in targets/, by name (aliases not included)."""
    out: dict[str, TargetProfile] = {}
    for entry in sorted(resources.files("edge_resnet._targets").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            prof = _read_toml(entry, source=f"targets/{entry.name}")
            out[prof.name] = prof
    return out


def get_target(name_or_path: str | Path) -> TargetProfile:
    """A shipped profile by name or alias, or a user's profile by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if not p.is_file():
            raise TargetError(f"target profile file {p} does not exist")
        return _read_toml(p, source=str(p))
    profiles = shipped_profiles()
    key = str(name_or_path)
    if key in profiles:
        return profiles[key]
    for prof in profiles.values():
        if key in prof.aliases:
            return prof
    known = ", ".join(sorted(list(profiles) + [a for pr in profiles.values() for a in pr.aliases]))
    raise TargetError(f"unknown target {key!r}", f"use one of: {known}; or the path of a .toml profile")
