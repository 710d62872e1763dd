"""TensorRT backend: a Q/DQ ONNX (or, on TensorRT 8.x, a float ONNX + calibration cache) -> engine.

Split in three so most of it is testable without TensorRT or a GPU:

* ``plan_build`` (pure): what to ask TensorRT for, as a ``BuildPlan``, from the TensorRT version, the target
  profile and the precision. The Jetson bundle (edge_resnet.deploy.jetson) reuses the same policy for its
  trtexec command.
* ``build_engine``: executes a plan with the real ``tensorrt`` module (injectable for tests).
* ``TensorRTBackend.compile`` / ``load`` and ``TensorRTRunner``: the Backend interface; CUDA memory through
  cuda-python or pycuda, whichever is importable.

What differs between TensorRT generations, and where we looked it up:

* 8.x: ``create_network`` needs ``1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` for the ONNX parser
  (TensorRT samples/python/efficientnet/build_engine.py). The runner uses the binding-index API
  (``set_binding_shape`` / ``execute_async_v2``, the 8.x code of the 8.x->10.x migration guide); the
  named-tensor API already exists from 8.5 (8.5 C++ API deprecates the binding-index getters), so 8.x
  could use either.
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` replaced ``max_workspace_size`` in 8.4 (8.4/8.5
  C++ API: setMaxWorkspaceSize is TRT_DEPRECATED), so every version we support uses the memory-pool API.
* 10.x: EXPLICIT_BATCH is "[DEPRECATED] Ignored because networks are always explicit batch" (Python API
  Builder page); the binding API is removed in favour of named tensors (``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``; 8.x->10.x migration guide). STRONGLY_TYPED exists but may
  not be combined with the INT8/FP16 builder flags (onnxruntime PR #24298 sets it only without them).
* 11.x: weak typing is gone. BuilderFlag.FP16/INT8/PREFER_PRECISION_CONSTRAINTS, IBuilderConfig
  .int8_calibrator and the calibrators are removed ("Removed Python APIs and Replacements", 10.x->11.x
  Python migration reference); INT8 comes only from Q/DQ nodes and FP16 only from an ONNX converted
  beforehand ("use ModelOpt AutoCast ... python -m modelopt.onnx.autocast"). Every network is strongly
  typed; the STRONGLY_TYPED flag is kept for compatibility and ignored.
* DLA: DLA runs only FP16/INT8, has no dynamic dimensions ("the profile's min, max, and opt values must be
  equal", DLA Supported Layers and Restrictions) and was unavailable in TensorRT 11.0-11.3 (and 11.4.0 on
  Linux/JetPack); 11.4.1 restores it on Jetson AGX Orin with JetPack 7.2.2 ("Working with DLA", 11.4.1).
* Engines are not portable across GPUs or TensorRT versions ("The engine plan file is generated on an
  incompatible device, expecting compute 6.1 got compute 7.5, please rebuild", NVIDIA/TensorRT#818, #564).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import operator
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_resnet.backends.base import Artifact, Backend, Runner, import_library, read_onnx_structure
from edge_resnet.errors import BackendError, BackendUnavailable, BundleError
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import ActivationFormat, BackendName, Precision, QuantMode

log = logging.getLogger(__name__)

ENGINE_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_CACHE_FILE = "calibration.cache"

# ---------------------------------------------------------------------------------------------- versions


class TrtGeneration(IntEnum):
    """API generations: what our code calls differs between these, not between minor releases."""

    TRT8 = 8
    TRT10 = 10
    TRT11 = 11


# Oldest TensorRT per platform: 8.6 on desktops; 8.5 on Jetson, because JetPack 5.1.x (the last JetPack
# for Xavier) ships TensorRT 8.5.2 and is the platform of the IMPLICIT path.
_MIN_VERSION: dict[str, tuple[int, int]] = {"desktop": (8, 6), "jetson": (8, 5)}
# TensorRT 11 releases without DLA on Linux/JetPack (see the module docstring).
_DLA_MIN_TRT11 = (11, 4, 1)


def parse_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of "8.6.1", "10.3.0.26", "8.6.1.post1"."""
    parts = re.findall(r"\d+", version)
    if not parts:
        raise BackendError(f"cannot read a version number from {version!r}", 'write it as "10.3.0"')
    nums = [int(p) for p in parts[:3]] + [0, 0]
    return nums[0], nums[1], nums[2]


