"""Graphs from other exporters enter the canonical form exactly: decomposed BatchNorm, explicit Pads, no-op
Casts, MatMul + Add heads, NHWC layouts, opset 11; the head kind is read from the structure.

Every rewritten graph is compared with ONNX Runtime on the *original* graph (the passes check
themselves too; these tests do not trust that)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.cli.app import cli
from edge_resnet.errors import GraphError
from edge_resnet.graph.head import HeadKind
from edge_resnet.graph.load import load_onnx
from edge_resnet.graph.prepare import prepare_float_graph

RNG = np.random.default_rng(0)
C = 8  # channels of the toy graphs
H = 12


# ------------------------------------------------------------------------------------------------ helpers


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32) if np.asarray(value).dtype.kind == "f"
                                   else np.asarray(value), name)


def conv_w(cout: int, cin: int, k: int = 3) -> np.ndarray:
    return RNG.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32)


def model_of(nodes: list, inits: list, out_name: str = "y", out_shape=None, in_shape=("N", 3, H, H), opset: int = 17,
             in_name: str = "x", more_inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(in_shape)) for n in (in_name, *more_inputs)]
    g = helper.make_graph(nodes, "toy", inputs,
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)  # the output's shape, as an exporter writes it
    onnx.checker.check_model(m, full_check=True)
    return m


def save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, path)
    return path


def run(m: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m)
    s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def ops(m: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in m.graph.node)


def prepared(m: onnx.ModelProto, tmp_path: Path, head: str | None = None):
    """prepare_float_graph on the graph as load_onnx reads it from a file (as compile does)."""
    return prepare_float_graph(load_onnx(save(m, tmp_path / "in.onnx")), head=head)


def x_nchw(n: int = 3) -> np.ndarray:
    return RNG.standard_normal((n, 3, H, H)).astype(np.float32)


def head_nodes(src: str, classes: int = 5, out: str = "y", matmul: bool = False) -> tuple[list, list]:
    """GlobalAveragePool -> Flatten -> dense (Gemm, or MatMul + Add)."""
    w = RNG.normal(0, 0.3, (C, classes)).astype(np.float32)
    b = RNG.normal(0, 0.3, classes).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", [src], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"])]
    if matmul:
        nodes += [helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]), helper.make_node("Add", ["mm", "fc_b"], [out])]
    else:
        nodes += [helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], [out])]
    return nodes, [const("fc_w", w), const("fc_b", b)]


def decomposed_bn(src: str, out: str, prefix: str, with_div: bool = False) -> tuple[list, list]:
    """(x - mean) * gamma / sqrt(var + eps) + beta, as Keras and tf2onnx write an inference BatchNorm."""
    mean, beta = RNG.normal(0, 0.5, (1, C, 1, 1)), RNG.normal(0, 0.5, (1, C, 1, 1))
    gamma, var = RNG.uniform(0.5, 1.5, (1, C, 1, 1)), RNG.uniform(0.5, 2, (1, C, 1, 1))
    nodes = [helper.make_node("Sub", [src, f"{prefix}_mean"], [f"{prefix}_c"])]
    inits = [const(f"{prefix}_mean", mean), const(f"{prefix}_beta", beta)]
    if with_div:
        nodes += [helper.make_node("Div", [f"{prefix}_c", f"{prefix}_std"], [f"{prefix}_n"]),
                  helper.make_node("Mul", [f"{prefix}_n", f"{prefix}_gamma"], [f"{prefix}_s"])]
        inits += [const(f"{prefix}_std", np.sqrt(var + 1e-3)), const(f"{prefix}_gamma", gamma)]
    else:
        nodes += [helper.make_node("Mul", [f"{prefix}_c", f"{prefix}_scale"], [f"{prefix}_s"])]
        inits += [const(f"{prefix}_scale", gamma / np.sqrt(var + 1e-3))]
    nodes += [helper.make_node("Add", [f"{prefix}_s", f"{prefix}_beta"], [out])]
    return nodes, inits


# ------------------------------------------------------------------------------------- decomposed BatchNorm


@pytest.mark.parametrize("with_div", [False, True])
def test_decomposed_batchnorm_after_a_conv_is_folded_into_it(tmp_path: Path, with_div: bool) -> None:
    bn1, i1 = decomposed_bn("c1", "b1", "bn1", with_div)
    bn2, i2 = decomposed_bn("c2", "b2", "bn2", with_div)
    head, ih = head_nodes("r2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), *bn1, helper.make_node("Relu", ["b1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "cb2"], ["c2"], pads=[1, 1, 1, 1]), *bn2,
             helper.make_node("Relu", ["b2"], ["r2"]), *head]
    m = model_of(nodes, [const("w1", conv_w(C, 3)), const("w2", conv_w(C, C)), const("cb2", RNG.normal(0, 1, C)), *i1, *i2, *ih])
    fg = prepared(m, tmp_path)
    assert ops(fg.model) == Counter({"Conv": 2, "Relu": 2, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-5
    assert any("decomposed BatchNorm" in c for s in fg.canon.steps for c in s.changes)


def test_decomposed_batchnorm_after_a_residual_add_becomes_one_mul_and_add(tmp_path: Path) -> None:
    """Pre-activation blocks: BN after the residual Add has no conv to fold into; it stays per channel."""
    bn, ib = decomposed_bn("sum", "b", "bn", with_div=True)
    head, ih = head_nodes("r")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c2", "r1"], ["sum"]),
             *bn, helper.make_node("Relu", ["b"], ["r"]), *head]
    m = model_of(nodes, [const("w1", conv_w(C, 3)), const("w2", conv_w(C, C)), *ib, *ih])
    fg = prepared(m, tmp_path)
    assert ops(fg.model) == Counter({"Conv": 2, "Relu": 2, "Add": 2, "Mul": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-5


# ---------------------------------------------------------------------------------------------- Pad


def test_explicit_zero_pad_before_a_conv_goes_into_its_pads(tmp_path: Path) -> None:
    pads = const("pads", np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64))
    head, ih = head_nodes("r")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]), *head]
    m = model_of(nodes, [pads, const("w", conv_w(C, 3, 7)), *ih])
    fg = prepared(m, tmp_path)
    assert ops(fg.model)["Pad"] == 0
    conv = next(n for n in fg.model.graph.node if n.op_type == "Conv")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [3, 2, 2, 3]
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-6


@pytest.mark.parametrize(("mode", "value"), [("constant", 1.0), ("reflect", None)])
def test_a_pad_that_is_not_zeros_stays(tmp_path: Path, mode: str, value: float | None) -> None:
    inits = [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]
    pad_in = ["x", "pads"]
    if value is not None:
        inits.append(const("v", np.array(value, np.float32)))
        pad_in.append("v")
    head, ih = head_nodes("r")
    nodes = [helper.make_node("Pad", pad_in, ["p"], mode=mode), helper.make_node("Conv", ["p", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]), *head]
    m = model_of(nodes, [*inits, const("w", conv_w(C, 3)), *ih])
    fg = prepared(m, tmp_path)
    assert ops(fg.model)["Pad"] == 1
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-6


def _pad_pool(pre: str) -> onnx.ModelProto:
    """conv [-> relu] -> Pad(1, zeros) -> MaxPool 3x3/2 -> head."""
    head, ih = head_nodes("mp")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    src = "c"
    if pre == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        src = "r"
    nodes += [helper.make_node("Pad", [src, "pads"], ["p"], mode="constant"),
              helper.make_node("MaxPool", ["p"], ["mp"], kernel_shape=[3, 3], strides=[2, 2]), *head]
    # a strongly negative bias: whole pool windows at the border see only negative values
    return model_of(nodes, [const("w", conv_w(C, 3)), const("b", np.full(C, -3.0)),
                            const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), *ih])


def test_zero_pad_before_maxpool_is_merged_only_after_a_relu(tmp_path: Path) -> None:
    x = x_nchw()
    after_relu = _pad_pool("relu")
    fg = prepared(after_relu, tmp_path)
    assert ops(fg.model)["Pad"] == 0
    pool = next(n for n in fg.model.graph.node if n.op_type == "MaxPool")
    assert list(next(a for a in pool.attribute if a.name == "pads").ints) == [1, 1, 1, 1]
    assert rel(run(fg.model, x), run(after_relu, x)) < 1e-6

    signed = _pad_pool("none")  # Keras ResNetV2's stem: the pool's input can be negative
    fg = prepared(signed, tmp_path)
    assert ops(fg.model)["Pad"] == 1
    assert any("kept Pad before MaxPool" in n for s in fg.canon.steps for n in s.notes)
    assert rel(run(fg.model, x), run(signed, x)) < 1e-6


def test_merging_a_zero_pad_into_maxpool_would_be_wrong_on_signed_inputs() -> None:
    """Why the pass above checks the sign: MaxPool pads with -inf, the explicit Pad with zeros."""
    signed = _pad_pool("none")
    naive = onnx.ModelProto()
    naive.CopyFrom(signed)
    pad = next(n for n in naive.graph.node if n.op_type == "Pad")
    pool = next(n for n in naive.graph.node if n.op_type == "MaxPool")
    pool.input[0] = pad.input[0]
    pool.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    naive.graph.node.remove(pad)
    x = x_nchw()
    assert rel(run(naive, x), run(signed, x)) > 1e-2


# ---------------------------------------------------------------------------------------------- Cast


def test_casts_that_do_nothing_are_dropped_and_real_casts_stay(tmp_path: Path) -> None:
    head, ih = head_nodes("r2")
    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT), helper.make_node("Identity", ["xc"], ["xi"]),
             helper.make_node("Conv", ["xi", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["c1"], ["c1c"], to=TensorProto.FLOAT), helper.make_node("Relu", ["c1c"], ["r1"]),
             # float -> float16 -> float rounds: not a no-op, must stay
             helper.make_node("Cast", ["r1"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Cast", ["h"], ["r1f"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["r1f", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]), *head]
    m = model_of(nodes, [const("w1", conv_w(C, 3)), const("w2", conv_w(C, C)), *ih])
    fg = prepared(m, tmp_path)
    assert ops(fg.model)["Identity"] == 0
    assert sorted(helper.get_attribute_value(a) for n in fg.model.graph.node if n.op_type == "Cast" for a in n.attribute) == [
        TensorProto.FLOAT, TensorProto.FLOAT16]
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-6


# ------------------------------------------------------------------------------------ heads and their kind


def _body() -> tuple[list, list]:
    return ([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])],
            [const("w", conv_w(C, 3))])


@pytest.mark.parametrize("name", ["prob", "output", "4057"])
def test_a_matmul_add_head_becomes_a_gemm_classifier_whatever_its_output_is_called(tmp_path: Path, name: str) -> None:
    body, ib = _body()
    head, ih = head_nodes("r", out=name, matmul=True)
    m = model_of(body + head, ib + ih, out_name=name)
    fg = prepared(m, tmp_path)
    assert fg.kind is HeadKind.CLASSIFIER and fg.output_name == "logits"
    assert ops(fg.model)["Gemm"] == 1 and ops(fg.model)["MatMul"] == 0
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-6


def test_a_trailing_softmax_is_removed_and_the_output_is_logits(tmp_path: Path) -> None:
    body, ib = _body()
    head, ih = head_nodes("r", out="fc")
    m = model_of(body + head + [helper.make_node("Softmax", ["fc"], ["prob"], axis=1)], ib + ih, out_name="prob")
    fg = prepared(m, tmp_path)
    assert fg.kind is HeadKind.CLASSIFIER and ops(fg.model)["Softmax"] == 0
    x = x_nchw()
    logits, prob = run(fg.model, x), run(m, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert rel(e / e.sum(1, keepdims=True), prob) < 1e-6


@pytest.mark.parametrize("keepdims", [1, 0])
def test_global_pooling_without_a_dense_layer_is_an_embedding(tmp_path: Path, keepdims: int) -> None:
    """ReduceMean over H, W (keepdims or not, as Keras writes it) -> GlobalAveragePool + Flatten, kind embedding."""
    body, ib = _body()
    nodes = body + [helper.make_node("ReduceMean", ["r", "axes"], ["m"], keepdims=keepdims)]
    if keepdims:
        nodes.append(helper.make_node("Reshape", ["m", "shape"], ["emb"]))
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["emb"]))
    m = model_of(nodes, ib + [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
                              numpy_helper.from_array(np.array([-1, C], np.int64), "shape")], out_name="emb", opset=18)
    fg = prepared(m, tmp_path)
    assert fg.kind is HeadKind.EMBEDDING and fg.output_name == "features"
    assert ops(fg.model)["GlobalAveragePool"] == 1 and ops(fg.model)["Flatten"] == 1 and ops(fg.model)["ReduceMean"] == 0
    x = x_nchw()
    assert rel(run(fg.model, x), run(m, x)) < 1e-6


def test_a_rank_4_output_is_a_feature_map(tmp_path: Path) -> None:
    body, ib = _body()
    fg = prepared(model_of(body, ib, out_name="r"), tmp_path)
    assert fg.kind is HeadKind.FEATURE_MAP and fg.output_name == "features"


def test_head_override_where_the_ranks_agree_and_a_clear_error_where_they_do_not(tmp_path: Path) -> None:
    body, ib = _body()
    head, ih = head_nodes("r", out="prob")
    classifier = model_of(body + head, ib + ih, out_name="prob")
    fg = prepared(classifier, tmp_path, head="embedding")
    assert fg.kind is HeadKind.EMBEDDING and fg.output_name == "features"
    pooled = model_of(body + head[:2], ib, out_name="flat")  # a 1x1-conv classifier ends in pooling
    assert prepared(pooled, tmp_path, head="classifier").kind is HeadKind.CLASSIFIER
    feature_map = model_of(body, ib, out_name="r")
    with pytest.raises(GraphError) as exc:
        prepared(feature_map, tmp_path, head="classifier")
    assert str(exc.value).startswith("--head classifier contradicts the graph: its output 'r' is 4-D (N, C, H, W), "
                                     "computed by Relu, which makes it a feature-map model; a classifier has a 2-D output")
    with pytest.raises(GraphError, match="--head features contradicts the graph: its output 'prob' is 2-D and computed by "
                                         r"a dense layer \(Gemm\), which makes it a classifier"):
        prepared(classifier, tmp_path, head="features")


def test_several_outputs_are_refused(tmp_path: Path) -> None:
    body, ib = _body()
    head, ih = head_nodes("r", out="prob")
    m = model_of(body + head, ib + ih, out_name="prob")
    m.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", C, H, H]))
    with pytest.raises(GraphError, match=r"the graph has 2 outputs \('prob', 'r'\); expected one"):
        prepared(m, tmp_path)


# ------------------------------------------------------------------------------------------------ NHWC


def _tf2onnx_style(first_perm: tuple[int, ...] = (0, 3, 1, 2), pool: str = "ReduceMean") -> onnx.ModelProto:
    """An NHWC graph as tf2onnx writes one: Transposes around the NCHW convs, a real BatchNormalization,
    an NHWC elementwise op with a (C,) constant, Keras-style global pooling over axes [1, 2], MatMul + Add, Softmax."""
    g, b = RNG.uniform(0.5, 1.5, C), RNG.normal(0, 0.3, C)
    mean, var = RNG.normal(0, 0.3, C), RNG.uniform(0.5, 2, C)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=list(first_perm)),
             helper.make_node("Conv", ["xt", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["r1t"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["r1t", "nhwc_scale"], ["s"]),  # per channel in NHWC: a (C,) constant
             helper.make_node("Transpose", ["s"], ["st"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["st", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Transpose", ["r2"], ["r2t"], perm=[0, 2, 3, 1]),
             helper.make_node(pool, ["r2t"], ["gap"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["gap", "fc_w"], ["mm"]), helper.make_node("Add", ["mm", "fc_b"], ["fc"]),
             helper.make_node("Softmax", ["fc"], ["prob"], axis=-1)]
    inits = [const("w1", conv_w(C, 3)), const("g", g), const("b", b), const("mean", mean), const("var", var),
             const("nhwc_scale", RNG.uniform(0.5, 1.5, C)), const("w2", conv_w(C, C)), const("b2", RNG.normal(0, 0.3, C)),
             const("fc_w", RNG.normal(0, 0.3, (C, 5))), const("fc_b", RNG.normal(0, 0.3, 5))]
    return model_of(nodes, inits, out_name="prob", in_shape=("N", H, H, 3), opset=17)


@pytest.mark.parametrize(("pool", "global_pool"), [("ReduceMean", "GlobalAveragePool"), ("ReduceMax", "GlobalMaxPool")])
def test_an_nhwc_graph_becomes_plain_nchw_with_every_transpose_absorbed(tmp_path: Path, pool: str, global_pool: str) -> None:
    m = _tf2onnx_style(pool=pool)
    assert ops(m)["Transpose"] == 4
    fg = prepared(m, tmp_path)
    got = ops(fg.model)
    assert got["Transpose"] == 0 and got["BatchNormalization"] == 0 and got["Softmax"] == 0
    assert got == Counter({"Conv": 2, "Relu": 2, "Mul": 1, global_pool: 1, "Flatten": 1, "Gemm": 1})
    assert [d.dim_value or d.dim_param for d in fg.model.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, H, H]
    assert len(fg.fold.folded) == 1  # the BatchNormalization went through our verified fold, not ORT's
    assert fg.kind is HeadKind.CLASSIFIER and fg.output_name == "logits"
    x = RNG.standard_normal((3, H, H, 3)).astype(np.float32)
    logits, prob = run(fg.model, np.ascontiguousarray(x.transpose(0, 3, 1, 2))), run(m, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert rel(e / e.sum(1, keepdims=True), prob) < 1e-5
    text = str(fg.canon)
    assert "input 'x' [N, 12, 12, 3] (NHWC) -> [N, 3, 12, 12] (NCHW)" in text and "Transpose 6 -> 0" in text


def test_an_nhwc_feature_map_comes_out_nchw(tmp_path: Path) -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["fmap"], perm=[0, 2, 3, 1])]
    m = model_of(nodes, [const("w", conv_w(C, 3))], out_name="fmap", in_shape=("N", H, H, 3))
    fg = prepared(m, tmp_path)
    assert ops(fg.model) == Counter({"Conv": 1, "Relu": 1}) and fg.kind is HeadKind.FEATURE_MAP
    x = RNG.standard_normal((2, H, H, 3)).astype(np.float32)
    assert rel(run(fg.model, np.ascontiguousarray(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1), run(m, x)) < 1e-6


@pytest.mark.parametrize("perm", [(0, 3, 2, 1), None])
def test_a_channels_last_graph_with_an_odd_layout_inside_is_one_clear_error(tmp_path: Path, perm) -> None:
    if perm is not None:  # the input is transposed to (N, C, W, H), not NCHW
        m = _tf2onnx_style(perm)
    else:  # no Transpose at all: the Conv reads the NHWC tensor as if H were the channels
        head, ih = head_nodes("r")
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]), *head]
        m = model_of(nodes, [const("w", conv_w(C, H)), *ih], in_shape=("N", H, H, 3))
    path = save(m, tmp_path / "odd.onnx")
    r = CliRunner().invoke(cli, ["compile", "--onnx", str(path), "--target", "cpu", "--calib", "random",
                                 "-o", str(tmp_path / "b")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert ("error: the graph's input is channels-last [N, 12, 12, 3], but its inside does not follow one NHWC layout: "
            "1 Transpose(s) remain after rewriting it to NCHW") in r.output
    assert "fix: export the model with an NCHW input" in r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("case", "expected"), [
    ("two inputs", "has 2 inputs ('x' [N, 3, 12, 12], 'y' [N, 3, 12, 12]); expected exactly one 4-D image input"),
    ("tokens", "input 'x' of {p} is 2-D with shape [N, 16]; expected a 4-D image input (N, C, H, W)"),
    ("no conv", "the graph has no convolution (its ops: GlobalAveragePool, Relu); expected a ResNet-like image model"),
])
def test_a_graph_that_is_not_a_resnet_like_image_model_is_one_clear_error(tmp_path: Path, case: str, expected: str) -> None:
    if case == "two inputs":
        m = model_of([helper.make_node("Add", ["x", "y"], ["s"]), helper.make_node("Conv", ["s", "w"], ["c"])],
                     [const("w", conv_w(C, 3))], out_name="c", more_inputs=("y",))
    elif case == "tokens":
        m = model_of([helper.make_node("MatMul", ["x", "e"], ["y"])], [const("e", RNG.normal(0, 1, (16, 4)))],
                     in_shape=("N", 16))
    else:
        m = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])], [])
    path = save(m, tmp_path / "m.onnx")
    r = CliRunner().invoke(cli, ["fold-bn", str(path), "-o", str(tmp_path / "out.onnx")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert expected.format(p=path) in r.output
    assert r.output.count("error:") == 1 and not (tmp_path / "out.onnx").exists()


# ------------------------------------------------------------------------------------------- opset 11


def _legacy_export(model, path: Path, opset: int, output: str = "logits", size: int = 32) -> Path:
    """torch's TorchScript exporter (dynamo=False), as older tools and torchvision tutorials export."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=[output], dynamic_axes={"input": {0: "N"}, output: {0: "N"}},
                          training=torch.onnx.TrainingMode.PRESERVE)  # keeps the BatchNormalization nodes
    return path


