"""TensorRT backend: the version-dependent build plan, our orchestration of the (fake) TensorRT API per
version, the portability check, and one real end-to-end build where TensorRT and a GPU exist."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from fakes.fake_tensorrt import (
    PLAN_MAGIC,
    FakeCuda,
    FakeCudart,
    FakePyCudaDriver,
    FakeTensorRT,
    LogicError,
    cache_header,
    timing_cache_bytes,
)
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.backends import tensorrt as trt_backend
from edge_resnet.backends.base import Artifact, FrameInput
from edge_resnet.backends.tensorrt import (
    BuildPlan,
    CudaRuntime,
    DeviceInfo,
    PyCudaRuntime,
    TensorRTBackend,
    build_engine,
    check_engine_portability,
    check_onnx_for_plan,
    plan_build,
    summarize_onnx,
    tensorrt_versions_ok,
)
from edge_resnet.backends.tensorrt import plan as plan_module
from edge_resnet.backends.tensorrt.calibration_cache import write_calibration_cache
from edge_resnet.backends.tensorrt.frames import frames_graph
from edge_resnet.backends.tensorrt.runner import numpy_dtype
from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.errors import BackendError, BackendUnavailable, BundleError
from edge_resnet.graph.input_normalization import with_frame_input
from edge_resnet.targets import BatchRange, TargetProfile, TensorRTOptions
from edge_resnet.types import ActivationFormat, BackendName, Precision, QuantMode

SHAPE = (3, 32, 32)
DEFAULT_BATCH = BatchRange(1, 4, 8)
NUM_CLASSES = 10
RTX = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9", 128, 24210)
ORIN = DeviceInfo("Orin", "8.7", 8, 7620)

# ------------------------------------------------------------------------------------------- profiles


def _profile(name: str, *, platform: str = "desktop", versions: str = ">=8.6", dla: int | None = None,
             quant_mode: QuantMode = QuantMode.EXPLICIT, fallback: Precision = Precision.FP16,
             batch: BatchRange = DEFAULT_BATCH, fmt: ActivationFormat = ActivationFormat.S8S8,
             device: str = "cuda:0") -> TargetProfile:
    return TargetProfile(
        name=name, description=name, backend=BackendName.TENSORRT, device=device, activation_format=fmt,
        quant_mode=quant_mode, fallback_precision=fallback, platform=platform, batch=batch,
        tensorrt=TensorRTOptions(versions=versions, dla_core=dla, workspace_mb=512),
    )


DESKTOP = _profile("desktop-gpu-int8")
ORIN_GPU = _profile("orin-int8", platform="jetson", versions=">=8.6,<12", fallback=Precision.FP32)
ORIN_DLA = _profile("orin-dla-int8", platform="jetson", versions=">=8.6,<12", dla=0, batch=BatchRange(1, 2, 4))
XAVIER_NX = _profile("xavier-nx-int8", platform="jetson", versions=">=8.5", quant_mode=QuantMode.IMPLICIT)
SCALES = {"input": 0.02, "c1": 0.05, "a1": 0.04, "c2": 0.06, "a2": 0.05, "p": 0.05, "f": 0.05, "logits": 0.1}

# ---------------------------------------------------------------------------------------------- ONNX


def make_onnx(path: Path, *, qdq: bool = False, fp16: bool = False, batch: int | str = "N",
              op: str = "Relu") -> Path:
    """A tiny conv classifier: conv -> act -> global pool -> flatten -> gemm. ``qdq`` adds a Q/DQ pair."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.2, (NUM_CLASSES, 16)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.zeros(NUM_CLASSES, np.float32), "b3"),
    ]
    nodes = []
    x = "input"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])]
        x = "dq"
    if fp16:
        nodes.append(helper.make_node("Cast", [x], ["x16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes += [
        helper.make_node("Conv", [x, "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node(op, ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, NUM_CLASSES])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what TensorRT 8.6's parser knows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def qdq_onnx(tmp_path: Path) -> Path:
    return make_onnx(tmp_path / "model_qdq.onnx", qdq=True)


@pytest.fixture
def float_onnx(tmp_path: Path) -> Path:
    return make_onnx(tmp_path / "model_float.onnx")


# ------------------------------------------------------------------------------------- plan per version

PLAN_CASES = [
    # profile, version, precision -> network flags, builder flags, io api
    (DESKTOP, "8.6.1", Precision.INT8, ("EXPLICIT_BATCH",), ("INT8", "FP16"), "bindings"),
    (DESKTOP, "10.3.0", Precision.INT8, (), ("INT8", "FP16"), "tensors"),
    (DESKTOP, "11.0.0", Precision.INT8, ("STRONGLY_TYPED",), (), "tensors"),
    (DESKTOP, "8.6.1", Precision.FP16, ("EXPLICIT_BATCH",), ("FP16",), "bindings"),
    (DESKTOP, "10.3.0", Precision.FP16, (), ("FP16",), "tensors"),
    (DESKTOP, "11.0.0", Precision.FP16, ("STRONGLY_TYPED",), (), "tensors"),
    (DESKTOP, "10.3.0", Precision.FP32, ("STRONGLY_TYPED",), (), "tensors"),
    (ORIN_GPU, "8.6.2", Precision.INT8, ("EXPLICIT_BATCH",), ("INT8",), "bindings"),
    (ORIN_GPU, "10.3.0", Precision.INT8, (), ("INT8",), "tensors"),
    (ORIN_DLA, "8.6.2", Precision.INT8, ("EXPLICIT_BATCH",), ("INT8", "FP16", "GPU_FALLBACK"), "bindings"),
    (ORIN_DLA, "10.3.0", Precision.INT8, (), ("INT8", "FP16", "GPU_FALLBACK"), "tensors"),
    (ORIN_DLA, "10.3.0", Precision.FP16, (), ("FP16", "GPU_FALLBACK"), "tensors"),
    (ORIN_DLA, "11.4.1", Precision.INT8, ("STRONGLY_TYPED",), ("GPU_FALLBACK",), "tensors"),
    (XAVIER_NX, "8.5.2", Precision.INT8, ("EXPLICIT_BATCH",), ("INT8", "FP16"), "bindings"),
    (XAVIER_NX, "8.6.2", Precision.INT8, ("EXPLICIT_BATCH",), ("INT8", "FP16"), "bindings"),
]


@pytest.mark.parametrize(("profile", "version", "precision", "net", "flags", "io"), PLAN_CASES,
                         ids=[f"{c[0].name}-{c[1]}-{c[2].value}" for c in PLAN_CASES])
def test_plan_flags_per_version(profile, version, precision, net, flags, io) -> None:
    plan = plan_build(version, profile, precision, SHAPE)
    assert (plan.network_flags, plan.builder_flags, plan.io_api) == (net, flags, io)
    assert plan.workspace_bytes == 512 * 2**20
    assert plan.generation == int(version.split(".")[0])


def test_plan_gpu_profile_shapes_follow_batch_range() -> None:
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE)
    assert (plan.min_shape, plan.opt_shape, plan.max_shape) == ((1, *SHAPE), (4, *SHAPE), (8, *SHAPE))
    assert plan.dla_core is None and plan.calibration_cache is None and not plan.static_batch


def test_plan_dla_is_static_at_opt_batch(caplog: pytest.LogCaptureFixture) -> None:
    plan_module._warn_static.cache_clear()
    with caplog.at_level(logging.WARNING):
        plan = plan_build("10.3.0", ORIN_DLA, Precision.INT8, SHAPE)
    assert plan.dla_core == 0 and plan.static_batch
    assert plan.min_shape == plan.opt_shape == plan.max_shape == (2, *SHAPE)
    assert "DLA needs static shapes" in caplog.text


def test_plan_implicit_xavier_reads_calibration_cache() -> None:
    plan = plan_build("8.5.2", XAVIER_NX, Precision.INT8, SHAPE)
    assert plan.quant_mode == QuantMode.IMPLICIT and plan.calibration_cache == "calibration.cache"


@pytest.mark.parametrize("version", ["10.3.0", "10.13.2"])
def test_plan_implicit_allowed_on_tensorrt_10(version: str) -> None:
    """Row 1: TensorRT 10.x still binds int8_calibrator (deprecated); only 11.0 removed it."""
    plan = plan_build(version, XAVIER_NX, Precision.INT8, SHAPE)
    assert plan.quant_mode == QuantMode.IMPLICIT and plan.calibration_cache == "calibration.cache"


@pytest.mark.parametrize("version", ["11.0.0", "11.4.1"])
def test_plan_implicit_refused_on_tensorrt_11(version: str) -> None:
    with pytest.raises(BackendError, match="implicit INT8 calibration, which TensorRT 11 removed") as exc:
        plan_build(version, XAVIER_NX, Precision.INT8, SHAPE)
    assert "explicit (Q/DQ) profile" in str(exc.value)


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
def test_plan_dla_int8_is_implicit_from_the_float_graph(version: str) -> None:
    """Row 1: DLA takes INT8 only from implicit quantization (NVIDIA/TensorRT#2222), whatever the profile says."""
    plan = plan_build(version, ORIN_DLA, Precision.INT8, SHAPE)
    assert plan.quant_mode == QuantMode.IMPLICIT and plan.onnx_role == "float"
    assert plan.calibration_cache == "calibration.cache" and "GPU_FALLBACK" in plan.builder_flags
    assert any("NVIDIA/TensorRT#2222" in n for n in plan.notes)
    assert plan_build(version, ORIN_GPU, Precision.INT8, SHAPE).onnx_role == "int8"


def test_plan_implicit_needs_int8() -> None:
    with pytest.raises(BackendError, match="implicit-INT8 profile but precision fp16"):
        plan_build("8.5.2", XAVIER_NX, Precision.FP16, SHAPE)


def test_plan_trt11_fp16_needs_an_fp16_onnx() -> None:
    plan = plan_build("11.0.0", DESKTOP, Precision.FP16, SHAPE)
    assert plan.onnx_precision == "fp16"
    assert any("ModelOpt AutoCast" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("version", "profile", "match"),
    [
        ("8.4.3", DESKTOP, "too old for a desktop target"),
        ("8.5.2", DESKTOP, "too old for a desktop target"),
        ("8.4.1", XAVIER_NX, "too old for a jetson target"),
        ("7.2.3", ORIN_GPU, "too old"),
        ("9.2.0", DESKTOP, "not supported.*LLM-only"),
        ("12.0.0", DESKTOP, "not supported"),
        ("11.1.0", _profile("upto10", versions=">=8.6,<11"), r"outside the versions target upto10 accepts \(>=8.6,<11\)"),
        ("10.3.0", _profile("pinned", versions="==8.6"), r"outside the versions target pinned accepts \(==8.6\)"),
    ],
)
def test_unsupported_versions_are_refused(version: str, profile: TargetProfile, match: str) -> None:
    with pytest.raises(BackendError, match=match):
        plan_build(version, profile, Precision.INT8, SHAPE)


def test_dla_fp32_refused() -> None:
    with pytest.raises(BackendError, match="only computes in FP16 or INT8"):
        plan_build("10.3.0", ORIN_DLA, Precision.FP32, SHAPE)


@pytest.mark.parametrize("version", ["10.8.0", "10.16.0", "11.0.0", "11.3.0", "11.4.0"])
def test_dla_refused_where_tensorrt_has_none(version: str) -> None:
    """TensorRT 11.4.1 docs: "TensorRT 10.7 was the last 10.x release that supported DLA"; 11.4.1 restores it."""
    with pytest.raises(BackendError, match="no DLA on Jetson"):
        plan_build(version, ORIN_DLA, Precision.INT8, SHAPE)
    plan_build("10.7.0", ORIN_DLA, Precision.INT8, SHAPE)


def test_u8s8_profile_refused_for_tensorrt_int8() -> None:
    with pytest.raises(BackendError, match="zero point 0"):
        plan_build("10.3.0", _profile("u8", fmt=ActivationFormat.U8S8), Precision.INT8, SHAPE)


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [("8.6.1", ">=8.6", True), ("8.5.2", ">=8.6", False), ("10.3.0", ">=10,<12", True), ("12.0.0", ">=10,<12", False),
     ("8.6.1", "==8.6", True), ("8.5.2", "==8.6", False), ("10.3.0.26", ">=10.3", True), ("10.3.0", "!=10.3", False),
     ("11.0.0", "", True)],
)
def test_versions_specifier(version: str, spec: str, ok: bool) -> None:
    assert tensorrt_versions_ok(version, spec) is ok


def test_plan_to_dict_is_plain_data() -> None:
    d = plan_build("8.6.1", ORIN_DLA, Precision.INT8, SHAPE).to_dict()
    assert d["generation"] == 8 and d["precision"] == "int8" and d["min_shape"] == [2, 3, 32, 32]


# ---------------------------------------------------------------------------------------- ONNX checks


def test_summarize_onnx(qdq_onnx: Path) -> None:
    s = summarize_onnx(qdq_onnx)
    assert (s.input_name, s.input_shape, s.batch_dim) == ("input", SHAPE, None)
    assert "QuantizeLinear" in s.op_types and not s.has_float16


def test_int8_build_needs_qdq(float_onnx: Path) -> None:
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match="no QuantizeLinear nodes"):
        check_onnx_for_plan(summarize_onnx(float_onnx), plan, float_onnx)


def test_implicit_build_needs_float_onnx(qdq_onnx: Path) -> None:
    plan = plan_build("8.5.2", XAVIER_NX, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match="pass the float ONNX"):
        check_onnx_for_plan(summarize_onnx(qdq_onnx), plan, qdq_onnx)


def test_trt11_fp16_refuses_fp32_onnx_and_accepts_fp16(tmp_path: Path, float_onnx: Path) -> None:
    plan = plan_build("11.0.0", DESKTOP, Precision.FP16, SHAPE)
    with pytest.raises(BackendError, match="modelopt.onnx.autocast"):
        check_onnx_for_plan(summarize_onnx(float_onnx), plan, float_onnx)
    fp16 = make_onnx(tmp_path / "fp16.onnx", fp16=True)
    check_onnx_for_plan(summarize_onnx(fp16), plan, fp16)


def test_fixed_batch_onnx_refused_for_a_batch_range(tmp_path: Path) -> None:
    fixed = make_onnx(tmp_path / "fixed.onnx", qdq=True, batch=1)
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match=r"(?s)fixed batch of 1.*dynamic batch axis"):
        check_onnx_for_plan(summarize_onnx(fixed), plan, fixed)


def test_unreadable_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(BackendError, match="cannot read ONNX file"):
        summarize_onnx(bad)


# ------------------------------------------------------------------ recorded calls match the plan (fakes)

BUILD_CASES = [
    ("8.6.1", DESKTOP, Precision.INT8),
    ("10.3.0", DESKTOP, Precision.INT8),
    ("11.0.0", DESKTOP, Precision.INT8),
    ("10.3.0", DESKTOP, Precision.FP32),
    ("8.6.1", ORIN_DLA, Precision.INT8),
    ("10.3.0", ORIN_DLA, Precision.INT8),
    ("11.4.1", ORIN_DLA, Precision.INT8),
]


@pytest.mark.parametrize(("version", "profile", "precision"), BUILD_CASES,
                         ids=[f"{v}-{p.name}-{q.value}" for v, p, q in BUILD_CASES])
def test_recorded_calls_match_plan(tmp_path: Path, qdq_onnx: Path, float_onnx: Path, version: str,
                                   profile: TargetProfile, precision: Precision) -> None:
    fake = FakeTensorRT(version, dla_cores=2)
    plan = plan_build(version, profile, precision, SHAPE)
    onnx_path = qdq_onnx if plan.onnx_role == "int8" else float_onnx
    if plan.calibration_cache:
        write_calibration_cache(tmp_path / "out" / "calibration.cache", SCALES, "8.5.2")
    engine = build_engine(onnx_path, plan, tmp_path / "out", trt=fake)

    expected_mask = sum(1 << int(getattr(fake.NetworkDefinitionCreationFlag, f)) for f in plan.network_flags)
    assert fake.called("Builder.create_network") == [(expected_mask,)]
    assert [a[0] for a in fake.called("IBuilderConfig.set_flag")] == list(plan.builder_flags)
    assert fake.called("IBuilderConfig.set_memory_pool_limit") == [("WORKSPACE", 512 * 2**20)]
    assert fake.called("IOptimizationProfile.set_shape") == [("input", plan.min_shape, plan.opt_shape, plan.max_shape)]
    if plan.dla_core is None:
        assert not fake.called("IBuilderConfig.default_device_type") and not fake.called("IBuilderConfig.DLA_core")
    else:
        assert fake.called("IBuilderConfig.default_device_type") == [(fake.DeviceType.DLA,)]
        assert fake.called("IBuilderConfig.DLA_core") == [(0,)]
    assert bool(fake.called("IBuilderConfig.int8_calibrator")) == (plan.calibration_cache is not None)
    assert not fake.called("build_error")
    assert engine.read_bytes().startswith(PLAN_MAGIC)
    assert (tmp_path / "out" / "timing.cache").read_bytes() == timing_cache_bytes(version, b"gpu0")
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_implicit_build_uses_cache_only_calibrator(tmp_path: Path, float_onnx: Path) -> None:
    fake = FakeTensorRT("8.5.2")
    plan = plan_build("8.5.2", XAVIER_NX, Precision.INT8, SHAPE)
    out = tmp_path / "out"
    write_calibration_cache(out / "calibration.cache", SCALES, "8.5.2")
    build_engine(float_onnx, plan, out, trt=fake)
    [(calibrator,)] = fake.called("IBuilderConfig.int8_calibrator")
    assert isinstance(calibrator, fake.IInt8EntropyCalibrator2) and calibrator._base_init_called
    assert calibrator.get_batch(["input"]) is None
    [(cache,)] = fake.called("calibrator.read_calibration_cache")
    assert cache.startswith(b"TRT-8502-EntropyCalibration2\n")
    assert len(fake.called("IBuilderConfig.set_calibration_profile")) == 1
    assert [a[0] for a in fake.called("IBuilderConfig.set_flag")] == ["INT8", "FP16"]


def test_implicit_build_without_cache_says_how_to_make_one(tmp_path: Path, float_onnx: Path) -> None:
    plan = plan_build("8.5.2", XAVIER_NX, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match="write_calibration_cache"):
        build_engine(float_onnx, plan, tmp_path / "out", trt=FakeTensorRT("8.5.2"))


def _forced_plan(version: str, **changes) -> BuildPlan:
    plan = plan_build(version, DESKTOP, Precision.INT8, SHAPE)
    return BuildPlan(**{**plan.__dict__, **changes})


def test_trt11_fake_has_no_int8_flag_or_calibrator(tmp_path: Path, qdq_onnx: Path) -> None:
    fake = FakeTensorRT("11.0.0")
    assert not hasattr(fake.BuilderFlag, "INT8") and not hasattr(fake.BuilderFlag, "FP16")
    assert not hasattr(fake, "IInt8EntropyCalibrator2")
    with pytest.raises(BackendError, match=r"TensorRT 11.0.0 has no BuilderFlag.INT8"):
        build_engine(qdq_onnx, _forced_plan("11.0.0", builder_flags=("INT8",)), tmp_path, trt=fake)
    with pytest.raises(BackendError, match="no INT8 calibrator"):
        trt_backend.make_cache_calibrator(fake, qdq_onnx)
    config = fake.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


def test_trt10_strongly_typed_with_int8_flag_fails_like_the_real_one(tmp_path: Path, qdq_onnx: Path) -> None:
    fake = FakeTensorRT("10.3.0")
    plan = _forced_plan("10.3.0", network_flags=("STRONGLY_TYPED",))
    with pytest.raises(BackendError, match="failed to build an engine"):
        build_engine(qdq_onnx, plan, tmp_path, trt=fake)
    assert "strongly typed" in fake.called("build_error")[0][0]


def test_parser_errors_become_one_backend_error(tmp_path: Path) -> None:
    onnx_path = make_onnx(tmp_path / "m.onnx", qdq=True, op="Softsign")
    fake = FakeTensorRT("10.3.0", unsupported_ops=frozenset({"Softsign", "Gemm"}))
    with pytest.raises(BackendError) as exc:
        build_engine(onnx_path, plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE), tmp_path, trt=fake)
    text = str(exc.value)
    assert "could not parse" in text and "op: Gemm" in text and "op: Softsign" in text and "fix:" in text


