"""BatchNormalization folding: graphs that really contain BatchNormalization, compared numerically.

Every numeric test evaluates the graph before and after folding on the same random input, in
float64 (onnx.reference on a copy of the graph cast to double) and in float32 (ONNX Runtime with
graph optimizations off, so ORT's own Conv+BN fusion cannot hide a difference), and requires
    max|a - b| / max|a| <= 1e-5 (float64)   and   <= 1e-4 (float32).
The negative controls patch the fold arithmetic with classic mistakes and require the same check
to fail, which proves the tolerance is tight enough to catch them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from torch import nn

from edge_resnet.errors import GraphError
from edge_resnet.graph import FoldSummary, fold_batchnorm, load_onnx
from edge_resnet.graph import fold_bn as fold_bn_module

log = logging.getLogger(__name__)

TOL_FP64 = 1e-5
TOL_FP32 = 1e-4
ERRORS: dict[str, tuple[float, float]] = {}  # graph -> (fp32, fp64) relative error, for the report


@pytest.fixture(scope="module", autouse=True)
def _error_table():
    yield
    if ERRORS:
        lines = [f"{'graph':<44} {'max rel err fp32':>17} {'fp64':>10}"]
        lines += [f"{k:<44} {a:>17.2e} {b:>10.2e}" for k, (a, b) in ERRORS.items()]
        log.info("fold_batchnorm error figures:\n%s", "\n".join(lines))


# --- evaluation helpers ------------------------------------------------------------------------------


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))) / np.max(np.abs(ref)))


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a float32 graph computing in float64 throughout (weights, inputs, casts)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)

    def cast_tensor(t: TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    def walk(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            cast_tensor(t)
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = TensorProto.DOUBLE
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    cast_tensor(a.t)
                if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.DOUBLE
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(m.graph)
    return m


class BatchNormalization(OpRun):
    """Inference-mode BatchNormalization for every opset, straight from the ONNX definition.

    onnx.reference's own kernels are wrong for inference before opset 14 (opset 6-8 returns a
    nested tuple; opset 9 blends in the batch statistics because momentum has a default).
    """

    op_domain = ""

    def _run(
        self,
        x,
        scale,
        bias,
        mean,
        var,
        epsilon=None,
        momentum=None,
        spatial=None,
        is_test=None,
        training_mode=None,
    ):
        eps = 1e-5 if epsilon is None else epsilon
        shape = (-1,) + (1,) * (x.ndim - 2) if scale.ndim == 1 else scale.shape  # spatial=0: (C, H, W)
        scale, bias, mean, var = (v.reshape(shape) for v in (scale, bias, mean, var))
        return ((scale * (x - mean) / np.sqrt(var + eps) + bias).astype(x.dtype),)


def run_fp64(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    m = to_float64(model)
    name = _image_input(m)
    return ReferenceEvaluator(m, new_ops=[BatchNormalization]).run(None, {name: x.astype(np.float64)})[0]


def run_fp32(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion of its own
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {_image_input(model): x.astype(np.float32)})[0]


def _image_input(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(vi.name for vi in model.graph.input if vi.name not in inits)


def compare(
    label: str, before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray
) -> tuple[float, float]:
    """(fp32, fp64) relative errors of ``after`` against ``before``; recorded for the report."""
    e64 = rel_err(run_fp64(before, x), run_fp64(after, x))
    e32 = rel_err(run_fp32(before, x), run_fp32(after, x))
    ERRORS[label] = (e32, e64)
    return e32, e64


def assert_close(label: str, before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray) -> None:
    e32, e64 = compare(label, before, after, x)
    assert e64 <= TOL_FP64, f"{label}: float64 relative error {e64:.3g} > {TOL_FP64}"
    assert e32 <= TOL_FP32, f"{label}: float32 relative error {e32:.3g} > {TOL_FP32}"


def op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def fp64_error_only(before: onnx.ModelProto, after: onnx.ModelProto, x: np.ndarray) -> float:
    return rel_err(run_fp64(before, x), run_fp64(after, x))


# --- torch models that really contain BatchNormalization -----------------------------------------------


def randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random running statistics, affine parameters and eps in every BatchNorm (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))  # [0.5, 2]
                sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(c, generator=g)))
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
                m.eps = float(10 ** (-4 + 3 * torch.rand(1, generator=g).item()))  # [1e-4, 1e-1]
    return model.eval()


def export_with_bn(model: nn.Module, path: Path, hw: int = 32, **kwargs) -> onnx.ModelProto:
    """The legacy exporter without constant folding keeps BatchNormalization (dynamo fuses it)."""
    x = torch.randn(1, 3, hw, hw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
        torch.onnx.export(
            model.eval(),
            (x,),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
            **kwargs,
        )
    m = load_onnx(path)
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    assert op_count(m, "BatchNormalization") == n_bn > 0, "the export must keep BatchNormalization nodes"
    return m


class BasicNet(nn.Module):
    """Stem (Conv with bias + BN) and one v1.5 basic block with an identity shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(16)
        self.b_conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b_bn1 = nn.BatchNorm2d(16)
        self.b_conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b_bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.b_bn1(self.b_conv1(x)))
        x = torch.relu(self.b_bn2(self.b_conv2(y)) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class BottleneckNet(nn.Module):
    """Stem + one bottleneck (grouped 3x3, stride 2) with a Conv+BN downsample path."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.conv1 = nn.Conv2d(16, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        x = torch.relu(y + self.downsample(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class PreActNet(nn.Module):
    """v2 (pre-activation, Keras ResNetV2 style): BN -> ReLU -> Conv, BN after the stem and the Add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(16)  # preact, follows the stem's MaxPool
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)  # follows conv1: folds
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)  # preact of the next block, follows the residual Add
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.post_bn = nn.BatchNorm2d(16)  # follows the last Add
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        y = self.conv1(torch.relu(self.bn1(x)))
        x = self.conv2(torch.relu(self.bn2(y))) + x
        x = self.conv3(torch.relu(self.bn3(x))) + x
        x = torch.relu(self.post_bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("net", [BasicNet, BottleneckNet])
def test_v1_blocks_fold_completely(net, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(net(), seed=1)
    before = export_with_bn(model, tmp_path / "m.onnx")
    conv_names = [n.name for n in before.graph.node if n.op_type == "Conv"]
    after, summary = fold_batchnorm(before)

    assert op_count(after, "BatchNormalization") == 0
    assert len(summary.folded) == op_count(before, "BatchNormalization")
    assert summary.kept == [] and summary.converted_to_affine == []
    assert [n.name for n in after.graph.node if n.op_type == "Conv"] == conv_names  # names preserved
    assert all(len(n.input) == 3 for n in after.graph.node if n.op_type == "Conv")  # every Conv got a bias
    onnx.checker.check_model(after, full_check=True)
    assert_close(f"torch {net.__name__}", before, after, _x((3, 3, 32, 32)))
    # also against torch itself, to catch an export or comparison that is wrong on both sides
    with torch.no_grad():
        ref = model(torch.from_numpy(_x((3, 3, 32, 32)))).numpy()
    assert rel_err(ref, run_fp32(after, _x((3, 3, 32, 32)))) < TOL_FP32


def test_preactivation_v2_block_reports_kept_bn(tmp_path):
    torch.manual_seed(0)
    before = export_with_bn(randomize_bn(PreActNet(), seed=2), tmp_path / "m.onnx")
    after, summary = fold_batchnorm(before)

    assert [bn for bn, _ in summary.folded] == ["/bn2/BatchNormalization"]
    assert summary.folded[0][1] == "/conv1/Conv"
    reasons = dict(summary.kept)
    assert set(reasons) == {
        "/bn1/BatchNormalization",
        "/bn3/BatchNormalization",
        "/post_bn/BatchNormalization",
    }
    assert "MaxPool" in reasons["/bn1/BatchNormalization"]
    assert "residual Add" in reasons["/bn3/BatchNormalization"]
    assert "residual Add" in reasons["/post_bn/BatchNormalization"]
    assert sorted(summary.converted_to_affine) == sorted(reasons)
    assert op_count(after, "BatchNormalization") == 0
    assert op_count(after, "Mul") == 3 and op_count(after, "Add") == 3 + 2
    inits = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    for node in after.graph.node:
        if node.op_type == "Mul":
            assert inits[node.input[1]].shape == (16, 1, 1)
    onnx.checker.check_model(after, full_check=True)
    assert_close("torch PreActNet (v2)", before, after, _x((2, 3, 32, 32)))

    text = str(summary)
    assert text.startswith("folded 1 BatchNormalization into Conv, kept 3:")
    assert "/bn3/BatchNormalization: its input comes from Add" in text and "converted to Mul+Add" in text


def test_kept_bn_can_stay_a_batchnormalization(tmp_path):
    before = export_with_bn(randomize_bn(PreActNet(), seed=3), tmp_path / "m.onnx")
    after, summary = fold_batchnorm(before, convert_kept_to_affine=False)
    assert op_count(after, "BatchNormalization") == 3 == len(summary.kept)
    assert summary.converted_to_affine == []
    assert "left as BatchNormalization" in str(summary)
    assert_close("torch PreActNet (v2), BN kept", before, after, _x((2, 3, 32, 32)))


def test_default_bn_statistics_deduplicated_by_exporter(tmp_path):
    """Untouched BNs have equal (1, 0, 0, 1) statistics: the exporter shares them through Identity nodes."""
    torch.manual_seed(0)
    before = export_with_bn(BottleneckNet(), tmp_path / "m.onnx")
    assert op_count(before, "Identity") > 0
    after, summary = fold_batchnorm(before)
    assert op_count(after, "BatchNormalization") == 0 and len(summary.folded) == 5
    assert op_count(after, "Identity") == 0  # the Identity chains feeding the BNs went with them
    onnx.checker.check_model(after, full_check=True)
    assert_close("torch BottleneckNet, default BN stats", before, after, _x((2, 3, 32, 32)))


def test_initializers_as_graph_inputs(tmp_path):
    """IR < 4 style: every initializer is also listed as a graph input."""
    model = randomize_bn(BasicNet(), seed=4)
    before = export_with_bn(model, tmp_path / "m.onnx", keep_initializers_as_inputs=True)
    assert len(before.graph.input) > 1
    after, summary = fold_batchnorm(before)
    assert op_count(after, "BatchNormalization") == 0
    inits = {t.name for t in after.graph.initializer}
    used = {i for n in after.graph.node for i in n.input}
    assert inits <= used  # no initializer left without a reader
    assert {vi.name for vi in after.graph.input} - inits == {"input"}
    onnx.checker.check_model(after, full_check=True)
    assert_close("torch BasicNet, initializers as inputs", before, after, _x((2, 3, 32, 32)))


def test_input_model_is_not_modified(tmp_path):
    before = export_with_bn(randomize_bn(BasicNet(), seed=5), tmp_path / "m.onnx")
    snapshot = before.SerializeToString()
    fold_batchnorm(before)
    assert before.SerializeToString() == snapshot


# --- the model zoo -----------------------------------------------------------------------------------


def _build_model():
    try:
        from edge_resnet.models import build_model
    except ImportError as e:  # the zoo is written in parallel; skip rather than fail until it lands
        pytest.skip(f"edge_resnet.models.build_model not available: {e}")
    return build_model


@pytest.mark.parametrize(
    ("name", "variant", "hw"),
    [
        ("resnet18", "v1", 32),
        ("resnet18", "v1.5", 32),
        ("resnet18", "v2", 32),
        pytest.param("resnet50", "v1.5", 64, marks=pytest.mark.slow),  # ~9 s on 2 cores
    ],
)
def test_model_zoo(name, variant, hw, tmp_path):
    build_model = _build_model()
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, variant=variant, num_classes=10), seed=6)
    before = export_with_bn(model, tmp_path / "m.onnx", hw=hw)
    after, summary = fold_batchnorm(before)
    n_bn = op_count(before, "BatchNormalization")

    assert op_count(after, "BatchNormalization") == 0
    if variant == "v2":
        assert summary.kept, "a pre-activation ResNet has BatchNormalizations that follow an Add or the stem"
        assert len(summary.folded) + len(summary.kept) == n_bn
        assert sorted(summary.converted_to_affine) == sorted(bn for bn, _ in summary.kept)
        producer = {o: n.op_type for n in before.graph.node for o in n.output}
        bn_input = {n.name: n.input[0] for n in before.graph.node if n.op_type == "BatchNormalization"}
        for (
            bn,
            reason,
        ) in summary.kept:  # only the pre-activation ones (after the stem or an Add) and the last
            assert producer[bn_input[bn]] in ("Add", "MaxPool") and "not from a Conv" in reason, (bn, reason)
        assert all(producer[bn_input[bn]] == "Conv" for bn, _ in summary.folded)
    else:
        assert len(summary.folded) == n_bn and summary.kept == []
    onnx.checker.check_model(after, full_check=True)
    assert_close(f"zoo {name} {variant} {hw}x{hw}", before, after, _x((2 if hw <= 32 else 1, 3, hw, hw)))


