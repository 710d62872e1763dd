"""ONNX Runtime backend: after ORT's graph optimisation every Conv of a U8S8 Q/DQ ResNet-18/50 is a QLinearConv
and every residual Add a QLinearAdd; the runner is bitwise ONNX Runtime itself and close to the float model;
concurrent inference; clear errors for a missing library and damaged files."""

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
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.backends import onnxruntime as ort_backend
from edge_resnet.backends.base import Artifact, get_backend
from edge_resnet.backends.onnxruntime import OnnxRuntimeBackend, op_counts
from edge_resnet.errors import BackendError, BackendUnavailable
from edge_resnet.targets import get_target
from edge_resnet.types import ActivationFormat, Precision

log = logging.getLogger(__name__)

N_TEST = 256
THREADS = 2


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def r18(digits_r18: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return r18_qdq_files(digits_r18, tmp_path_factory, ActivationFormat.U8S8, N_TEST, THREADS)


@pytest.fixture(scope="module")
def r50_u8s8(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return r50_qdq_files(tmp_path_factory, ActivationFormat.U8S8)


def _build(onnx_path: Path, out_dir: Path, precision: Precision) -> Artifact:
    art = get_backend("onnxruntime").compile(onnx_path, get_target("onnxruntime"), out_dir, precision)
    return Artifact.from_dict(art.to_dict())  # as a bundle manifest would hand it back


@pytest.fixture(scope="module")
def r18_int8(r18: dict) -> tuple[Path, Artifact, ort_backend.OnnxRuntimeRunner]:
    out = r18["dir"] / "int8"
    art = _build(r18["u8s8"], out, Precision.INT8)
    return out, art, OnnxRuntimeBackend().load(out, art, threads=THREADS)


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _tiny_qdq(path: Path, act_dtype: int, output_qdq: bool = True) -> Path:
    """input -> Q/DQ -> Conv(DQ int8 weight) [-> Q/DQ] -> output, with uint8 or int8 activations.

    Without ``output_qdq`` it is placed like edge-resnet's s8s8 format: Q/DQ on the conv's input only."""
    rng = np.random.default_rng(0)
    zp = numpy_helper.from_array(np.array(128 if act_dtype == TensorProto.UINT8 else 0,
                                          helper.tensor_dtype_to_np_dtype(act_dtype)), "zp")
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"), zp,
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "s", "zp"], ["x"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["x", "w"], ["y" if output_qdq else "out"], pads=[1, 1, 1, 1]),
    ]
    if output_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["y", "s", "zp"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "s", "zp"], ["out"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


# -------------------------------------------------------------------------------------------- fusion


@pytest.mark.slow
@pytest.mark.parametrize(("model", "n_convs", "n_adds"), [("resnet18", 20, 8), ("resnet50", 53, 16)])
def test_every_conv_becomes_qlinearconv_and_every_residual_add_qlinearadd(
        model: str, n_convs: int, n_adds: int, request: pytest.FixtureRequest) -> None:
    if model == "resnet18":
        out, art = request.getfixturevalue("r18_int8")[:2]
        src = request.getfixturevalue("r18")["u8s8"]
    else:
        r50 = request.getfixturevalue("r50_u8s8")
        src, out = r50["u8s8"], r50["dir"] / "int8"
        art = _build(src, out, Precision.INT8)
    before = Counter(n.op_type for n in onnx.load(str(src)).graph.node)
    assert (before["Conv"], before["Add"]) == (n_convs, n_adds)
    after = op_counts(out / art.files["optimized"])  # counted again from the file, not trusted from info
    log.info("%s after ORT optimisation: %s", model, dict(after))
    assert after["QLinearConv"] == n_convs
    assert after["Conv"] == after["FusedConv"] == 0
    assert after["QLinearAdd"] == n_adds and after["Add"] == 0
    assert (art.info["qlinearconv"], art.info["convs"], art.info["qlinearadd"]) == (n_convs, n_convs, n_adds)
    assert art.info["activation_format"] == "u8s8"


@pytest.mark.slow
def test_the_saved_optimized_model_is_portable(r18_int8: tuple) -> None:
    """ORT_ENABLE_EXTENDED: no NCHWc/NHWC layout rewrites tied to this machine's CPU."""
    out, art, _ = r18_int8
    nodes = onnx.load(str(out / art.files["optimized"])).graph.node
    assert not [n.op_type for n in nodes if n.domain == "com.microsoft.nchwc"]
    assert not [n.op_type for n in nodes if n.op_type in ("Transpose", "NhwcMaxPool")]
    assert art.info["optimized_level"] == "ORT_ENABLE_EXTENDED"


# -------------------------------------------------------------------------------------------- accuracy


@pytest.mark.slow
def test_runner_is_bitwise_onnxruntime_on_the_same_model(r18: dict, r18_int8: tuple) -> None:
    import onnxruntime as ort

    out, art, runner = r18_int8
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    direct = ort.InferenceSession(str(out / art.files["model"]), so, providers=["CPUExecutionProvider"])
    x = r18["x"]
    expected = direct.run(None, {direct.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(runner.infer(x), expected)


@pytest.mark.slow
def test_int8_runner_is_close_to_the_float_model(r18: dict, r18_int8: tuple) -> None:
    y, ref = r18_int8[2].infer(r18["x"]), r18["ref"]
    cos = cosine(y, ref)
    agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
    log.info("ORT int8 vs float: cosine mean %.5f min %.5f, top-1 agreement %.4f", cos.mean(), cos.min(), agree)
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert cos.mean() >= 0.999
    assert agree >= 0.99


@pytest.mark.slow
def test_fp32_artifact_is_the_float_model(r18: dict, tmp_path: Path) -> None:
    art = _build(r18["float"], tmp_path, Precision.FP32)
    assert (art.info["qlinearconv"], art.info["convs"], art.info["activation_format"]) == (0, 20, None)
    y = OnnxRuntimeBackend().load(tmp_path, art, threads=THREADS).infer(r18["x"][:64])
    np.testing.assert_allclose(y, r18["ref"][:64], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- runner behaviour


def test_threads_come_from_the_argument_or_the_profile(r18_int8: tuple) -> None:
    out, art, runner = r18_int8
    assert runner.describe()["intra_op_num_threads"] == THREADS
    assert runner.describe()["inter_op_num_threads"] == 1
    profiled = dataclasses.replace(art, info={**art.info, "threads": 1})
    assert OnnxRuntimeBackend().load(out, profiled).describe()["intra_op_num_threads"] == 1


def test_infer_is_safe_from_several_threads(r18: dict, r18_int8: tuple) -> None:
    assert_thread_safe(r18_int8[2], [r18["x"][i * 8:(i + 1) * 8] for i in range(4)])


def test_wrong_input_shape_is_a_backend_error(r18: dict, r18_int8: tuple) -> None:
    with pytest.raises(BackendError, match="shape"):
        r18_int8[2].infer(r18["x"][:2, :, :16])


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("act_dtype", "output_qdq", "fused"), [
    (TensorProto.UINT8, True, 1),  # edge-resnet's u8s8 placement
    (TensorProto.INT8, False, 0),  # edge-resnet's s8s8 placement: no Q after the conv, no fusion
    (TensorProto.INT8, True, 1),  # the Q after the conv decides, not the activation type
])
def test_qlinearconv_fusion_needs_a_quantize_after_the_conv(act_dtype: int, output_qdq: bool, fused: int,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        art = _build(_tiny_qdq(tmp_path / "m.onnx", act_dtype, output_qdq), tmp_path / "out", Precision.INT8)
    fmt = "u8s8" if act_dtype == TensorProto.UINT8 else "s8s8"
    assert (art.info["qlinearconv"], art.info["convs"], art.info["activation_format"]) == (fused, 1, fmt)
    assert ("run in float" in caplog.text) == (not fused)
    if not fused:
        assert "activation_format u8s8" in caplog.text and "s8s8 graph" in caplog.text


def test_build_checks_precision_against_the_graph(tmp_path: Path) -> None:
    backend, target = OnnxRuntimeBackend(), get_target("onnxruntime")
    qdq = _tiny_qdq(tmp_path / "q.onnx", TensorProto.UINT8)
    with pytest.raises(BackendError, match="no FP16 path"):
        backend.compile(qdq, target, tmp_path / "a", Precision.FP16)
    with pytest.raises(BackendError, match="Q/DQ graph"):
        backend.compile(qdq, target, tmp_path / "b", Precision.FP32)
    with pytest.raises(BackendError, match="does not exist"):
        backend.compile(tmp_path / "missing.onnx", target, tmp_path / "c", Precision.INT8)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file" * 8)
    with pytest.raises(BackendError, match="cannot read ONNX"):
        backend.compile(tmp_path / "junk.onnx", target, tmp_path / "d", Precision.INT8)


def test_missing_or_damaged_model_is_a_backend_error(tmp_path: Path) -> None:
    src = tmp_path / "bundle"
    art = _build(_tiny_qdq(tmp_path / "q.onnx", TensorProto.UINT8), src, Precision.INT8)
    backend = OnnxRuntimeBackend()

    missing = _copy_bundle(src, tmp_path / "missing")
    (missing / "model.onnx").unlink()
    with pytest.raises(BackendError, match="no ONNX Runtime model file"):
        backend.load(missing, art)

    truncated = _copy_bundle(src, tmp_path / "truncated")
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="truncated or modified"):
        backend.load(truncated, art)
    unrecorded = dataclasses.replace(art, info={k: v for k, v in art.info.items() if k != "file_bytes"})
    with pytest.raises(BackendError, match="cannot load") as err:  # ORT's own error, wrapped
        backend.load(truncated, unrecorded)
    assert "fix:" in str(err.value)


# ---------------------------------------------------------------------------------- missing onnxruntime


def test_module_imports_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    spec = importlib.util.spec_from_file_location("_ort_backend_copy", ort_backend.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    assert module.OnnxRuntimeBackend().available() is False


def test_missing_onnxruntime_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    backend = OnnxRuntimeBackend()
    assert backend.available() is False
    with pytest.raises(BackendUnavailable, match="not installed") as err:
        backend.compile(tmp_path / "m.onnx", get_target("onnxruntime"), tmp_path, Precision.INT8)
    assert "pip install" in str(err.value)


def test_failing_onnxruntime_import_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("libonnxruntime.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    art = Artifact(OnnxRuntimeBackend.name, Precision.INT8, {"model": "model.onnx"})
    with pytest.raises(BackendUnavailable, match="libonnxruntime.so"):
        OnnxRuntimeBackend().load(tmp_path, art)