def test_trt8_parser_needs_explicit_batch(tmp_path: Path, qdq_onnx: Path) -> None:
    plan = _forced_plan("8.6.1", network_flags=())
    with pytest.raises(BackendError, match="explicit batch dimension"):
        build_engine(qdq_onnx, plan, tmp_path, trt=FakeTensorRT("8.6.1"))


def test_plan_for_other_version_refused(tmp_path: Path, qdq_onnx: Path) -> None:
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match="plan is for TensorRT 10.3.0 but tensorrt 8.6.1"):
        build_engine(qdq_onnx, plan, tmp_path, trt=FakeTensorRT("8.6.1"))


def test_dla_build_on_a_gpu_without_dla(tmp_path: Path, qdq_onnx: Path) -> None:
    plan = plan_build("10.3.0", ORIN_DLA, Precision.INT8, SHAPE)
    with pytest.raises(BackendError, match="0 DLA core"):
        build_engine(qdq_onnx, plan, tmp_path, trt=FakeTensorRT("10.3.0", dla_cores=0))


def test_build_failure_is_reported_and_nothing_written(tmp_path: Path, qdq_onnx: Path) -> None:
    fake = FakeTensorRT("10.3.0", fail_build=True)
    with pytest.raises(BackendError, match="failed to build"):
        build_engine(qdq_onnx, plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE), tmp_path, trt=fake)
    assert not (tmp_path / "model.plan").exists()


