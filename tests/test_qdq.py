"""The Q/DQ graph: placement, formats, ORT fusion, fidelity on real data, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cosine, cpu_config

from edge_resnet.data import open_dataset
from edge_resnet.graph.export import export_float_graph
from edge_resnet.models import build_model
from edge_resnet.quant.ptq import CalibrationOptions, calibrate, quantize, quantize_graph, run_onnx
from edge_resnet.quant.qdq import QuantConfig, count_int8_ops, insert_qdq, quantize_weights
from edge_resnet.types import ActivationFormat

S8, U8 = ActivationFormat.S8S8, ActivationFormat.U8S8


def _ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)


@pytest.fixture(scope="module")
def r50_random():
    """ResNet-50 with random weights at 64x64 and its statistics on 32 digits (structure tests)."""
    import torch

    torch.manual_seed(0)
    fg = export_float_graph(build_model("resnet50", num_classes=10).eval(), 64)
    from edge_resnet.train import DigitsRecipe

    spec = DigitsRecipe(input_size=64).spec()
    stats = calibrate(fg.model, open_dataset("digits:train", spec, count=32), QuantConfig(U8),
                      formats=(S8, U8), progress=False)
    return fg.model, stats


def test_weights_per_channel_symmetric():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4, 3, 3)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
    q, s = quantize_weights(w)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    np.testing.assert_allclose(s, np.abs(w).reshape(8, -1).max(1) / 127, rtol=1e-6)
    assert (np.abs(q).reshape(8, -1).max(1) == 127).all()  # each channel uses its full range
    np.testing.assert_allclose(q * s[:, None, None, None], w, atol=s.max() / 2 + 1e-7)


@pytest.mark.parametrize(("name", "convs", "adds"), [("resnet18", 20, 8), ("resnet50", 53, 16)])
def test_u8s8_every_conv_becomes_qlinearconv_in_ort(tmp_path, name, convs, adds, r50_random):
    import torch

    if name == "resnet50":
        model, stats = r50_random
    else:
        torch.manual_seed(0)
        model = export_float_graph(build_model(name, num_classes=10).eval(), 64).model
        from edge_resnet.train import DigitsRecipe

        stats = calibrate(model, open_dataset("digits:train", DigitsRecipe(input_size=64).spec(), count=32),
                          QuantConfig(U8), progress=False)
    qg = quantize_graph(model, stats, QuantConfig(U8))
    assert count_int8_ops(qg.model) == Counter({"Conv": convs, "Add": adds, "MaxPool": 1, "GlobalAveragePool": 1, "Gemm": 1})
    ops = _ort_optimized_ops(qg.model, tmp_path)
    assert ops["QLinearConv"] == convs and ops["Conv"] == 0 and ops["FusedConv"] == 0
    assert ops["QLinearAdd"] == adds and ops["Add"] == 0
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QGemm"] == 1


def test_s8s8_follows_tensorrt_placement(r50_random):
    """Inputs of convs quantized, outputs not; each residual Add has its identity input quantized
    and its conv-branch input straight from the conv (TensorRT fuses conv + add + relu)."""
    model, stats = r50_random
    q = quantize_graph(model, stats, QuantConfig(S8)).model
    producers = {o: n for n in q.graph.node for o in n.output}
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    adds = [n for n in q.graph.node if n.op_type == "Add"]
    assert len(adds) == 16
    requantized = []
    for node in q.graph.node:
        if node.op_type == "Conv":
            assert all(producers[i].op_type == "DequantizeLinear" for i in node.input[:2]), node.name
            assert len(node.input) < 3 or node.input[2] not in producers  # float bias
            if any(c.op_type == "QuantizeLinear" for c in consumers[node.output[0]]):
                requantized.append(node.name)
    for add in adds:
        kinds = sorted(producers[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], (add.name, kinds)
    # only the projection shortcuts are requantized: they are the residual input of their add
    assert requantized == [f"layer{i}.0.downsample.0" for i in (1, 2, 3, 4)]
    assert count_int8_ops(q) == Counter({"Conv": 53, "Add": 16, "MaxPool": 1, "GlobalAveragePool": 1, "Gemm": 1})
    zps = [i for i in q.graph.initializer if i.name.endswith("_zero_point") and not i.name.endswith("weight_zero_point")]
    assert zps and all(i.data_type == onnx.TensorProto.INT8 for i in zps)
    assert producers["logits"].op_type == "Gemm"  # the output stays float


def test_exclude_keeps_layers_float(r50_random):
    model, stats = r50_random
    qg = quantize_graph(model, stats, QuantConfig(S8, exclude=("conv1", "Gemm")))
    assert set(qg.report.kept_float) == {"conv1", "fc"}
    counts = count_int8_ops(qg.model)
    assert counts["Conv"] == 52 and counts["Gemm"] == 0
    weights = {i.name for i in qg.model.graph.initializer}
    assert "conv1.weight" in weights and "fc.weight" in weights  # still float initializers


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [S8, U8])
def test_fidelity_on_real_digits(digits_r18, fmt):
    """The issue's bar: >= 99.5% top-1 agreement and mean logit cosine >= 0.999 on digits:test (run by
    ONNX Runtime, whose fused u8s8 kernels need this host's weight range: see test_weight_range.py)."""
    calib = open_dataset("digits:train", digits_r18.spec, count=256)
    qg = quantize(digits_r18.float_graph, calib, cpu_config(fmt), progress=False)
    x, _ = digits_r18.arrays("test")
    ref, out = run_onnx(digits_r18.float_graph, x), run_onnx(qg.model, x)
    agreement = (ref.argmax(1) == out.argmax(1)).mean()
    assert agreement >= 0.995, agreement
    assert cosine(ref, out).mean() >= 0.999