def generation_of(version: str, platform: str = "desktop") -> TrtGeneration:
    """The API generation of a TensorRT version; BackendError for versions we do not support."""
    ver = parse_version(version)
    floor = _MIN_VERSION.get(platform, _MIN_VERSION["desktop"])
    if ver[:2] < floor:
        raise BackendError(
            f"TensorRT {version} is too old for a {platform} target (need {floor[0]}.{floor[1]} or newer)",
            "upgrade TensorRT (JetPack 5.1 ships 8.5.2, JetPack 6.0 8.6.2, JetPack 6.1/6.2 10.3)",
        )
    try:
        return TrtGeneration(ver[0])
    except ValueError:
        raise BackendError(
            f"TensorRT {version} is not supported (known: 8.x, 10.x, 11.x; 9.x was an LLM-only release)",
            "install TensorRT 8.6, 10.x or 11.x",
        ) from None


def _generation_unchecked(version: str) -> TrtGeneration:
    """The generation without the per-platform floor (for engines that were already built)."""
    return generation_of(version, "jetson")


_SPEC_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(\d+(?:\.\d+)*)\s*$")
_SPEC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}


def tensorrt_versions_ok(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies a profile's ``versions`` specifier, e.g. ">=10,<12" or "==8.6".

    ``==8.6`` / ``!=8.6`` compare only the components given (8.6.x matches); the others pad with zeros.
    """
    ver = parse_version(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = _SPEC_RE.match(clause)
        if not m:
            raise BackendError(f"cannot read TensorRT version specifier {spec!r}", 'write it as ">=10,<12"')
        op, nums = m.group(1) or "==", tuple(int(n) for n in m.group(2).split("."))
        lhs = ver[: len(nums)] if op in ("==", "!=") else ver
        rhs = nums if op in ("==", "!=") else (nums + (0, 0, 0))[:3]
        if not _SPEC_OPS[op](lhs, rhs):
            return False
    return True


# ----------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which TensorRT switches give ``precision`` on one API generation (names of TensorRT enum members)."""

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    onnx_precision: str | None = None  # "fp16": the ONNX itself must already be fp16 (TensorRT 11)


def _weak_flags(precision: Precision, fallback: Precision) -> tuple[str, ...]:
    """Builder flags on 8.x/10.x: INT8 (the Q/DQ scales), plus FP16 where layers outside Q/DQ may use it."""
    table: dict[Precision, tuple[str, ...]] = {
        Precision.INT8: ("INT8", "FP16") if fallback == Precision.FP16 else ("INT8",),
        Precision.FP16: ("FP16",),
        Precision.FP32: (),
    }
    return table[precision]


def precision_policy(generation: TrtGeneration, profile: TargetProfile, precision: Precision) -> PrecisionPolicy:
    """Network/builder flags for one build. Shared by the Python build and the trtexec command."""
    trt_opts = profile.tensorrt or TensorRTOptions()
    dla = trt_opts.dla_core is not None
    if dla and precision == Precision.FP32:
        raise BackendError(
            f"target {profile.name} runs on DLA core {trt_opts.dla_core}, which only computes in FP16 or INT8",
            "build with precision int8 or fp16, or remove dla_core from the profile",
        )
    fallback_flag = ("GPU_FALLBACK",) if dla and trt_opts.gpu_fallback else ()
    if generation == TrtGeneration.TRT11:
        onnx_precision = "fp16" if precision == Precision.FP16 else None
        return PrecisionPolicy(("STRONGLY_TYPED",), fallback_flag, onnx_precision)
    builder = _weak_flags(precision, profile.fallback_precision)
    if generation == TrtGeneration.TRT8:
        network: tuple[str, ...] = ("EXPLICIT_BATCH",)
    else:  # 10.x: strongly typed only when no precision flag is set (they may not be combined)
        network = () if builder else ("STRONGLY_TYPED",)
    return PrecisionPolicy(network, builder + fallback_flag)


def batch_shapes(profile: TargetProfile, input_shape: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) NCHW shapes. DLA has no dynamic dimensions, so a DLA build is static at batch.opt."""
    b = profile.batch
    dla = profile.tensorrt is not None and profile.tensorrt.dla_core is not None
    batches = (b.opt, b.opt, b.opt) if dla else (b.min, b.opt, b.max)
    if dla and b.min != b.max:
        log.warning("DLA needs static shapes: building %s for batch %d only (profile range %d..%d)",
                    profile.name, b.opt, b.min, b.max)
    return tuple((n, *input_shape) for n in batches)


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BuildPlan:
    """Everything ``build_engine`` will ask TensorRT for. Pure data: serialisable, reviewable, testable."""

    trt_version: str
    generation: TrtGeneration
    precision: Precision
    quant_mode: QuantMode
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    workspace_bytes: int
    dla_core: int | None
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    timing_cache: str = TIMING_CACHE_FILE
    calibration_cache: str | None = None  # IMPLICIT only: read by a cache-only calibrator
    onnx_precision: str | None = None  # "fp16": TensorRT 11 fp16 needs an fp16 ONNX
    io_api: str = "tensors"  # "bindings" (8.x) | "tensors" (10+)
    notes: tuple[str, ...] = field(default=())

    @property
    def static_batch(self) -> bool:
        return self.min_shape[0] == self.max_shape[0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(generation=int(self.generation), precision=self.precision.value, quant_mode=self.quant_mode.value)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


_IO_API = {TrtGeneration.TRT8: "bindings", TrtGeneration.TRT10: "tensors", TrtGeneration.TRT11: "tensors"}


def _check_version_allowed(trt_version: str, profile: TargetProfile, opts: TensorRTOptions) -> TrtGeneration:
    generation = generation_of(trt_version, profile.platform)
    if not tensorrt_versions_ok(trt_version, opts.versions):
        raise BackendError(
            f"TensorRT {trt_version} is outside the versions target {profile.name} accepts ({opts.versions})",
            "install a TensorRT in that range, or use/write a profile for this TensorRT version",
        )
    return generation


def check_quant_mode(generation: TrtGeneration, profile: TargetProfile, precision: Precision) -> None:
    """Implicit INT8 only on 8.x and only as INT8; explicit INT8 only from s8s8 Q/DQ."""
    if profile.quant_mode != QuantMode.IMPLICIT:
        if precision == Precision.INT8 and profile.activation_format != ActivationFormat.S8S8:
            raise BackendError(
                f"target {profile.name} has {profile.activation_format.value} activations; TensorRT's explicit "
                "quantization needs signed int8 with zero point 0 (s8s8)",
                "set activation_format = \"s8s8\" in the profile and quantize again",
            )
        return
    if generation >= TrtGeneration.TRT10:
        raise BackendError(
            f"target {profile.name} uses implicit INT8 calibration, which TensorRT 10 deprecated and TensorRT 11 "
            "removed (IInt8EntropyCalibrator2, BuilderFlag.INT8)",
            "use an explicit (Q/DQ) profile for TensorRT 10+, or build on TensorRT 8.x (JetPack 5)",
        )
    if precision != Precision.INT8:
        raise BackendError(
            f"target {profile.name} is an implicit-INT8 profile but precision {precision.value} was asked for",
            "use precision int8 with this profile, or pick an explicit profile",
        )


def _check_dla(version: str, generation: TrtGeneration, opts: TensorRTOptions) -> None:
    if opts.dla_core is None or generation != TrtGeneration.TRT11:
        return
    if parse_version(version) < _DLA_MIN_TRT11:
        raise BackendError(
            f"TensorRT {version} has no DLA support on Linux/JetPack (DLA returned in 11.4.1, Jetson AGX Orin, "
            "JetPack 7.2.2+)",
            "use TensorRT 10.x (JetPack 6) or 11.4.1+, or remove dla_core from the profile",
        )


def plan_build(
    trt_version: str, profile: TargetProfile, precision: Precision, input_shape: tuple[int, int, int]
) -> BuildPlan:
    """The build plan for ``profile`` on TensorRT ``trt_version``; BackendError when it cannot be built."""
    opts = profile.tensorrt or TensorRTOptions()
    generation = _check_version_allowed(trt_version, profile, opts)
    check_quant_mode(generation, profile, precision)
    _check_dla(trt_version, generation, opts)
    policy = precision_policy(generation, profile, precision)
    shapes = batch_shapes(profile, input_shape)
    notes: list[str] = []
    if policy.onnx_precision == "fp16":
        notes.append("TensorRT 11 has no FP16 builder flag: the ONNX must already be fp16 (ModelOpt AutoCast)")
    if generation == TrtGeneration.TRT11 and profile.fallback_precision == Precision.FP16:
        notes.append("TensorRT 11 is strongly typed: layers outside Q/DQ stay in the ONNX's float type")
    implicit = profile.quant_mode == QuantMode.IMPLICIT
    return BuildPlan(
        trt_version=trt_version,
        generation=generation,
        precision=precision,
        quant_mode=profile.quant_mode,
        network_flags=policy.network_flags,
        builder_flags=policy.builder_flags,
        workspace_bytes=opts.workspace_mb * 2**20,
        dla_core=opts.dla_core,
        min_shape=shapes[0],
        opt_shape=shapes[1],
        max_shape=shapes[2],
        calibration_cache=CALIBRATION_CACHE_FILE if implicit else None,
        onnx_precision=policy.onnx_precision,
        io_api=_IO_API[generation],
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------------------------ ONNX checks


@dataclass(frozen=True)
class OnnxSummary:
    input_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    batch_dim: int | None  # None: dynamic
    op_types: frozenset[str]
    has_float16: bool


def summarize_onnx(onnx_path: Path) -> OnnxSummary:
    """The facts about an ONNX file the build depends on (no weights are loaded)."""
    import onnx

    model = read_onnx_structure(onnx_path)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BackendError(f"{onnx_path} has {len(inputs)} inputs; the TensorRT backend expects one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(values) != 4 or any(v is None for v in values[1:]):
        raise BackendError(
            f"input {inputs[0].name!r} of {onnx_path} has shape {values}; expected N x C x H x W with fixed C, H, W",
            "export with a fixed image size and only the batch axis dynamic",
        )
    f16 = onnx.TensorProto.FLOAT16
    has_f16 = any(i.data_type == f16 for i in graph.initializer) or any(
        a.name == "to" and a.i == f16 for n in graph.node if n.op_type == "Cast" for a in n.attribute
    )
    c, h, w = (int(v) for v in values[1:])  # type: ignore[arg-type]
    return OnnxSummary(inputs[0].name, (c, h, w), values[0] or None, frozenset(n.op_type for n in graph.node),
                       has_f16)


def check_onnx_for_plan(summary: OnnxSummary, plan: BuildPlan, onnx_path: Path) -> None:
    """Catch the mismatches TensorRT would report late or not at all."""
    has_qdq = "QuantizeLinear" in summary.op_types
    implicit = plan.quant_mode == QuantMode.IMPLICIT
    if implicit and has_qdq:
        raise BackendError(f"{onnx_path} has Q/DQ nodes but the target uses implicit calibration",
                           "pass the float ONNX (the calibration cache carries the scales)")
    if plan.precision == Precision.INT8 and not implicit and not has_qdq:
        raise BackendError(f"{onnx_path} has no QuantizeLinear nodes, so an INT8 build has no scales",
                           "quantize the model first (edge-resnet quantize) and pass the Q/DQ ONNX")
    if plan.onnx_precision == "fp16" and not summary.has_float16:
        raise BackendError(
            f"TensorRT {plan.trt_version} builds FP16 only from an fp16 ONNX, and {onnx_path} is fp32",
            "convert it first: python -m modelopt.onnx.autocast --onnx_path model.onnx --output_path model_fp16.onnx",
        )
    if summary.batch_dim is not None and not (plan.min_shape[0] == plan.max_shape[0] == summary.batch_dim):
        raise BackendError(
            f"{onnx_path} has a fixed batch of {summary.batch_dim} but the plan needs batch "
            f"{plan.min_shape[0]}..{plan.max_shape[0]}",
            "export the ONNX with a dynamic batch axis",
        )


# ------------------------------------------------------------------------------------------------ build


def import_tensorrt() -> ModuleType:
    return import_library("tensorrt", "pip install 'edge-resnet[tensorrt]' on a machine with an NVIDIA GPU, or use "
                                      "the Jetson bundle's build_engine.sh on the device")


def _enum_member(trt: ModuleType, enum_name: str, member: str) -> Any:
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
        mask |= 1 << int(_enum_member(trt, enum_name, name))
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
        config.set_flag(_enum_member(trt, "BuilderFlag", name))
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


def make_cache_calibrator(trt: ModuleType, cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 that only reads ``cache_path`` (TensorRT 8.x; gone in 11)."""
    try:
        base = trt.IInt8EntropyCalibrator2
    except AttributeError:
        raise BackendError(f"TensorRT {trt.__version__} has no INT8 calibrator (removed in 11)",
                           "use an explicit Q/DQ profile") from None
    cache = cache_path.read_bytes()

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


def _find_calibration_cache(plan: BuildPlan, onnx_path: Path, out_dir: Path) -> Path:
    assert plan.calibration_cache is not None
    for candidate in (out_dir / plan.calibration_cache, onnx_path.parent / plan.calibration_cache):
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"implicit INT8 needs {plan.calibration_cache} in {out_dir} or next to {onnx_path.name}",
        "write it with edge_resnet.quant.trt_cache.write_calibration_cache(path, scales, trt_version)",
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _use_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: refuse another device's cache
        log.warning("timing cache %s is from another device or TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log.info("reusing timing cache %s", path)


def _check_plan_matches(trt: ModuleType, plan: BuildPlan) -> None:
    if parse_version(trt.__version__)[:2] != parse_version(plan.trt_version)[:2]:
        raise BackendError(
            f"the build plan is for TensorRT {plan.trt_version} but tensorrt {trt.__version__} is installed",
            "make the plan with the installed version (TensorRTBackend.compile does)",
        )


def build_engine(onnx_path: Path, plan: BuildPlan, out_dir: Path, trt: ModuleType | None = None) -> Path:
    """Build and write ``out_dir/model.plan`` as ``plan`` says; reuses and updates the timing cache."""
    trt = trt or import_tensorrt()
    _check_plan_matches(trt, plan)
    out_dir = Path(out_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_flag_mask(trt, "NetworkDefinitionCreationFlag", plan.network_flags))
    _parse_onnx(trt, network, logger, Path(onnx_path))
    config = builder.create_builder_config()
    profile = _configure(trt, builder, network, config, plan)
    if plan.calibration_cache is not None:
        config.int8_calibrator = make_cache_calibrator(trt, _find_calibration_cache(plan, Path(onnx_path), out_dir))
        config.set_calibration_profile(profile)
    timing_path = out_dir / plan.timing_cache
    _use_timing_cache(config, timing_path)
    log.info("building TensorRT %s engine: %s", plan.trt_version, plan.to_dict())
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the TensorRT log above)",
            "common causes: unsupported op or Q/DQ placement, workspace too small, DLA layer limits",
        )
    _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    engine_path = out_dir / ENGINE_FILE
    _atomic_write(engine_path, bytes(serialized))
    log.info("wrote %s (%d bytes)", engine_path, engine_path.stat().st_size)
    return engine_path