# --- graphs built with onnx.helper: the cases other exporters produce -------------------------------


def _bn_stats(rng: np.random.Generator, c: int, prefix: str) -> list[TensorProto]:
    return [
        numpy_helper.from_array(
            (rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)).astype(np.float32), f"{prefix}/gamma:0"
        ),
        numpy_helper.from_array(rng.normal(0, 0.5, c).astype(np.float32), f"{prefix}/beta:0"),
        numpy_helper.from_array(rng.normal(0, 0.5, c).astype(np.float32), f"{prefix}/moving_mean:0"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}/moving_variance:0"),
    ]


def _bn(prefix: str, x: str, y: str, eps: float, **attrs) -> onnx.NodeProto:
    ins = [x] + [f"{prefix}/{k}:0" for k in ("gamma", "beta", "moving_mean", "moving_variance")]
    return helper.make_node("BatchNormalization", ins, [y], name=prefix, epsilon=eps, **attrs)


def _model(nodes, inits, c_in: int, out_shape, hw: int = 8, opset: int = 17, outputs=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, hw, hw])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    if opset < 9:  # IR version 3: initializers must also be listed as graph inputs, as old exporters did
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset >= 9 else 3
    onnx.checker.check_model(m)
    return m


def _conv_bn(
    rng: np.random.Generator,
    c_in: int = 4,
    c_out: int = 6,
    group: int = 1,
    bias: bool = True,
    k: int = 3,
    eps: float = 1e-3,
    **bn_attrs,
) -> onnx.ModelProto:
    w = numpy_helper.from_array(
        rng.normal(0, 0.5, (c_out, c_in // group, k, k)).astype(np.float32), "conv_W_0"
    )
    inits = [w, *_bn_stats(rng, c_out, "bn")]
    ins = ["x", "conv_W_0"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, c_out).astype(np.float32), "conv_B_0"))
        ins.append("conv_B_0")
    nodes = [
        helper.make_node("Conv", ins, ["c"], name="my_conv", group=group, pads=[k // 2] * 4),
        _bn("bn", "c", "y", eps, **bn_attrs),
    ]
    return _model(nodes, inits, c_in, ["N", c_out, 8, 8])


def test_conv_without_bias_gets_one():
    before = _conv_bn(np.random.default_rng(10), bias=False)
    after, summary = fold_batchnorm(before)
    assert summary.folded == [("bn", "my_conv")]
    (conv,) = after.graph.node
    assert conv.name == "my_conv" and conv.output[0] == "y" and len(conv.input) == 3
    assert {t.name for t in after.graph.initializer} == {"conv_W_0", conv.input[2]}
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper Conv without bias", before, after, _x((2, 4, 8, 8)))


@pytest.mark.parametrize("group", [2, 6])
def test_grouped_and_depthwise_conv(group):
    before = _conv_bn(np.random.default_rng(11), c_in=6, c_out=6, group=group)
    after, summary = fold_batchnorm(before)
    assert len(summary.folded) == 1 and op_count(after, "BatchNormalization") == 0
    assert_close(f"helper Conv group={group}", before, after, _x((2, 6, 8, 8)))


def test_bn_whose_conv_output_has_two_consumers_is_not_folded():
    rng = np.random.default_rng(12)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        _bn("bn", "c", "b", 1e-2),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),  # second reader of the Conv output
        helper.make_node("Add", ["b", "r"], ["y"], name="add"),
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 6, "bn")], 4, ["N", 6, 8, 8])
    after, summary = fold_batchnorm(before)
    assert summary.folded == []
    assert summary.kept == [("bn", "the output of Conv 'conv' is also used by 'relu'")]
    assert summary.converted_to_affine == ["bn"]
    conv = next(n for n in after.graph.node if n.op_type == "Conv")
    assert list(conv.input) == ["x", "W"]  # the Conv is untouched
    np.testing.assert_array_equal(
        numpy_helper.to_array(next(t for t in after.graph.initializer if t.name == "W")),
        numpy_helper.to_array(w),
    )
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper BN with a shared Conv output", before, after, _x((2, 4, 8, 8)))


