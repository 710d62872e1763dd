"""Bias correction: its streamed statistics against direct computation, and its effect measured in
ONNX Runtime (graph optimizations off: the exact Q/DQ semantics)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.quant.bias_correction import BiasStats, ChannelHistogram, LayerGeometry, WindowMean
from edge_resnet.quant.collect import ActivationStats, collect_bias_statistics, collect_statistics
from edge_resnet.quant.ptq import CalibrationOptions, quantize_graph
from edge_resnet.quant.qdq import QuantConfig, required_tensors
from edge_resnet.types import ActivationFormat


def _run(model: onnx.ModelProto, x: np.ndarray, output: str | None = None) -> np.ndarray:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    if output is not None:
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _two_convs(seed: int = 0, c: int = 8) -> onnx.ModelProto:
    """input -> Conv(3x3, pad 1) -> Relu -> Conv(3x3, stride 2, pad 1) -> output: the second conv's
    input is a heavy-tailed ReLU output, so clipping its quantizer shifts the output mean."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((c, 3, 3, 3)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal(c) * 0.5 + 1.5).astype(np.float32)  # O(1), as BN-folded biases
    w2 = (rng.standard_normal((c, c, 3, 3)) * 0.3 + 0.05).astype(np.float32)  # mean > 0: clipping shows
    b2 = (rng.standard_normal(c) + 2.0).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["output"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 24, 24])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.laplace(size=(n, 3, 24, 24)).astype(np.float32)


def test_window_mean_gives_the_exact_mean_conv_output() -> None:
    model = _two_convs()
    x = _inputs(24)
    r1 = _run(model, x, "r1")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    window = WindowMean(LayerGeometry.of(conv2, inits["w2"]))
    for part in np.array_split(r1, 5):
        window.update(part)
    predicted = np.einsum("oikl,ikl->o", inits["w2"].astype(np.float64), window.mean()) + inits["b2"]
    measured = _run(model, x).astype(np.float64).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(predicted, measured, rtol=1e-5, atol=1e-5)


def test_channel_histogram_streams_exactly_and_gives_the_clipping_error() -> None:
    rng = np.random.default_rng(3)
    batches = [(rng.laplace(size=(4, 5, 6, 6)) * s).astype(np.float32) for s in (1.0, 4.0, 0.5)]
    streamed, once = ChannelHistogram(5), ChannelHistogram(5)
    for b in batches:
        streamed.update(b)
    once.update(np.concatenate(batches))
    assert np.array_equal(streamed.counts, once.counts) and streamed.exponent == once.exponent
    x = np.concatenate(batches).astype(np.float64)
    lo, hi = -3.0, 2.0
    exact = (np.clip(x, lo, hi) - x).mean(axis=(0, 2, 3))
    # values taken uniform inside bins of width <= max|x| / 64
    np.testing.assert_allclose(streamed.clip_error_mean(lo, hi), exact, atol=0.01 * np.abs(exact).max())


@pytest.mark.parametrize("fmt", ["s8s8", "u8s8"])
def test_bias_correction_removes_the_mean_shift_of_clipping(fmt: str) -> None:
    model = _two_convs()
    calib, held_out = _inputs(128, seed=1), _inputs(128, seed=2)
    config = QuantConfig(ActivationFormat(fmt))
    batches = (calib[i: i + 16] for i in range(0, len(calib), 16))
    stats = collect_statistics(model, required_tensors(model, config), batches, progress=False, bias_correction=True)
    ref = _run(model, held_out).astype(np.float64)

    def mean_shift(bias_correction: bool) -> tuple[float, dict | None]:
        options = CalibrationOptions(method="percentile", percentile=99.99, bias_correction=bias_correction)
        qg = quantize_graph(model, stats, config, options)
        out = _run(qg.model, held_out).astype(np.float64)
        return float(np.abs((out - ref).mean(axis=(0, 2, 3))).max()), qg.bias_correction

    without, record_off = mean_shift(False)
    with_bc, record_on = mean_shift(True)
    assert record_off is None and record_on is not None and record_on["corrected"] >= 1
    assert with_bc < 0.3 * without  # on images it was not computed on