@pytest.mark.slow
def test_quantized_model_really_quantizes(digits_r18):
    """Negative control: the Q/DQ model differs from float (it is not a pass-through) and a
    deliberately bad calibration (amax 100x too small) destroys fidelity."""
    calib = open_dataset("digits:train", digits_r18.spec, count=64)
    stats = calibrate(digits_r18.float_graph, calib, QuantConfig(S8), progress=False)
    qg = quantize_graph(digits_r18.float_graph, stats, QuantConfig(S8))
    x, _ = digits_r18.arrays("test", count=128)
    ref, out = run_onnx(digits_r18.float_graph, x), run_onnx(qg.model, x)
    assert not np.allclose(ref, out, atol=1e-5)
    amax = {t: a / 100 for t, a in stats.amax("minmax").items()}  # every range 100x too small
    bad, _ = insert_qdq(digits_r18.float_graph, amax, QuantConfig(S8))
    assert cosine(ref, run_onnx(bad, x)).mean() < 0.99


@pytest.mark.slow
def test_bit_for_bit_deterministic(digits_r18, tmp_path):
    paths = []
    for i in range(2):
        calib = open_dataset("digits:train", digits_r18.spec, count=96, seed=3)
        qg = quantize(digits_r18.float_graph, calib, QuantConfig(U8), CalibrationOptions(method="entropy"), progress=False)
        p = tmp_path / f"q{i}.onnx"
        p.write_bytes(qg.model.SerializeToString())
        paths.append(p)
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize("name", ["resnet18-v2", "resnet18"])
def test_every_reader_of_a_quantized_tensor_shares_its_dq(name, request):
    """Row 11 of issue 12: in v2 graphs the pre-activation BN (Mul/Add) of a block read the float tensor while the
    shortcut read it through a Q (maxpool, layer{1..4}.0.add). ModelOpt routes every consumer through the shared DQ
    (benchmarks/modelopt_compare.py compares the placements), so TensorRT can write int8 out of the producer."""
    import torch

    from edge_resnet.quant.collect import collect_statistics

    if name == "resnet18":  # v1.5: the session's trained graph will do
        model = request.getfixturevalue("digits_r18").float_graph
    else:
        torch.manual_seed(0)
        model = export_float_graph(build_model(name, num_classes=10).eval(), 32).model
    tensors = [model.graph.input[0].name] + [o for n in model.graph.node for o in n.output]
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    amax = collect_statistics(model, tensors, iter([x]), total_images=4, progress=False).amax("minmax")
    q, _ = insert_qdq(model, amax, QuantConfig(S8))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    float_readers = [(n.op_type, t) for n in q.graph.node if n.op_type != "QuantizeLinear"
                     for t in n.input if t in quantized]
    assert float_readers == []
    if name.endswith("v2"):  # an excluded layer keeps reading the float tensor
        # ResNet-18 v2's stem MaxPool feeds layer1.0's identity Add: a quantized neighbour, so it stays int8
        # (test_s8s8_leaves_a_pooling_op_between_float_ops_float_as_modelopt_does has the other case)
        stem = next(n for n in q.graph.node if n.op_type == "MaxPool")
        assert next(n for n in q.graph.node if stem.input[0] in n.output).op_type == "DequantizeLinear"
        first_bn_mul = next(n.name for n in model.graph.node if n.op_type == "Mul")
        q2, _ = insert_qdq(model, amax, QuantConfig(S8, exclude=(first_bn_mul,)))
        excluded = next(n for n in q2.graph.node if n.name == first_bn_mul)
        assert not any(i.endswith("_dequantized") for i in excluded.input)