def test_bn_after_add_and_after_graph_input_are_kept():
    rng = np.random.default_rng(13)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "W")
    nodes = [
        _bn("bn_in", "x", "b0", 1e-3),  # directly on the graph input
        helper.make_node("Conv", ["b0", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "b0"], ["s"], name="res_add"),
        _bn("bn_pre", "s", "b1", 5e-2),  # pre-activation: follows the residual Add
        helper.make_node("Relu", ["b1"], ["y"], name="relu"),
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 4, "bn_in"), *_bn_stats(rng, 4, "bn_pre")], 4, ["N", 4, 8, 8])
    after, summary = fold_batchnorm(before)
    reasons = dict(summary.kept)
    assert reasons["bn_in"] == "its input 'x' is the graph input, not a Conv output"
    assert reasons["bn_pre"] == (
        "its input comes from Add 'res_add', not from a Conv (BatchNormalization after a residual Add, "
        "as in pre-activation ResNets)"
    )
    assert summary.converted_to_affine == ["bn_in", "bn_pre"]
    assert op_count(after, "BatchNormalization") == 0
    # the statistics initializers went with the BatchNormalizations
    assert not any(":0" in t.name for t in after.graph.initializer)
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper BN after Add / graph input", before, after, _x((2, 4, 8, 8)))