def test_bias_statistics_come_from_the_first_images_and_a_separate_pass_gives_the_same(monkeypatch) -> None:
    """Bias correction streams only the first BIAS_IMAGES images (here 40 of 96, batches of 16: the
    third batch is cut), and collect_bias_statistics (the Ray path: histograms from the cluster, bias
    statistics on the driver) gives the one-pass graph byte for byte."""
    import edge_resnet.quant.collect as collect

    monkeypatch.setattr(collect, "BIAS_IMAGES", 40)
    model = _two_convs()
    calib = _inputs(96, seed=3)
    config = QuantConfig(ActivationFormat.U8S8)
    tensors = required_tensors(model, config)

    def batches(x: np.ndarray):
        return (x[i: i + 16] for i in range(0, len(x), 16))

    one_pass = collect_statistics(model, tensors, batches(calib), progress=False, bias_correction=True)
    first_40 = collect_statistics(model, tensors, batches(calib[:40]), progress=False, bias_correction=True)
    assert one_pass.images == 96 and one_pass.bias is not None and first_40.bias is not None
    for layer, window in one_pass.bias.windows.items():
        assert window.positions == first_40.bias.windows[layer].positions
        np.testing.assert_array_equal(window.sums, first_40.bias.windows[layer].sums)
    for t, ch in one_pass.bias.channels.items():
        np.testing.assert_array_equal(ch.counts, first_40.bias.channels[t].counts)
    plain = collect_statistics(model, tensors, batches(calib), progress=False)
    separate = ActivationStats(plain.hists, plain.images, 0.0,
                               collect_bias_statistics(model, tensors, batches(calib), plain.hists))
    options = CalibrationOptions(bias_correction=True)
    graphs = [quantize_graph(model, st, config, options) for st in (one_pass, separate)]
    assert graphs[0].bias_correction["corrected"] >= 1
    assert graphs[0].model.SerializeToString() == graphs[1].model.SerializeToString()


def test_plan_covers_convs_and_gemm_with_bias(digits_r18) -> None:
    plan = BiasStats.plan(digits_r18.float_graph)
    ops = {n.name: n.op_type for n in digits_r18.float_graph.graph.node}
    assert {ops[name] for name in plan.windows} == {"Conv", "Gemm"}
    assert len(plan.windows) == sum(1 for op in ops.values() if op in ("Conv", "Gemm"))


def test_bias_correction_is_recorded_in_scales_json(tmp_path, digits_r18) -> None:
    model = digits_r18.float_graph
    x, _ = digits_r18.arrays("train", 64)
    config = QuantConfig(ActivationFormat.S8S8)
    stats = collect_statistics(model, required_tensors(model, config), [x[:32], x[32:]], progress=False, bias_correction=True)
    qg = quantize_graph(model, stats, config, CalibrationOptions(bias_correction=True))
    qg.save_scales(tmp_path / "scales.json")
    saved = json.loads((tmp_path / "scales.json").read_text())
    assert saved["bias_correction"]["corrected"] > 0
    # statistics without the bias part: skipped, and said so
    plain = collect_statistics(model, required_tensors(model, config), [x], progress=False)
    assert quantize_graph(model, plain, config, CalibrationOptions(bias_correction=True)).bias_correction["corrected"] == 0


@pytest.mark.parametrize("flag", ["--bias-correction", "--no-bias-correction"])
def test_quantize_command_switch(tmp_path, digits_r18, flag: str) -> None:
    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    model = tmp_path / "float.onnx"
    onnx.save(digits_r18.float_graph, str(model))
    out, scales = tmp_path / "int8.onnx", tmp_path / "scales.json"
    r = CliRunner().invoke(cli, ["quantize", str(model), "--calib", "digits:train", "--calib-count", "32", flag,
                                 "--scales", str(scales), "-o", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(scales.read_text())["bias_correction"]
    if flag == "--bias-correction":
        assert record["corrected"] > 0 and "bias correction:" in r.output
    else:
        assert record is None


@pytest.mark.slow
def test_compile_records_bias_correction_in_the_manifest(tmp_path, digits_r18, cache_dir) -> None:
    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    out = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["compile", "--model", "resnet18", "--num-classes", "10", "--weights", str(digits_r18.checkpoint),
                                 "--input-size", "32", "--resize", "32", "--target", "onnxruntime", "--calib", "digits:train",
                                 "--calib-count", "32", "--bias-correction", "-o", str(out)],
                             env={"EDGE_RESNET_CACHE": str(cache_dir)})
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["bias_correction"] is True and manifest["calibration"]["method"] == "mse"
    assert manifest["quantization"]["bias_correction"]["corrected"] > 0
    assert json.loads((out / "scales.json").read_text())["bias_correction"]["corrected"] > 0