# ----------------------------------------------------------------------------------------------- device


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"


def device_index(profile_device: str) -> int:
    """"cuda:1" -> 1, "cuda" / "" -> 0."""
    m = re.fullmatch(r"(?:cuda|gpu)?:?(\d*)", profile_device.strip().lower())
    if not m:
        raise BackendError(f"cannot read CUDA device {profile_device!r}", 'write it as "cuda:0"')
    return int(m.group(1) or 0)


def check_engine_portability(
    built: Mapping[str, Any], trt_version: str, device: DeviceInfo, allow_gpu_name_mismatch: bool = False
) -> None:
    """Refuse an engine built for another GPU or TensorRT version (engines are not portable)."""
    problems = []
    if parse_version(str(built.get("tensorrt_version", "0"))) != parse_version(trt_version):
        problems.append(f"TensorRT {built.get('tensorrt_version')} (this machine: {trt_version})")
    if str(built.get("compute_capability")) != device.compute_capability:
        problems.append(f"compute capability {built.get('compute_capability')} (this GPU: {device.compute_capability})")
    if built.get("gpu_name") != device.name:
        if allow_gpu_name_mismatch and not problems:
            log.warning("engine built on %s, loading on %s (same compute capability)", built.get("gpu_name"),
                        device.name)
        else:
            problems.append(f"GPU {built.get('gpu_name')!r} (this GPU: {device.name!r})")
    if problems:
        raise BundleError(
            "this TensorRT engine was built for " + "; ".join(problems),
            "TensorRT engines are not portable across GPUs or TensorRT versions (NVIDIA/TensorRT#818): rebuild it "
            "on the target (edge-resnet compile there, or the bundle's build_engine.sh)",
        )