def test_shared_weight_initializer_is_copied_not_modified():
    rng = np.random.default_rng(14)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], name="conv_a", pads=[1, 1, 1, 1]),
        _bn("bn_a", "c1", "b1", 1e-2),
        helper.make_node("Conv", ["b1", "W"], ["c2"], name="conv_b", pads=[1, 1, 1, 1]),
        _bn("bn_b", "c2", "b2", 1e-3),
        helper.make_node("Conv", ["b2", "W"], ["y"], name="conv_plain", pads=[1, 1, 1, 1]),  # no BN after it
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 4, "bn_a"), *_bn_stats(rng, 4, "bn_b")], 4, ["N", 4, 8, 8])
    after, summary = fold_batchnorm(before)
    assert summary.folded == [("bn_a", "conv_a"), ("bn_b", "conv_b")]
    convs = {n.name: n for n in after.graph.node}
    weights = {convs[k].input[1] for k in ("conv_a", "conv_b", "conv_plain")}
    assert len(weights) == 3 and convs["conv_plain"].input[1] == "W"
    inits = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    np.testing.assert_array_equal(inits["W"], numpy_helper.to_array(w))  # the shared one is unchanged
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper shared weight initializer", before, after, _x((2, 4, 8, 8)))


def test_weights_from_constant_nodes():
    rng = np.random.default_rng(15)
    w = rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.5, 6).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b_const"], value=numpy_helper.from_array(b)),
        helper.make_node("Conv", ["x", "w_const", "b_const"], ["c"], name="conv"),
        _bn("bn", "c", "y", 2e-2),
    ]
    before = _model(nodes, _bn_stats(rng, 6, "bn"), 4, ["N", 6, 8, 8])
    after, summary = fold_batchnorm(before)
    assert summary.folded == [("bn", "conv")]
    assert [n.op_type for n in after.graph.node] == ["Conv"]  # the Constant nodes became unused
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper Constant-node weights", before, after, _x((2, 4, 8, 8)))