def test_timing_cache_reused(tmp_path: Path, qdq_onnx: Path) -> None:
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE)
    first = FakeTensorRT("10.3.0")
    build_engine(qdq_onnx, plan, tmp_path, trt=first)
    assert first.called("IBuilderConfig.create_timing_cache") == [(b"",)]
    second = FakeTensorRT("10.3.0")
    build_engine(qdq_onnx, plan, tmp_path, trt=second)
    assert second.called("IBuilderConfig.create_timing_cache") == [(timing_cache_bytes("10.3.0", b"gpu0"),)]
    assert second.called("IBuilderConfig.set_timing_cache")[0][1:] == (False, True)


@pytest.mark.parametrize("behaviour", ["reject", "none", "raise"])
@pytest.mark.parametrize("other", [{"version": "10.4.0"}, {"device_tag": b"gpu1"}])
def test_foreign_timing_cache_is_replaced_whatever_tensorrt_does(tmp_path: Path, qdq_onnx: Path, caplog,
                                                                 behaviour: str, other: dict) -> None:
    """Unverified point 2: create_timing_cache's answer for another version's or device's cache is not documented
    (set_timing_cache refuses it, or create returns None, or raises): each gives a warning and a fresh cache."""
    build_engine(qdq_onnx, plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE), tmp_path, trt=FakeTensorRT("10.3.0"))
    version = other.get("version", "10.3.0")
    fake = FakeTensorRT(version, device_tag=other.get("device_tag", b"gpu0"), foreign_timing_cache=behaviour)
    with caplog.at_level(logging.WARNING):
        build_engine(qdq_onnx, plan_build(version, DESKTOP, Precision.INT8, SHAPE), tmp_path, trt=fake)
    assert "from another device or TensorRT; starting a new one" in caplog.text
    assert fake.called("IBuilderConfig.create_timing_cache")[-1] == (b"",)
    assert (tmp_path / "timing.cache").read_bytes() == timing_cache_bytes(version, other.get("device_tag", b"gpu0"))