@pytest.mark.slow
def test_an_opset_11_graph_quantizes_to_a_graph_the_full_checker_accepts(tmp_path: Path) -> None:
    import torch

    from edge_resnet.models import build_model

    torch.manual_seed(0)
    src = _legacy_export(build_model("resnet18", num_classes=10), tmp_path / "r18-opset11.onnx", 11)
    original = onnx.load(str(src))
    assert original.opset_import[0].version == 11 and ops(original)["BatchNormalization"] == 20
    out = tmp_path / "r18.int8.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(src), "--calib", "digits:train", "--calib-count", "32",
                                 "--input-size", "32", "--resize", "32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "opset 11 -> 13 (onnx.version_converter)" in r.output
    assert "folded 20 BatchNormalization into Conv" in r.output
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 13
    per_channel = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) >= 21  # every conv weight and the fc weight, per output channel
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert run(q, x).shape == run(original, x).shape == (2, 10)


# ----------------------------------------------------------------------------- foreign classifier bundles


@pytest.fixture(scope="module")
def foreign_r18(digits_r18, tmp_path_factory) -> dict[str, Path]:
    """The digits-trained ResNet-18 exported by torch like any user would, with outputs named prob and output."""
    import warnings

    import torch

    d = tmp_path_factory.mktemp("foreign-r18")
    out = {}
    for name in ("prob", "output"):
        path = d / f"r18-{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(digits_r18.model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["image"],
                              output_names=[name], dynamic_shapes=({0: torch.export.Dim("N", min=1, max=64)},),
                              external_data=False)
        out[name] = path
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prob", "output"])
def test_a_foreign_classifier_onnx_gives_a_classifier_bundle(foreign_r18, digits_r18, tmp_path: Path, name: str) -> None:
    import json

    import edge_resnet.runtime
    from edge_resnet.data import open_dataset

    assert onnx.load(str(foreign_r18[name])).graph.output[0].name == name
    bundle = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["compile", "--onnx", str(foreign_r18[name]), "--target", "cpu", "--calib", "digits:train",
                                 "--calib-count", "128", "--input-size", "32", "--resize", "32", "-o", str(bundle)])
    assert r.exit_code == 0, r.output
    assert "head: classifier (output 'logits')" in r.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "classifier" and manifest["model"]["output"] == "logits"

    v = tmp_path / "v.json"
    r = CliRunner().invoke(cli, ["validate", str(bundle), "--data", "digits:test", "--json", str(v)])
    assert r.exit_code == 0, r.output
    doc = json.loads(v.read_text())
    m = doc["metrics"]
    assert m["float_top1"] == pytest.approx(digits_r18.test_accuracy, abs=1e-6)  # the same model, from another file
    assert m["float_top5"] >= m["float_top1"] and m["int8_top5"] is not None and m["agreement_top1"] is not None
    assert len(doc["confusion"]["float"]) == 10 and sum(map(sum, doc["confusion"]["int8"])) == 540

    model = edge_resnet.runtime.load(bundle)
    try:
        batch = next(open_dataset("digits:test", model.spec, count=8).images(8))
        top = model.classify(batch.images, top_k=3, order="rgb")
        assert len(top) == 8 and all(len(t.indices) == 3 for t in top)
        assert np.mean([t.index == y for t, y in zip(top, batch.y, strict=True)]) >= 0.75
    finally:
        model.close()