# ------------------------------------------------------------------------------------------------- CUDA


class CudaRuntime:
    """The few CUDA calls the runner needs, over cuda-python's runtime bindings."""

    def __init__(self, cudart: ModuleType) -> None:
        self.rt = cudart

    def _call(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA call failed: {err}", "check the GPU and driver with nvidia-smi / tegrastats")
        return rest[0] if len(rest) == 1 else None

    def device_info(self, index: int) -> DeviceInfo:
        prop = self._call(self.rt.cudaGetDeviceProperties(index))
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name, f"{prop.major}.{prop.minor}")

    def set_device(self, index: int) -> None:
        self._call(self.rt.cudaSetDevice(index))

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
    """The same calls over pycuda (retains the primary context, which TensorRT's runtime API also uses)."""

    def __init__(self, driver: ModuleType) -> None:
        self.drv = driver
        self.drv.init()
        self._allocs: dict[int, Any] = {}
        self._ctx: Any = None

    def device_info(self, index: int) -> DeviceInfo:
        dev = self.drv.Device(index)
        major, minor = dev.compute_capability()
        return DeviceInfo(dev.name(), f"{major}.{minor}")

    def set_device(self, index: int) -> None:
        if self._ctx is None:
            self._ctx = self.drv.Device(index).retain_primary_context()
            self._ctx.push()

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
            self._ctx.pop()
            self._ctx = None