def test_build_selects_the_profile_device(tmp_path: Path, qdq_onnx: Path) -> None:
    """Row 5: TensorRT builds on the calling thread's current device, so "cuda:1" must be made current first."""
    fake = FakeTensorRT("10.3.0")
    cuda = FakeCuda(fake, RTX)
    profile = _profile("second-gpu", device="cuda:1")
    TensorRTBackend().compile(qdq_onnx, profile, tmp_path / "b", Precision.INT8, trt=fake, cuda=cuda)
    assert fake.called("Builder.device") == [(1,)]
    assert cuda.called("set_device") == [(1,)]


def test_implicit_build_rewrites_the_cache_header_for_the_installed_tensorrt(tmp_path: Path, float_onnx: Path) -> None:
    """Row 6: the bundle's cache carries the profile's default header (8.5.2); TensorRT 10.3 skips a cache of
    another version (NVIDIA/TensorRT#1378) and then has no data: the build gives it 10.3's header."""
    out = tmp_path / "out"
    write_calibration_cache(out / "calibration.cache", SCALES, "8.5.2")
    fake = FakeTensorRT("10.3.0", dla_cores=2)
    build_engine(float_onnx, plan_build("10.3.0", ORIN_DLA, Precision.INT8, SHAPE), out, trt=fake)
    [(cache,)] = fake.called("calibrator.read_calibration_cache")
    assert cache.startswith(cache_header("10.3.0").encode() + b"\n") and not fake.called("build_error")
    assert (out / "calibration.cache").read_text().startswith("TRT-8502-")  # the bundle's file is not changed