def test_u8s8_fuse_residual_leaves_the_conv_branch_float_and_openvino_fuses_it(r50_random, tmp_path):
    """The `cpu` target's placement: U8S8 with no Q/DQ between a block's last conv and its Add. The
    identity input and the Add's output keep theirs, and OpenVINO still runs conv + add + relu + FQ
    as one int8 convolution (no Add/Eltwise layer left in the runtime graph)."""
    from edge_resnet.targets import get_target

    assert get_target("cpu").fuse_residual is True and get_target("onnxruntime").fuse_residual is None
    model, stats = r50_random
    q = quantize_graph(model, stats, QuantConfig(U8, fuse_residual=True)).model
    producers = {o: n for n in q.graph.node for o in n.output}
    adds = [n for n in q.graph.node if n.op_type == "Add"]
    assert len(adds) == 16
    for add in adds:
        assert sorted(producers[i].op_type for i in add.input) == ["Conv", "DequantizeLinear"], add.name
    assert count_int8_ops(q) == Counter({"Conv": 53, "Add": 16, "MaxPool": 1, "GlobalAveragePool": 1, "Gemm": 1})

    ov = pytest.importorskip("openvino")
    from edge_resnet.backends.openvino import runtime_layers

    path = tmp_path / "q.onnx"
    onnx.save(q, path)
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
    layers = runtime_layers(compiled, None)
    convs = [x for x in layers if x.layer_type == "Convolution"]
    assert len(convs) == 53 and all(x.runtime_precision in ("u8", "i8") for x in convs)
    fused_adds = {n for x in convs for n in x.original_layers.split(",") if n in {a.name for a in adds}}
    assert len(fused_adds) == 16
    assert not [x.name for x in layers if x.layer_type in ("Eltwise", "Add")]