# tried in order; cuda-python 13 removed the cuda.cudart alias (cuda-bindings 13.0.0 release notes)
_CUDA_LOADERS: tuple[tuple[str, Callable[[ModuleType], Any]], ...] = (
    ("cuda.bindings.runtime", CudaRuntime),
    ("cuda.cudart", CudaRuntime),
    ("pycuda.driver", PyCudaRuntime),
)


def load_cuda() -> Any:
    for module_name, wrap in _CUDA_LOADERS:
        try:
            return wrap(importlib.import_module(module_name))
        except ImportError:
            continue
    raise BackendUnavailable(
        "neither cuda-python nor pycuda is installed, so TensorRT engines cannot be run from Python here",
        "pip install cuda-python (or pycuda)",
    )


# ----------------------------------------------------------------------------------------------- runner


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
                     np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
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
                     np.dtype(trt.nptype(engine.get_binding_dtype(i))))
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


_IO_CLASSES: dict[str, Callable[[ModuleType, Any], Any]] = {"tensors": _NamedTensorIO, "bindings": _BindingsIO}


class TensorRTRunner(Runner):
    """Runs a deserialized engine. Device buffers are allocated once, for the profile's max batch."""

    def __init__(self, trt: ModuleType, engine: Any, cuda: Any, io_api: str) -> None:
        self.trt, self.engine, self.cuda = trt, engine, cuda
        self.io = _IO_CLASSES[io_api](trt, engine)
        self.context = engine.create_execution_context()
        inputs = [t for t in self.io.tensors if t.is_input]
        self.outputs = [t for t in self.io.tensors if not t.is_input]
        if len(inputs) != 1 or not self.outputs:
            raise BackendError(f"engine has {len(inputs)} inputs and {len(self.outputs)} outputs; expected 1 and >=1")
        self.input = inputs[0]
        self.input_name = self.input.name
        self.min_batch, self.max_batch = self.io.profile_batches(self.input)
        self.sample_shape = self.io.max_shape(self.input)[1:]
        self.stream = cuda.stream_create()
        for t in self.io.tensors:
            shape = self.io.max_shape(t)
            t.ptr = cuda.malloc(int(np.prod((self.max_batch, *shape[1:]))) * t.dtype.itemsize)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        padded = n if n >= self.min_batch else self.min_batch  # static (DLA) engines: pad to the built batch
        host_in = np.zeros((padded, *self.sample_shape), self.input.dtype)
        host_in[:n] = chunk
        self.io.set_input_shape(self.context, self.input, host_in.shape)
        self.cuda.htod(self.input.ptr, np.ascontiguousarray(host_in), self.stream)
        if not self.io.execute(self.context, self.cuda.stream_handle(self.stream)):
            raise BackendError("TensorRT execution failed (see the TensorRT log)")
        out = self.outputs[0]
        host_out = np.empty(self.io.output_shape(self.context, out), out.dtype)
        self.cuda.dtoh(host_out, out.ptr, self.stream)
        self.cuda.synchronize(self.stream)
        return host_out[:n].astype(np.float32, copy=False)

    def _chunks(self, batch: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, batch.shape[0], self.max_batch):
            yield batch[start : start + self.max_batch]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self.sample_shape):
            raise BackendError(
                f"input batch has shape {batch.shape}; this engine takes N x {' x '.join(map(str, self.sample_shape))}"
            )
        return np.concatenate([self._run_chunk(c) for c in self._chunks(batch)], axis=0)

    def close(self) -> None:
        for t in self.io.tensors:
            if t.ptr:
                self.cuda.free(t.ptr)
                t.ptr = 0
        if self.stream is not None:
            self.cuda.stream_destroy(self.stream)
            self.stream = None
            self.cuda.release()