def test_fake_rejects_a_cache_of_another_version(tmp_path: Path, float_onnx: Path) -> None:
    """The fake's rule the previous test relies on."""
    fake = FakeTensorRT("10.3.0", dla_cores=2)
    plan = plan_build("10.3.0", ORIN_DLA, Precision.INT8, SHAPE)
    config = fake.Builder(None).create_builder_config()
    config.int8_calibrator = trt_backend.make_cache_calibrator(fake, b"TRT-8600-EntropyCalibration2\ninput: 3c000000\n")
    network = fake.Builder(None).create_network(0)
    assert fake.Builder(None)._build_error(network, config) is not None
    assert plan.calibration_cache


# ------------------------------------------------------------------------- compile / load / runner


def _compile(tmp_path: Path, version: str, profile: TargetProfile, onnx_path: Path,
             device: DeviceInfo = RTX) -> tuple[FakeTensorRT, Artifact]:
    fake = FakeTensorRT(version, dla_cores=2)
    art = TensorRTBackend().compile(onnx_path, profile, tmp_path / "bundle", Precision.INT8, trt=fake, device=device)
    return fake, art


def test_compile_records_versions_and_device(tmp_path: Path, qdq_onnx: Path) -> None:
    _, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    assert art.backend == BackendName.TENSORRT and art.precision == Precision.INT8
    assert art.files == {"engine": "model.plan", "timing_cache": "timing.cache"}
    assert art.info["tensorrt_version"] == "10.3.0"
    assert (art.info["gpu_name"], art.info["compute_capability"], art.info["dla_core"]) == (RTX.name, "8.9", None)
    assert art.info["plan"]["builder_flags"] == ["INT8", "FP16"]
    assert Artifact.from_dict(art.to_dict()).info == art.info


@pytest.mark.parametrize(("version", "execute_call"), [("8.6.1", "IExecutionContext.execute_async_v2"),
                                                        ("10.3.0", "IExecutionContext.execute_async_v3"),
                                                        ("11.0.0", "IExecutionContext.execute_async_v3")])
def test_runner_dynamic_batch_per_api_generation(tmp_path: Path, qdq_onnx: Path, version: str,
                                                 execute_call: str) -> None:
    fake, art = _compile(tmp_path, version, DESKTOP, qdq_onnx)
    cuda = FakeCuda(fake, RTX)
    runner = TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=cuda)
    x = np.random.default_rng(1).normal(size=(11, *SHAPE)).astype(np.float32)  # > max batch 8: two chunks
    # Polygraphy's runner shape: declared input metadata, thread safety declared
    assert runner.input_metadata == {"input": (np.dtype(np.float32), (None, *SHAPE))} and runner.thread_safe is False
    with runner:
        y = runner.infer(x)
    expected = x.reshape(11, -1).mean(axis=1, keepdims=True) * np.arange(1, NUM_CLASSES + 1)
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert len(fake.called(execute_call)) == 2
    set_shape = "IExecutionContext.set_binding_shape" if version.startswith("8.") else "IExecutionContext.set_input_shape"
    assert [a[-1][0] for a in fake.called(set_shape)] == [8, 3]
    assert [a[0] for a in cuda.called("malloc")] == [8 * 3 * 32 * 32 * 4, 8 * NUM_CLASSES * 4]  # max batch
    assert len(cuda.called("free")) == 2 and cuda.called("release")