def test_opset7_bn_with_spatial_attribute():
    rng = np.random.default_rng(16)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        _bn("bn", "c", "y", 1e-2, spatial=1),
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 6, "bn")], 4, ["N", 6, 8, 8], opset=8)
    after, summary = fold_batchnorm(before)
    assert summary.folded == [("bn", "conv")]
    assert_close("helper opset-8 BN spatial=1", before, after, _x((2, 4, 8, 8)))


def test_opset7_bn_per_activation_is_kept():
    rng = np.random.default_rng(17)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "W")
    stats = [
        numpy_helper.from_array(rng.uniform(0.5, 2, (2, 8, 8)).astype(np.float32), f"bn/{k}:0")
        for k in ("gamma", "beta", "moving_mean", "moving_variance")
    ]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"), _bn("bn", "c", "y", 1e-2, spatial=0)]
    before = _model(nodes, [w, *stats], 4, ["N", 2, 8, 8], opset=8)
    after, summary = fold_batchnorm(before)
    assert summary.folded == [] and summary.converted_to_affine == []
    assert "spatial=0" in summary.kept[0][1]
    assert op_count(after, "BatchNormalization") == 1


def _inference_reference(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with BatchNormalization in inference mode (what folding must reproduce)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            del n.output[1:]
            for a in list(n.attribute):
                if a.name == "training_mode":
                    n.attribute.remove(a)
    return m


@pytest.mark.parametrize("opset", [9, 15])
def test_training_mode_bn_with_unused_extra_outputs_folds(opset):
    rng = np.random.default_rng(18)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")
    if opset >= 14:  # training_mode attribute, outputs Y, running_mean, running_var
        bn = _bn("bn", "c", "y", 1e-2, training_mode=1)
        bn.output.extend(["rm", "rv"])
    else:  # opset 9-13: the five outputs mean training mode
        bn = _bn("bn", "c", "y", 1e-2)
        bn.output.extend(["m", "v", "sm", "sv"])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn]
    before = _model(nodes, [w, *_bn_stats(rng, 6, "bn")], 4, ["N", 6, 8, 8], opset=opset)
    after, summary = fold_batchnorm(before)
    assert summary.folded == [("bn", "conv")]
    assert "training mode" in summary.notes[0]
    onnx.checker.check_model(after, full_check=True)
    assert_close(
        f"helper training-mode BN opset {opset}", _inference_reference(before), after, _x((2, 4, 8, 8))
    )