# ---------------------------------------------------------------------------------------------- backend


class TensorRTBackend(Backend):
    name = BackendName.TENSORRT
    library = "tensorrt"

    def compile(
        self,
        onnx_path: Path,
        profile: TargetProfile,
        out_dir: Path,
        precision: Precision,
        *,
        trt: ModuleType | None = None,
        device: DeviceInfo | None = None,
    ) -> Artifact:
        trt = trt or import_tensorrt()
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        summary = summarize_onnx(onnx_path)
        plan = plan_build(trt.__version__, profile, precision, summary.input_shape)
        check_onnx_for_plan(summary, plan, onnx_path)
        device = device or load_cuda().device_info(device_index(profile.device))
        build_engine(onnx_path, plan, out_dir, trt)
        files = {"engine": ENGINE_FILE, "timing_cache": plan.timing_cache}
        if plan.calibration_cache:
            files["calibration_cache"] = plan.calibration_cache
        info = {
            "tensorrt_version": trt.__version__,
            "gpu_name": device.name,
            "compute_capability": device.compute_capability,
            "dla_core": plan.dla_core,
            "input_name": summary.input_name,
            "plan": plan.to_dict(),
        }
        return Artifact(self.name, precision, files, info)

    def load(self, bundle_dir: Path, artifact: Artifact, **options: Any) -> Runner:
        """Options: trt, cuda (injectable), device_index (default 0), allow_gpu_name_mismatch (False)."""
        trt = options.get("trt") or import_tensorrt()
        cuda = options.get("cuda") or load_cuda()
        index = int(options.get("device_index", 0))
        check_engine_portability(artifact.info, trt.__version__, cuda.device_info(index),
                                 bool(options.get("allow_gpu_name_mismatch", False)))
        cuda.set_device(index)
        from edge_resnet.bundle import confined  # every path inside a bundle stays inside it

        engine_path = confined(bundle_dir, artifact.files["engine"], "TensorRT engine")
        if not engine_path.is_file():
            raise BundleError(f"the bundle has no engine file {engine_path}", "re-run compile for this target")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if artifact.info.get("dla_core") is not None:
            runtime.DLA_core = int(artifact.info["dla_core"])
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BundleError(
                f"TensorRT {trt.__version__} could not deserialize {engine_path} (truncated, modified, or built "
                "by another TensorRT/GPU)",
                "rebuild the engine on this device (edge-resnet compile, or the bundle's build_engine.sh)",
            )
        io_api = artifact.info.get("plan", {}).get("io_api") or _IO_API[_generation_unchecked(trt.__version__)]
        return TensorRTRunner(trt, engine, cuda, io_api)