def test_runner_pads_static_dla_engine(tmp_path: Path, float_onnx: Path) -> None:
    write_calibration_cache(tmp_path / "bundle" / "calibration.cache", SCALES, "8.5.2")
    fake, art = _compile(tmp_path, "10.3.0", ORIN_DLA, float_onnx, device=ORIN)
    runner = TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, ORIN))
    assert fake.called("Runtime.DLA_core") == [(0,)]
    assert runner.input_metadata["input"][1] == (2, *SHAPE)  # static
    y = runner.infer(np.ones((1, *SHAPE), np.float32))
    assert y.shape == (1, NUM_CLASSES)
    assert [a[1] for a in fake.called("IExecutionContext.set_input_shape")] == [(2, *SHAPE)]


def test_runner_rejects_wrong_image_size(tmp_path: Path, qdq_onnx: Path) -> None:
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    runner = TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, RTX))
    with pytest.raises(BackendError, match="takes N x 3 x 32 x 32"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_load_refuses_engine_from_another_gpu(tmp_path: Path, qdq_onnx: Path) -> None:
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    with pytest.raises(BundleError, match="rebuild it on this device"):
        TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, ORIN))


def test_load_refuses_corrupt_engine(tmp_path: Path, qdq_onnx: Path) -> None:
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    (tmp_path / "bundle" / "model.plan").write_bytes(b"\x00garbage")
    with pytest.raises(BundleError, match="could not deserialize"):
        TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, RTX))


def test_load_missing_engine(tmp_path: Path, qdq_onnx: Path) -> None:
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    (tmp_path / "bundle" / "model.plan").unlink()
    with pytest.raises(BundleError, match="no engine file"):
        TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, RTX))


def _worker(fn):
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run, name="stream-worker")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_pycuda_runner_infers_on_another_thread(tmp_path: Path, qdq_onnx: Path) -> None:
    """Row 5: pycuda contexts are per thread (inducer/pycuda#242); stream() infers on worker threads."""
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    drv = FakePyCudaDriver(fake, RTX)
    runner = TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=PyCudaRuntime(drv))
    x = np.random.default_rng(4).normal(size=(3, *SHAPE)).astype(np.float32)
    here = runner.infer(x)
    there = _worker(lambda: runner.infer(x))
    np.testing.assert_array_equal(here, there)
    assert {args[0] for args in drv.called("Context.push")} >= {"MainThread", "stream-worker"}
    _worker(runner.close)  # closing from another thread frees with the context current there too
    assert not drv._stack()  # every push was popped
    with pytest.raises(LogicError, match="no currently active context"):
        drv.mem_alloc(4)  # the fake's rule: device calls need a current context on this thread


def test_cuda_python_runner_selects_the_device_on_every_thread(tmp_path: Path, qdq_onnx: Path) -> None:
    """Row 5: cudaSetDevice is per host thread, so device 1 must be selected on the worker thread too."""
    fake = FakeTensorRT("10.3.0")
    profile = _profile("second-gpu", device="cuda:1")
    cudart = FakeCudart(fake, RTX)
    art = TensorRTBackend().compile(qdq_onnx, profile, tmp_path / "bundle", Precision.INT8, trt=fake,
                                    cuda=CudaRuntime(cudart))
    assert art.info["device_index"] == 1
    runner = TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=CudaRuntime(cudart))
    x = np.ones((2, *SHAPE), np.float32)
    _worker(lambda: runner.infer(x))
    assert ("stream-worker", 1) in cudart.called("cudaSetDevice")
    assert {device for device, _ in cudart.called("cudaMemcpyAsync")} == {1}


# --------------------------------------------------------------------------------- portability (pure)

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


@pytest.mark.parametrize(
    ("trt_version", "device", "match"),
    [
        ("10.3.0", DeviceInfo("NVIDIA GeForce RTX 4090", "8.9"), "compute capability 8.7 .this GPU: 8.9."),
        ("8.6.2", ORIN, r"TensorRT 10.3.0 \(this machine: 8.6.2\)"),
        ("10.4.0", ORIN, r"TensorRT 10.3.0"),
        ("10.3.0", DeviceInfo("Xavier", "8.7"), "GPU 'Orin'"),
    ],
)
def test_portability_refuses_mismatch(trt_version: str, device: DeviceInfo, match: str) -> None:
    with pytest.raises(BundleError, match=match) as exc:
        check_engine_portability(BUILT, trt_version, device)
    assert "not portable" in str(exc.value) and "NVIDIA/TensorRT#818" in str(exc.value)


def test_portability_accepts_same_device_and_build_number_difference() -> None:
    check_engine_portability(BUILT, "10.3.0.30", ORIN)


def test_portability_name_mismatch_can_be_allowed_with_same_compute_capability(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        check_engine_portability(BUILT, "10.3.0", DeviceInfo("Orin NX", "8.7"), allow_gpu_name_mismatch=True)
    assert "same compute capability" in caplog.text
    with pytest.raises(BundleError):
        check_engine_portability(BUILT, "10.3.0", DeviceInfo("Orin NX", "8.9"), allow_gpu_name_mismatch=True)


# ------------------------------------------------------------------------------- availability / import


def test_available_does_not_import_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    TensorRTBackend().available()
    assert "tensorrt" not in sys.modules


def test_missing_tensorrt_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendUnavailable, match="not installed"):
        trt_backend.import_tensorrt()


def test_device_index() -> None:
    assert [trt_backend.device_index(d) for d in ("cuda:0", "cuda:1", "cuda", "", "2")] == [0, 1, 0, 0, 2]
    with pytest.raises(BackendError):
        trt_backend.device_index("cpu")


# ----------------------------------------------------------------------- real TensorRT, end to end