def test_training_mode_bn_with_used_statistics_is_an_error():
    rng = np.random.default_rng(19)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")
    bn = _bn("bn", "c", "y", 1e-2, training_mode=1)
    bn.output.extend(["running_mean_out", "running_var_out"])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]), bn]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8]),
        helper.make_tensor_value_info("running_mean_out", TensorProto.FLOAT, [6]),
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 6, "bn")], 4, None, outputs=outputs)
    with pytest.raises(GraphError) as exc:
        fold_batchnorm(before)
    msg = str(exc.value)
    assert "BatchNormalization 'bn' is in training mode" in msg
    assert "'running_mean_out' are used as graph outputs" in msg
    assert "TrainingMode.EVAL" in msg


def test_float16_weights_keep_their_dtype():
    m = _conv_bn(np.random.default_rng(20))
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in (*m.graph.input, *m.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    after, _ = fold_batchnorm(m)
    assert {t.data_type for t in after.graph.initializer} == {TensorProto.FLOAT16}
    onnx.checker.check_model(after, full_check=True)


def test_graph_without_batchnormalization_is_returned_unchanged():
    rng = np.random.default_rng(21)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), "W")
    m = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])], [w], 4, ["N", 6, 8, 8]
    )
    after, summary = fold_batchnorm(m)
    assert after.SerializeToString() == m.SerializeToString() and after is not m
    assert str(summary) == "folded 0 BatchNormalization into Conv, kept 0"


