"""OpenVINO backend: every convolution of a Q/DQ ResNet-18/50 runs in int8 on the CPU's runtime graph, the INT8
artifact agrees with the float model, the FP32 baseline really runs in f32 (not bf16), concurrent and
asynchronous inference, and clear errors for a missing library, damaged files and absent devices."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import assert_thread_safe, cosine, r18_qdq_files, r50_qdq_files

from edge_resnet.backends import openvino as ov_backend
from edge_resnet.backends.base import Artifact, get_backend
from edge_resnet.backends.openvino import (
    OpenVINOBackend,
    int8_coverage,
    runtime_layers,
    runtime_precisions,
    runtime_primitives,
)
from edge_resnet.errors import BackendError, BackendUnavailable
from edge_resnet.targets import get_target
from edge_resnet.types import ActivationFormat, Precision

log = logging.getLogger(__name__)

needs_openvino = pytest.mark.skipif(not OpenVINOBackend().available(), reason="openvino is not installed")
N_TEST = 256
THREADS = 2


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def r18(digits_r18: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return r18_qdq_files(digits_r18, tmp_path_factory, ActivationFormat.S8S8, N_TEST, THREADS)


@pytest.fixture(scope="module")
def r50_s8s8(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return r50_qdq_files(tmp_path_factory, ActivationFormat.S8S8)


def _build(onnx_path: Path, out_dir: Path, precision: Precision, target: str = "cpu") -> Artifact:
    art = get_backend("openvino").compile(onnx_path, get_target(target), out_dir, precision)
    return Artifact.from_dict(art.to_dict())  # as a bundle manifest would hand it back


@pytest.fixture(scope="module")
def r18_int8(r18: dict) -> tuple[Path, Artifact, ov_backend.OpenVINORunner]:
    out = r18["dir"] / "int8"
    art = _build(r18["s8s8"], out, Precision.INT8)
    return out, art, OpenVINOBackend().load(out, art, threads=THREADS)


@pytest.fixture(scope="module")
def r18_fp32(r18: dict) -> tuple[Path, Artifact, ov_backend.OpenVINORunner]:
    out = r18["dir"] / "fp32"
    art = _build(r18["float"], out, Precision.FP32)
    return out, art, OpenVINOBackend().load(out, art, threads=THREADS)


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ------------------------------------------------------------------------------------------- int8 coverage


@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_every_convolution_runs_in_int8_on_the_runtime_graph(model: str, request: pytest.FixtureRequest,
                                                            r18_int8: tuple) -> None:
    if model == "resnet18":
        _, art, runner = r18_int8
        onnx_path = request.getfixturevalue("r18")["s8s8"]
        n_convs = 20
    else:
        r50 = request.getfixturevalue("r50_s8s8")
        art = _build(r50["s8s8"], r50["dir"] / "int8", Precision.INT8)
        runner = OpenVINOBackend().load(r50["dir"] / "int8", art, threads=THREADS)
        onnx_path, n_convs = r50["s8s8"], 53
    assert Counter(n.op_type for n in onnx.load(str(onnx_path)).graph.node)["Conv"] == n_convs
    precisions = runtime_precisions(runner)
    primitives = Counter(runtime_primitives(runner).values())
    log.info("%s: %s", model, primitives)
    assert len(precisions) == n_convs  # no convolution fused away or hidden from the count
    assert {name: p for name, p in precisions.items() if p not in ("u8", "i8")} == {}
    assert int8_coverage(runner) == (n_convs, n_convs)
    assert (art.info["int8_convs"], art.info["convs"]) == (n_convs, n_convs)  # measured at compile time too
    assert art.info["compress_to_fp16"] is False


@needs_openvino
def test_runtime_layers_report_every_primitive(r18_int8: tuple) -> None:
    layers = runtime_layers(r18_int8[2], None)
    types = {layer.layer_type for layer in layers}
    assert {"Input", "Convolution", "Output"} <= types
    assert all(layer.runtime_precision for layer in layers if layer.layer_type == "Convolution")


# -------------------------------------------------------------------------------------------- accuracy


@needs_openvino
@pytest.mark.slow
def test_int8_artifact_agrees_with_the_float_model(r18: dict, r18_int8: tuple) -> None:
    y = r18_int8[2].infer(r18["x"])
    ref = r18["ref"]
    agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
    cos = cosine(y, ref)
    log.info("OpenVINO int8 vs ORT float: top-1 agreement %.4f, cosine mean %.5f min %.5f", agree, cos.mean(), cos.min())
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert agree >= 0.99
    assert cos.mean() >= 0.999


@needs_openvino
@pytest.mark.slow
def test_fp32_artifact_runs_in_f32_and_matches_the_float_model(r18: dict, r18_fp32: tuple) -> None:
    _, art, runner = r18_fp32
    assert runner.describe()["inference_precision"] == "f32"
    assert art.info["inference_precision"] == "f32"
    y, ref = runner.infer(r18["x"]), r18["ref"]
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())
    log.info("OpenVINO fp32 vs ORT float: max relative error %.2e", rel)
    assert rel <= 1e-4


@needs_openvino
@pytest.mark.slow
def test_without_the_f32_hint_this_cpu_would_run_the_float_model_in_bf16(r18: dict, r18_fp32: tuple) -> None:
    import openvino

    core = openvino.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16: f32 is already the default")
    out, art, _ = r18_fp32
    plain = core.compile_model(str(out / art.files["xml"]), "CPU")
    assert plain.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    device_default = OpenVINOBackend().load(out, art, threads=THREADS, inference_precision="")
    assert device_default.describe()["inference_precision"] == "bf16"
    rel = np.abs(device_default.infer(r18["x"][:32]) - r18["ref"][:32]).max()
    log.info("bf16 max abs error vs float: %.2e", rel)


@needs_openvino
@pytest.mark.slow
def test_only_an_fp16_build_compresses_weights_to_fp16(r18: dict, r18_int8: tuple, r18_fp32: tuple) -> None:
    out16 = r18["dir"] / "fp16"
    art16 = _build(r18["float"], out16, Precision.FP16)
    assert art16.info["compress_to_fp16"] is True
    xml = {name: (path / "model.xml").read_text() for name, path in
           (("int8", r18_int8[0]), ("fp32", r18_fp32[0]), ("fp16", out16))}
    assert 'element_type="f16"' not in xml["int8"] and 'element_type="i8"' in xml["int8"]
    assert 'element_type="f16"' not in xml["fp32"]
    assert 'element_type="f16"' in xml["fp16"]
    y = OpenVINOBackend().load(out16, art16, threads=THREADS).infer(r18["x"][:64])
    assert np.mean(y.argmax(1) == r18["ref"][:64].argmax(1)) >= 0.98


# ---------------------------------------------------------------------------------- runner behaviour


@needs_openvino
def test_runner_exposes_the_compiled_model_and_its_settings(r18_int8: tuple) -> None:
    import openvino

    _, art, runner = r18_int8
    assert isinstance(runner.compiled, openvino.CompiledModel)
    d = runner.describe()
    assert d["performance_hint"] == "LATENCY"  # the cpu profile's
    assert d["threads"] == THREADS
    assert d["inference_precision"] == "f32"  # the cpu profile's fallback for layers outside Q/DQ
    assert d["batch"] == [1, 32] == art.info["batch"]


@needs_openvino
def test_hint_and_threads_arguments_override_the_profile(r18_int8: tuple) -> None:
    out, art, _ = r18_int8
    d = OpenVINOBackend().load(out, art, threads=1, hint="throughput").describe()
    assert (d["performance_hint"], d["threads"]) == ("THROUGHPUT", 1)
    with pytest.raises(BackendError, match="performance hint"):
        OpenVINOBackend().load(out, art, hint="fastest")


@needs_openvino
def test_batches_beyond_the_profile_range_are_split(r18: dict, r18_int8: tuple) -> None:
    runner = r18_int8[2]
    x = r18["x"][:40]  # the cpu profile's max batch is 32
    whole = runner.infer(x)
    parts = np.concatenate([runner.infer(x[:32]), runner.infer(x[32:])])
    assert whole.shape == (40, 10)
    np.testing.assert_array_equal(whole, parts)
    with pytest.raises(BackendError, match="shape"):
        runner.infer(x[:, :, :16])


@needs_openvino
def test_infer_is_safe_from_several_threads(r18: dict, r18_int8: tuple) -> None:
    assert_thread_safe(r18_int8[2], [r18["x"][i * 8:(i + 1) * 8] for i in range(4)])


# ---------------------------------------------------------------------------------------------- errors


@needs_openvino
def test_build_checks_precision_against_the_graph(r18: dict, tmp_path: Path) -> None:
    backend, cpu = OpenVINOBackend(), get_target("cpu")
    with pytest.raises(BackendError, match="no QuantizeLinear"):
        backend.compile(r18["float"], cpu, tmp_path / "a", Precision.INT8)
    with pytest.raises(BackendError, match="Q/DQ graph"):
        backend.compile(r18["s8s8"], cpu, tmp_path / "b", Precision.FP32)
    with pytest.raises(BackendError, match="does not exist"):
        backend.compile(tmp_path / "missing.onnx", cpu, tmp_path / "c", Precision.FP32)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file" * 8)
    with pytest.raises(BackendError, match="cannot read ONNX"):
        backend.compile(tmp_path / "junk.onnx", cpu, tmp_path / "d", Precision.FP32)
    with pytest.raises(BackendError, match="no device called 'TPU'"):
        backend.compile(r18["float"], dataclasses.replace(cpu, device="TPU"), tmp_path / "e", Precision.FP32)


@needs_openvino
def test_missing_or_damaged_ir_files_are_a_backend_error(r18_int8: tuple, tmp_path: Path) -> None:
    src, art, _ = r18_int8
    backend = OpenVINOBackend()

    missing = _copy_bundle(src, tmp_path / "missing")
    (missing / "model.bin").unlink()
    with pytest.raises(BackendError, match="no OpenVINO bin file"):
        backend.load(missing, art)

    truncated = _copy_bundle(src, tmp_path / "truncated")
    data = (truncated / "model.bin").read_bytes()
    (truncated / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="truncated or modified"):
        backend.load(truncated, art)
    unrecorded = dataclasses.replace(art, info={k: v for k, v in art.info.items() if k != "file_bytes"})
    with pytest.raises(BackendError, match="cannot read model.xml") as err:  # OpenVINO's own check, wrapped
        backend.load(truncated, unrecorded)
    assert "Exception from" not in str(err.value)

    garbled = _copy_bundle(src, tmp_path / "garbled")
    xml = (garbled / "model.xml").read_bytes()
    (garbled / "model.xml").write_bytes(xml[:200] + b"\0" * (len(xml) - 200))  # same size, not XML any more
    with pytest.raises(BackendError, match="corrupt"):
        backend.load(garbled, art)


@needs_openvino
def test_an_absent_device_names_the_devices_that_are_present(r18_int8: tuple) -> None:
    import openvino

    available = openvino.Core().available_devices
    if any(d.startswith("NPU") for d in available):
        pytest.skip("this machine has an NPU")
    out, art, _ = r18_int8
    npu = dataclasses.replace(art, info={**art.info, "device": "NPU"})
    with pytest.raises(BackendError, match="'NPU' is not available") as err:
        OpenVINOBackend().load(out, npu)
    assert all(d in str(err.value) for d in available)


@needs_openvino
def test_building_for_an_absent_device_still_writes_the_ir(r18: dict, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import openvino

    if any(d.startswith("NPU") for d in openvino.Core().available_devices):
        pytest.skip("this machine has an NPU")
    with caplog.at_level(logging.WARNING):
        art = OpenVINOBackend().compile(r18["s8s8"], get_target("openvino-npu"), tmp_path, Precision.INT8)
    assert (tmp_path / "model.xml").is_file() and art.info["int8_convs"] is None
    assert art.info["batch"] == [1, 1] and art.info["inference_precision"] == "f16"
    assert "not on this machine" in caplog.text


# ------------------------------------------------------------------------------------ missing openvino


def test_module_imports_without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    spec = importlib.util.spec_from_file_location("_ov_backend_copy", ov_backend.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)  # must not import openvino at module level
    assert module.OpenVINOBackend().available() is False


def test_missing_openvino_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    backend = OpenVINOBackend()
    assert backend.available() is False
    with pytest.raises(BackendUnavailable, match="not installed") as err:
        backend.compile(tmp_path / "m.onnx", get_target("cpu"), tmp_path, Precision.INT8)
    assert "pip install" in str(err.value)


def test_failing_openvino_import_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("libopenvino.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    art = Artifact(OpenVINOBackend.name, Precision.INT8, {"xml": "model.xml", "bin": "model.bin"})
    with pytest.raises(BackendUnavailable, match="libopenvino.so"):
        OpenVINOBackend().load(tmp_path, art)