def quantize_s8s8(float_path: Path, qdq_path: Path) -> Path:
    """Q/DQ with onnxruntime.quantization: S8S8 (signed activations, zero point 0), per-channel weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(2)
            self.batches = iter([{"input": rng.normal(size=(4, *SHAPE)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return qdq_path


def test_e2e_fixture_is_a_valid_s8s8_qdq_model(tmp_path: Path) -> None:
    """The end-to-end test's model (checked here too, where TensorRT is absent)."""
    qdq = quantize_s8s8(make_onnx(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    model = onnx.load(str(qdq))
    zero_points = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    check_onnx_for_plan(summarize_onnx(qdq), plan_build("10.3.0", DESKTOP, Precision.INT8, SHAPE), qdq)


def _real_gpu_or_skip() -> DeviceInfo:
    if not TensorRTBackend().available():
        pytest.skip("tensorrt is not installed here")
    try:
        cuda = trt_backend.load_cuda()
        cuda.set_device(0)
        return cuda.device_info(0)
    except Exception as exc:  # BackendUnavailable, no driver, no device
        pytest.skip(f"no usable CUDA GPU: {exc}")


@pytest.mark.tensorrt
def test_real_tensorrt_int8_engine_matches_onnxruntime(tmp_path: Path) -> None:
    _real_gpu_or_skip()
    import onnxruntime as ort

    qdq = quantize_s8s8(make_onnx(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    profile = _profile("e2e", versions=">=8.6", batch=BatchRange(1, 8, 16))
    backend = TensorRTBackend()
    art = backend.compile(qdq, profile, tmp_path / "bundle", Precision.INT8)
    x = np.random.default_rng(3).normal(size=(16, *SHAPE)).astype(np.float32)
    with backend.load(tmp_path / "bundle", art) as runner:
        y_trt = runner.infer(x)
    y_ort = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    cos = (y_trt * y_ort).sum(1) / (np.linalg.norm(y_trt, axis=1) * np.linalg.norm(y_ort, axis=1))
    assert cos.min() >= 0.99, f"cosine similarity per sample {cos}"
    agreement = (y_trt.argmax(1) == y_ort.argmax(1)).mean()
    assert agreement >= 0.9, f"top-1 agreement {agreement}"  # < 1 only for near-ties between classes


# ---------------------------------------------------------------- the frame engine (uint8 frames in, .frames)

FRAME_SPEC = PreprocessSpec(input_size=32, resize=32)  # ImageNet mean/std, RGB model


def _frame_graph(tmp_path: Path, source: Path, cast_first: bool = True) -> Path:
    path = tmp_path / ("model.frames.onnx" if cast_first else "transpose_first.onnx")
    model = onnx.load(source)
    onnx.save(frames_graph(model, FRAME_SPEC) if cast_first else
              with_frame_input(model, FRAME_SPEC, "bgr", cast_first=False), path)
    return path


def test_fake_builder_refuses_a_uint8_input_that_does_not_feed_a_cast(tmp_path: Path, qdq_onnx: Path) -> None:
    """The fake's rule (NVIDIA/TensorRT#3985): ONNX Runtime's frame graph (Transpose on the uint8 frames) fails to
    build; TensorRT's (the cast first) builds, and its engine declares a LINEAR uint8 input."""
    fake = FakeTensorRT("10.3.0")
    plan = plan_build("10.3.0", DESKTOP, Precision.INT8, (32, 32, 3))
    with pytest.raises(BackendError, match="failed to build"):
        build_engine(_frame_graph(tmp_path, qdq_onnx, cast_first=False), plan, tmp_path / "a", fake)
    assert "UINT8 inputs must feed a cast" in fake.called("build_error")[0][0]
    engine_path = build_engine(_frame_graph(tmp_path, qdq_onnx), plan, tmp_path / "b", fake)
    engine = fake.Runtime(None).deserialize_cuda_engine(engine_path.read_bytes())
    assert engine.get_tensor_dtype("frames") == fake.DataType.UINT8
    assert engine.get_tensor_format("frames") == fake.TensorFormat.LINEAR


def _frame_artifact(tmp_path: Path, version: str, qdq_onnx: Path) -> tuple[FakeTensorRT, Artifact]:
    """A desktop bundle built here with both engines, as prepare_tensorrt_bundle's build-here route writes it."""
    fake = FakeTensorRT(version, execute_graphs=True)
    out = tmp_path / "bundle"
    backend = TensorRTBackend()
    art = backend.compile(qdq_onnx, DESKTOP, out, Precision.INT8, trt=fake, device=RTX)
    frames = _frame_graph(out, qdq_onnx)
    backend.compile(frames, DESKTOP, out, Precision.INT8, trt=fake, device=RTX, engine_name="model.frames.plan")
    art.files.update(frames_onnx=frames.name, frames_engine="model.frames.plan")
    return fake, art


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.0.0"])
def test_frame_engine_gives_the_float_engines_numbers_from_uint8_frames(tmp_path: Path, qdq_onnx: Path,
                                                                        version: str) -> None:
    """The engines run their graphs with ONNX Runtime (execute_graphs): uint8 BGR frames through the frame engine
    give the float engine's output on the host-normalised batch; RGB frames are reversed by the runner."""
    fake, art = _frame_artifact(tmp_path, version, qdq_onnx)
    backend, cuda = TensorRTBackend(), FakeCuda(fake, RTX)
    bgr = np.random.default_rng(4).integers(0, 256, size=(11, 32, 32, 3), dtype=np.uint8)  # > max batch: two chunks
    with backend.load(tmp_path / "bundle", art, trt=fake, cuda=cuda) as float_runner:
        expected = float_runner.infer(FRAME_SPEC.apply_batch(list(bgr), "bgr"))
    for order, frames in ((ChannelOrder.BGR, bgr), (ChannelOrder.RGB, np.ascontiguousarray(bgr[..., ::-1]))):
        with backend.load(tmp_path / "bundle", art, trt=fake, cuda=cuda,
                          frame_input=FrameInput(FRAME_SPEC, order)) as runner:
            assert runner.input_metadata == {"frames": (np.dtype(np.uint8), (None, 32, 32, 3))}
            np.testing.assert_allclose(runner.infer(frames), expected, rtol=1e-6, atol=1e-6)
            with pytest.raises(BackendError, match="takes uint8 frames"):
                runner.infer(FRAME_SPEC.apply_batch(list(bgr[:1]), "bgr"))
    assert [a[0] for a in cuda.called("malloc")][-2:] == [8 * 32 * 32 * 3, 8 * NUM_CLASSES * 4]  # bytes, not floats


def test_uint8_dtype_without_nptype_support_comes_from_the_member_name() -> None:
    """An 8.x ``trt.nptype`` without uint8 (python/packaging/tensorrt/__init__.py before 10.0) raises KeyError."""
    fake = FakeTensorRT("8.6.1")
    old_nptype = {int(fake.DataType.FLOAT): np.float32}

    class Old:
        DataType = fake.DataType

        @staticmethod
        def nptype(dtype):
            return old_nptype[int(dtype)]

    assert numpy_dtype(Old, fake.DataType.UINT8) == np.uint8 and numpy_dtype(Old, fake.DataType.FLOAT) == np.float32


@pytest.mark.tensorrt
def test_real_tensorrt_frame_engine_matches_the_float_engine(tmp_path: Path) -> None:
    """On a real GPU: the frame graph builds (uint8 input cast first), and uint8 frames give the float engine's
    output on the host-normalised batch, up to TensorRT's own kernel differences."""
    _real_gpu_or_skip()
    backend = TensorRTBackend()
    profile = _profile("e2e", versions=">=8.6", batch=BatchRange(1, 8, 16))
    float_path = make_onnx(tmp_path / "f.onnx")
    out = tmp_path / "bundle"
    art = backend.compile(float_path, profile, out, Precision.FP32)
    frames_path = _frame_graph(out, float_path)
    backend.compile(frames_path, profile, out, Precision.FP32, engine_name="model.frames.plan")
    art.files.update(frames_onnx=frames_path.name, frames_engine="model.frames.plan")
    bgr = np.random.default_rng(5).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    with backend.load(out, art) as runner:
        expected = runner.infer(FRAME_SPEC.apply_batch(list(bgr), "bgr"))
    with backend.load(out, art, frame_input=FrameInput(FRAME_SPEC, ChannelOrder.RGB)) as runner:
        assert runner.input_metadata["frames"][0] == np.uint8
        got = runner.infer(np.ascontiguousarray(bgr[..., ::-1]))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_frame_input_refused_for_a_bundle_without_a_frame_graph(tmp_path: Path, qdq_onnx: Path) -> None:
    fake, art = _compile(tmp_path, "10.3.0", DESKTOP, qdq_onnx)
    with pytest.raises(BundleError, match="no frame graph"):
        TensorRTBackend().load(tmp_path / "bundle", art, trt=fake, cuda=FakeCuda(fake, RTX),
                               frame_input=FrameInput(FRAME_SPEC, ChannelOrder.BGR))


@pytest.mark.slow
def test_a_gpu_bundle_built_here_runs_camera_frames_through_its_frame_engine(tmp_path: Path, random_r18_graph,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """compile on a machine that is the target builds both engines; runtime.load then feeds the frame engine uint8
    frames, with the host path's results (the fake engines run their graphs with ONNX Runtime)."""
    import edge_resnet.backends.tensorrt.backend as backend_module
    import edge_resnet.runtime as rt
    from edge_resnet.bundle import load_bundle
    from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle

    fake = FakeTensorRT("10.3.0", execute_graphs=True)
    cuda = FakeCuda(fake, RTX)
    monkeypatch.setattr(TensorRTBackend, "available", lambda self: True)
    monkeypatch.setattr(backend_module, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(backend_module, "load_cuda", lambda: cuda)
    out = tmp_path / "gpu"
    compile_bundle(ModelSource(name="resnet18", num_classes=10), CompileOptions(
        target="gpu", calib="digits:train", calib_count=16, progress=False), out, input_size=32,
        float_graph=random_r18_graph)
    bundle = load_bundle(out)
    assert bundle.artifact.files["frames_engine"] == "model.frames.plan" and (out / "model.frames.plan").is_file()
    assert bundle.manifest["inputs"]["frames"]["channel_order"].startswith("bgr")
    frames = [np.random.default_rng(i).integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for i in range(6)]
    with rt.load(out, trt=fake, cuda=cuda) as model, \
            rt.load(out, trt=fake, cuda=cuda, normalize_in_engine=False) as host:
        assert model.frame_runner is not None and host.frame_runner is None
        np.testing.assert_allclose(model.infer(frames), host.infer(frames), rtol=1e-5, atol=1e-5)
        rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        np.testing.assert_allclose(model.infer(rgb, order="rgb"), host.infer(frames), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ Orin modules: one name, several GPUs

AGX = DeviceInfo("Orin", "8.7", 16, 28826)
NANO = DeviceInfo("Orin", "8.7", 8, 7620)
NX16 = DeviceInfo("Orin", "8.7", 8, 15388)


@pytest.mark.parametrize(("built", "here", "match"), [(AGX, NANO, "16 SMs"), (NX16, NANO, "15388 MiB")])
def test_orin_modules_told_apart_by_sm_count_and_memory(built: DeviceInfo, here: DeviceInfo, match: str) -> None:
    """Unverified point 1, settled: every Orin module reports the name "Orin" (trtexec "Selected Device: Orin" on
    AGX Orin and Orin NX), so the check compares the SM count and the memory too."""
    with pytest.raises(BundleError, match=match) as exc:
        trt_backend.check_portability("10.3.0", built, "10.3.0", here)
    assert "not portable" in str(exc.value)
    trt_backend.check_portability("10.3.0", built, "10.3.0", here, allow_device_mismatch=True)  # same CC: allowed
    trt_backend.check_portability("10.3.0", NANO, "10.3.0", DeviceInfo("Orin", "8.7", 8, 7500))  # carve-out noise