def test_s8s8_leaves_a_pooling_op_between_float_ops_float_as_modelopt_does(digits_r18):
    """ResNet v2's stem is conv1 -> Pad -> MaxPool -> the first block's BN (Mul/Add): neither neighbour of
    the MaxPool is quantized, so ModelOpt (partitioning.find_quantizable_nodes) keeps it float, and so does
    our S8S8 (its input is the stem conv's raw output: wide and signed). v2's 1x1 MaxPool shortcuts read a
    quantized Add and stay int8; U8S8 quantizes the stem conv's output and keeps its MaxPool int8."""
    import torch

    from edge_resnet.quant.collect import collect_statistics

    torch.manual_seed(0)
    model = export_float_graph(build_model("resnet50-v2", num_classes=10).eval(), 32).model
    tensors = [model.graph.input[0].name] + [o for n in model.graph.node for o in n.output]
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    amax = collect_statistics(model, tensors, iter([x]), total_images=2, progress=False).amax("minmax")
    stem = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert next(n for n in model.graph.node if stem.input[0] in n.output).op_type == "Pad"
    for fmt, stem_int8 in ((S8, False), (U8, True)):
        q, _ = insert_qdq(model, amax, QuantConfig(fmt))
        producers = {o: n for n in q.graph.node for o in n.output}
        pools = [n for n in q.graph.node if n.op_type == "MaxPool"]
        assert len(pools) == 4  # the stem and three stride-2 shortcuts
        kinds = {n.name: producers[n.input[0]].op_type for n in pools}
        assert kinds.pop(stem.name) == ("DequantizeLinear" if stem_int8 else "Pad"), fmt
        assert set(kinds.values()) == {"DequantizeLinear"}, (fmt, kinds)
    v1 = digits_r18.float_graph  # conv -> ReLU -> MaxPool -> conv
    tensors = [v1.graph.input[0].name] + [o for n in v1.graph.node for o in n.output]
    size = v1.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    amax = collect_statistics(v1, tensors, iter([x]), total_images=2, progress=False).amax("minmax")
    assert count_int8_ops(insert_qdq(v1, amax, QuantConfig(S8))[0])["MaxPool"] == 1


def test_u8s8_quantizes_signed_tensors_asymmetrically_and_it_lowers_the_error(digits_r18, tmp_path):
    """U8S8's signed tensors (the input, convs feeding a residual Add) take the (lo, hi) range of their
    calibrator and its zero point, as ORT's quantize_static. On the calibration images each one's own
    quantization error is then at most that of zero point 128 with the amax of the same statistics: what
    mse minimises, read back from the graph. (On this model the logits' SQNR moves by a few hundredths of
    a dB either way with it, retraining to retraining, so it is not asserted: benchmarks/README.md's
    calibration matrix measures it per model.)"""
    import json

    from edge_resnet.quant.qdq import asymmetric_quantizer

    model = digits_r18.float_graph
    stats = calibrate(model, open_dataset("digits:train", digits_r18.spec, count=256), QuantConfig(U8), progress=False)
    qg = quantize_graph(model, stats, QuantConfig(U8))
    signed = [t for t in qg.ranges if t != model.graph.input[0].name]
    assert model.graph.input[0].name in qg.ranges and len(signed) >= 8  # the input and the convs before adds
    for t, (lo, hi) in qg.ranges.items():
        assert stats.hists[t].min <= lo < 0 < hi <= stats.hists[t].max or lo == 0
        assert qg.report.quantizers[t] == asymmetric_quantizer(lo, hi)
    assert {qg.report.quantizers[t][1] for t in signed} - {128}  # zero points of their own
    qg.save_scales(tmp_path / "scales.json")
    saved = json.loads((tmp_path / "scales.json").read_text())
    assert saved["ranges"].keys() == qg.ranges.keys() and saved["calibrators"][signed[0]]["asymmetric"] is True

    _, symmetric = insert_qdq(model, qg.amax, QuantConfig(U8))  # the same amax, no ranges: zero point 128
    x, _ = digits_r18.arrays("train", count=256)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in qg.ranges)
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    acts = dict(zip(qg.ranges, sess.run(None, {model.graph.input[0].name: x}), strict=True))

    def error(t: str, quantizer: tuple[float, int]) -> float:
        scale, zero = quantizer
        q = np.clip(np.rint(acts[t] / scale) + zero, 0, 255)
        return float(np.mean(((q - zero) * scale - acts[t]) ** 2))

    ours = {t: error(t, qg.report.quantizers[t]) for t in qg.ranges}
    at_128 = {t: error(t, symmetric.quantizers[t]) for t in qg.ranges}
    assert all(symmetric.quantizers[t][1] == 128 for t in qg.ranges if t != model.graph.input[0].name)
    # the conv outputs; the input is left out: digits' pixels take 17 values, which a histogram's error
    # (values spread within each bin) does not model, so mse's choice there can be a few % off either way
    assert all(ours[t] <= 1.01 * at_128[t] for t in signed), (ours, at_128)  # 1%: the histogram's bins
    assert sum(ours[t] for t in signed) < sum(at_128[t] for t in signed)
