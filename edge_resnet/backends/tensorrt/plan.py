"""What to ask TensorRT for: the build plan, from the TensorRT version, the target profile and the precision.

Pure data and pure functions, shared by the Python build (:mod:`.build`) and the device's ``build_engine.sh``
(:mod:`.trtexec`), so both build the same engine. What differs between TensorRT generations, and where we read it:

* 8.x: ``create_network`` needs ``1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` for the ONNX parser
  (NVIDIA/TensorRT samples/python/efficientnet/build_engine.py, release/8.6). The runner uses the binding-index
  API (``set_binding_shape`` / ``execute_async_v2``; the 8.x code of the 8.x->10.x migration guide).
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` replaced ``max_workspace_size`` in 8.4.
* 10.x: EXPLICIT_BATCH is "[DEPRECATED] Ignored because networks are always explicit batch" (python/src/infer/
  pyCore.cpp docstrings, release/10.0); the binding API is removed (named tensors: ``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``). STRONGLY_TYPED exists but may not be combined with the INT8/FP16
  builder flags (trtexec rejects "--best and --stronglyTyped", samples/common/sampleOptions.cpp, release/10.x;
  onnxruntime PR #24298 sets it only without them).
* 11.x: weak typing is gone (BuilderFlag.FP16/INT8, int8_calibrator removed; 10.x->11.x "Removed Python APIs"):
  INT8 comes only from Q/DQ nodes, FP16 only from an fp16 ONNX ("python -m modelopt.onnx.autocast").
* DLA runs only FP16/INT8, has no dynamic dimensions ("the profile's min, max, and opt values must be equal",
  DLA Supported Layers and Restrictions), and takes INT8 only from implicit quantization: "Yes, if you convert it
  to implicit quantization, it would work with DLA" (NVIDIA/TensorRT#2222); NVIDIA's route from a Q/DQ model is
  the Q/DQ Translator -> calibration cache + Q/DQ-free ONNX (NVIDIA/Deep-Learning-Accelerator-SW
  tools/qdq-translator; NVIDIA/Model-Optimizer PR #1661). So a DLA INT8 plan on 8.x/10.x is IMPLICIT whatever the
  profile says (see :mod:`.dla` for the translation); TensorRT 11.4.1+ (strongly typed DLA) keeps the Q/DQ graph.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_resnet.backends.onnx_facts import OnnxFacts, inspect_onnx
from edge_resnet.backends.tensorrt.versions import (
    TrtGeneration,
    dla_gap_message,
    generation_of,
    has_dla,
    has_implicit_int8,
    parse_version,
    tensorrt_versions_ok,
)
from edge_resnet.errors import BackendError
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import ActivationFormat, Precision, QuantMode

log = logging.getLogger(__name__)

ENGINE_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_CACHE_FILE = "calibration.cache"


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


def is_dla(profile: TargetProfile) -> bool:
    return profile.tensorrt is not None and profile.tensorrt.dla_core is not None


def effective_quant_mode(generation: TrtGeneration, profile: TargetProfile, precision: Precision) -> QuantMode:
    """How INT8 reaches the engine: the profile's mode, except DLA before TensorRT 11, which only takes implicit
    INT8 (NVIDIA/TensorRT#2222). Non-INT8 builds report the profile's mode (it does not matter for them)."""
    if precision is Precision.INT8 and is_dla(profile) and generation < TrtGeneration.TRT11:
        return QuantMode.IMPLICIT
    return profile.quant_mode


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
    # DLA: layers the DLA cannot run in INT8 fall back to FP16 on the DLA before they fall back to the GPU
    builder = _weak_flags(precision, Precision.FP16 if dla else profile.fallback_precision)
    if generation == TrtGeneration.TRT8:
        network: tuple[str, ...] = ("EXPLICIT_BATCH",)
    else:  # 10.x: strongly typed only when no precision flag is set (they may not be combined)
        network = () if builder else ("STRONGLY_TYPED",)
    return PrecisionPolicy(network, builder + fallback_flag)


def batch_shapes(profile: TargetProfile, input_shape: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) NCHW shapes. DLA has no dynamic dimensions, so a DLA build is static at batch.opt."""
    b = profile.batch
    dla = is_dla(profile)
    batches = (b.opt, b.opt, b.opt) if dla else (b.min, b.opt, b.max)
    if dla and b.min != b.max:
        _warn_static(profile.name, b.opt, b.min, b.max)
    return tuple((n, *input_shape) for n in batches)


@functools.cache
def _warn_static(name: str, opt: int, low: int, high: int) -> None:
    log.warning("DLA needs static shapes: building %s for batch %d only (profile range %d..%d)", name, opt, low, high)


# ------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build will ask TensorRT for. Pure data: serialisable, reviewable, testable."""

    trt_version: str
    generation: TrtGeneration
    precision: Precision
    quant_mode: QuantMode  # the effective one (DLA INT8 before 11 is IMPLICIT)
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

    @property
    def onnx_role(self) -> str:
        """Which graph of the bundle the build reads: the Q/DQ one ("int8") or the float one ("float")."""
        explicit_int8 = self.precision is Precision.INT8 and self.quant_mode is QuantMode.EXPLICIT
        return "int8" if explicit_int8 else "float"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(generation=int(self.generation), precision=self.precision.value, quant_mode=self.quant_mode.value)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


IO_API = {TrtGeneration.TRT8: "bindings", TrtGeneration.TRT10: "tensors", TrtGeneration.TRT11: "tensors"}


def check_version_allowed(trt_version: str, profile: TargetProfile) -> TrtGeneration:
    opts = profile.tensorrt or TensorRTOptions()
    generation = generation_of(trt_version, profile.platform)
    if not tensorrt_versions_ok(trt_version, opts.versions):
        raise BackendError(
            f"TensorRT {trt_version} is outside the versions target {profile.name} accepts ({opts.versions})",
            "install a TensorRT in that range, or use/write a profile for this TensorRT version",
        )
    return generation


def check_quant_mode(trt_version: str, generation: TrtGeneration, profile: TargetProfile, precision: Precision) -> None:
    """Implicit INT8 only before TensorRT 11 and only as INT8; explicit INT8 only from s8s8 Q/DQ."""
    mode = effective_quant_mode(generation, profile, precision)
    if mode != QuantMode.IMPLICIT:
        if precision == Precision.INT8 and profile.activation_format != ActivationFormat.S8S8:
            raise BackendError(
                f"target {profile.name} has {profile.activation_format.value} activations; TensorRT's explicit "
                "quantization needs signed int8 with zero point 0 (s8s8)",
                "set activation_format = \"s8s8\" in the profile and quantize again",
            )
        return
    if not has_implicit_int8(trt_version):
        raise BackendError(
            f"target {profile.name} uses implicit INT8 calibration, which TensorRT 11 removed (BuilderFlag.INT8, "
            "IBuilderConfig.int8_calibrator)",
            "use an explicit (Q/DQ) profile for TensorRT 11, or build on TensorRT 8.x/10.x (JetPack 5/6)",
        )
    if precision != Precision.INT8:
        raise BackendError(
            f"target {profile.name} is an implicit-INT8 profile but precision {precision.value} was asked for",
            "use precision int8 with this profile, or pick an explicit profile",
        )
    if generation == TrtGeneration.TRT10:
        log.info("TensorRT %s: implicit INT8 (calibration cache) is deprecated in 10.x but still built", trt_version)


def check_dla(version: str, profile: TargetProfile) -> None:
    if not is_dla(profile):
        return
    if not has_dla(version):
        raise BackendError(
            f"TensorRT {version} cannot build for DLA core {profile.tensorrt.dla_core}: {dla_gap_message()}",  # type: ignore[union-attr]
            "use TensorRT 10.3 (JetPack 6.1/6.2) or 11.4.1+ on JetPack 7.2.2, or a profile without dla_core",
        )


def plan_build(
    trt_version: str, profile: TargetProfile, precision: Precision, input_shape: tuple[int, int, int]
) -> BuildPlan:
    """The build plan for ``profile`` on TensorRT ``trt_version``; BackendError when it cannot be built."""
    opts = profile.tensorrt or TensorRTOptions()
    generation = check_version_allowed(trt_version, profile)
    check_dla(trt_version, profile)
    check_quant_mode(trt_version, generation, profile, precision)
    policy = precision_policy(generation, profile, precision)
    shapes = batch_shapes(profile, input_shape)
    mode = effective_quant_mode(generation, profile, precision)
    notes: list[str] = []
    if policy.onnx_precision == "fp16":
        notes.append("TensorRT 11 has no FP16 builder flag: the ONNX must already be fp16 (ModelOpt AutoCast)")
    if generation == TrtGeneration.TRT11 and profile.fallback_precision == Precision.FP16:
        notes.append("TensorRT 11 is strongly typed: layers outside Q/DQ stay in the ONNX's float type")
    if is_dla(profile) and mode is QuantMode.IMPLICIT and profile.quant_mode is QuantMode.EXPLICIT:
        notes.append("DLA takes INT8 only from implicit quantization: the Q/DQ scales go into a calibration cache "
                     "for the float graph (NVIDIA/TensorRT#2222, Q/DQ Translator)")
    if is_dla(profile) and generation == TrtGeneration.TRT11 and precision is Precision.INT8:
        notes.append("unverified: DLA INT8 from a strongly typed Q/DQ graph on TensorRT 11.4.1+")
    return BuildPlan(
        trt_version=trt_version,
        generation=generation,
        precision=precision,
        quant_mode=mode,
        network_flags=policy.network_flags,
        builder_flags=policy.builder_flags,
        workspace_bytes=opts.workspace_mb * 2**20,
        dla_core=opts.dla_core,
        min_shape=shapes[0],
        opt_shape=shapes[1],
        max_shape=shapes[2],
        calibration_cache=CALIBRATION_CACHE_FILE if mode is QuantMode.IMPLICIT and precision is Precision.INT8 else None,
        onnx_precision=policy.onnx_precision,
        io_api=IO_API[generation],
        notes=tuple(notes),
    )


def check_plan_matches(trt_version: str, plan: BuildPlan) -> None:
    if parse_version(trt_version)[:2] != parse_version(plan.trt_version)[:2]:
        raise BackendError(
            f"the build plan is for TensorRT {plan.trt_version} but tensorrt {trt_version} is installed",
            "make the plan with the installed version (TensorRTBackend.compile does)",
        )


# ------------------------------------------------------------------------------------------ ONNX checks


def summarize_onnx(onnx_path: Path) -> OnnxFacts:
    """The facts about an ONNX file the build depends on (no weights are loaded): its image input
    must be N x C x H x W with fixed C, H, W."""
    facts = inspect_onnx(onnx_path, "TensorRT")
    values = list(facts.input_dims)
    if len(values) != 4 or any(v is None for v in values[1:]):
        raise BackendError(
            f"input {facts.input_name!r} of {onnx_path} has shape {values}; expected N x C x H x W with fixed C, H, W",
            "export with a fixed image size and only the batch axis dynamic",
        )
    return facts


def check_onnx_for_plan(summary: OnnxFacts, plan: BuildPlan, onnx_path: Path) -> None:
    """Catch the mismatches TensorRT would report late or not at all."""
    has_qdq = "QuantizeLinear" in summary.op_types
    implicit = plan.quant_mode == QuantMode.IMPLICIT
    if implicit and has_qdq:
        raise BackendError(f"{onnx_path} has Q/DQ nodes but the build uses implicit calibration",
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