def test_summary_text():
    s = FoldSummary(
        folded=[("bn1", "conv1"), ("bn2", "conv2")],
        kept=[("bn3", "its input comes from Add 'a'")],
        converted_to_affine=["bn3"],
    )
    assert str(s) == (
        "folded 2 BatchNormalization into Conv, kept 1:\n  bn3: its input comes from Add 'a'; converted to Mul+Add"
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.sampled_from([2, 4, 8]),
    group_kind=st.sampled_from(["one", "two", "depthwise"]),
    k=st.sampled_from([1, 3]),
    bias=st.booleans(),
    eps=st.floats(1e-5, 1e-1),
    seed=st.integers(0, 2**31 - 1),
)
def test_fold_property(c, group_kind, k, bias, eps, seed):
    group = {"one": 1, "two": 2, "depthwise": c}[group_kind]
    before = _conv_bn(np.random.default_rng(seed), c_in=c, c_out=c, group=group, bias=bias, k=k, eps=eps)
    after, summary = fold_batchnorm(before)
    assert len(summary.folded) == 1
    x = _x((2, c, 8, 8), seed % 1000)
    assert fp64_error_only(before, after, x) <= TOL_FP64


# --- negative controls: a wrong fold must fail the same check --------------------------------------


def _forget_eps(w, b, gamma, beta, mean, var, eps):
    s = gamma / np.sqrt(var)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1)), (b - mean) * s + beta


def _skip_mean(w, b, gamma, beta, mean, var, eps):
    s = gamma / np.sqrt(var + eps)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1)), b * s + beta


def _input_channel_axis(w, b, gamma, beta, mean, var, eps):
    s = gamma / np.sqrt(var + eps)
    axis = 1 if w.shape[1] == s.size else 0  # scales W's input channels wherever the shapes allow it
    shape = [1] * w.ndim
    shape[axis] = -1
    return w * s.reshape(shape), (b - mean) * s + beta


@pytest.mark.parametrize("wrong", [_forget_eps, _skip_mean, _input_channel_axis])
def test_negative_control_a_wrong_fold_fails_the_check(wrong, monkeypatch, tmp_path):
    torch.manual_seed(0)
    before = export_with_bn(randomize_bn(BasicNet(), seed=7), tmp_path / "m.onnx")
    monkeypatch.setattr(fold_bn_module, "_fold_params", wrong)
    after, _ = fold_batchnorm(before)
    e32, e64 = compare(f"NEGATIVE CONTROL {wrong.__name__}", before, after, _x((2, 3, 32, 32)))
    assert e64 > TOL_FP64 and e32 > TOL_FP32, (
        f"the check did not catch {wrong.__name__}: {e32:.3g}, {e64:.3g}"
    )


def test_negative_control_a_wrong_affine_fails_the_check(monkeypatch, tmp_path):
    before = export_with_bn(randomize_bn(PreActNet(), seed=8), tmp_path / "m.onnx")

    def no_mean(gamma, beta, mean, var, eps):
        s = gamma / np.sqrt(var + eps)
        return s, beta

    monkeypatch.setattr(fold_bn_module, "_affine_params", no_mean)
    after, _ = fold_batchnorm(before)
    e32, e64 = compare("NEGATIVE CONTROL affine without mean", before, after, _x((2, 3, 32, 32)))
    assert e64 > TOL_FP64 and e32 > TOL_FP32


def test_bn_on_a_2d_tensor_becomes_a_per_channel_affine():
    """BatchNorm1d after the head's Gemm: the affine constants must be (C,), not (C, 1, 1)."""
    rng = np.random.default_rng(22)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (6, 4 * 8 * 8)).astype(np.float32), "fc_w")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w"], ["g"], name="fc", transB=1),
        _bn("bn", "g", "y", 1e-2),
    ]
    before = _model(nodes, [w, *_bn_stats(rng, 6, "bn")], 4, ["N", 6])
    after, summary = fold_batchnorm(before)
    assert summary.kept == [("bn", "its input comes from Gemm 'fc', not from a Conv")]
    inits = {t.name: numpy_helper.to_array(t) for t in after.graph.initializer}
    mul = next(n for n in after.graph.node if n.op_type == "Mul")
    assert inits[mul.input[1]].shape == (6,)
    onnx.checker.check_model(after, full_check=True)
    assert_close("helper BN on (N, C) after Gemm", before, after, _x((2, 4, 8, 8)))