def test_the_fold_bn_command_writes_the_canonical_graph_and_says_what_it_did(tmp_path: Path) -> None:
    m = _tf2onnx_style()
    src, out = save(m, tmp_path / "tf2onnx.onnx"), tmp_path / "canonical.onnx"
    r = CliRunner().invoke(cli, ["fold-bn", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("canonical form: 14 -> 8 nodes, output within ")
    assert lines[1] == "  ops before: Transpose 4, Conv 2, Relu 2, Add 1, BatchNormalization 1, MatMul 1, Mul 1, ReduceMean 1, Softmax 1"
    assert lines[2] == "  ops after:  Conv 2, Relu 2, Flatten 1, Gemm 1, GlobalAveragePool 1, Mul 1"
    assert "folded 1 BatchNormalization into Conv, kept 0" in lines
    assert lines[-1] == f"wrote {out} (classifier, output 'logits')"
    written = onnx.load(str(out))
    assert ops(written)["Transpose"] == 0 and written.graph.output[0].name == "logits"
    r = CliRunner().invoke(cli, ["fold-bn", str(src), "--head", "embedding", "-o", str(tmp_path / "emb.onnx")])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == f"wrote {tmp_path / 'emb.onnx'} (embedding, output 'features')"


@pytest.mark.parametrize(("model", "kind"), [
    ({"kind": "classifier", "output": "logits"}, "classifier"),
    ({"kind": "embedding", "output": "features"}, "embedding"),
    ({"kind": "feature_map", "output": "features"}, "feature_map"),
    # bundles written before model.kind: the old reading of the output name and the pooling
    ({"output": "logits"}, "classifier"), ({}, "classifier"),
    ({"output": "features", "pooling": "avg"}, "embedding"), ({"output": "features", "pooling": "none"}, "feature_map"),
])
def test_the_runtime_validate_and_bench_read_the_recorded_kind(model: dict, kind: str) -> None:
    from edge_resnet.bundle import Bundle
    from edge_resnet.runtime.model import model_kind

    assert model_kind(model).value == kind
    assert Bundle(Path("b"), {"model": model}).output_kind == ("logits" if kind == "classifier" else "features")


def test_an_unknown_recorded_kind_is_a_clear_error() -> None:
    from edge_resnet.errors import BundleError
    from edge_resnet.runtime.model import model_kind

    with pytest.raises(BundleError, match="the bundle's manifest records an unknown model kind 'detector'"):
        model_kind({"kind": "detector"})


def test_head_contradicting_the_graph_is_one_clear_error_on_the_command_line(tmp_path: Path) -> None:
    body, ib = _body()
    path = save(model_of(body, ib, out_name="r"), tmp_path / "fmap.onnx")
    r = CliRunner().invoke(cli, ["compile", "--onnx", str(path), "--head", "classifier", "--target", "cpu", "--calib",
                                 "random", "-o", str(tmp_path / "b")])
    assert r.exit_code != 0 and "Traceback" not in r.output and r.output.count("error:") == 1
    assert ("error: --head classifier contradicts the graph: its output 'r' is 4-D (N, C, H, W), computed by Relu, "
            "which makes it a feature-map model; a classifier has a 2-D output") in r.output
    assert "fix: drop --head (or pass --head features)" in r.output
    assert not (tmp_path / "b").exists()
