"""A Keras ResNet50V2 exported by Keras itself (Keras 3 on the torch backend, ``model.export(path, format="onnx")``,
no TensorFlow) enters the pipeline exactly: an NHWC graph with a Transpose pair around every conv, decomposed
BatchNorm (Sub/Mul/Add), explicit Pads, Casts and a MatMul + Add + Softmax head becomes plain NCHW convolutions;
its bundle's float graph gives Keras's logits; every conv runs in int8 on OpenVINO and as QLinearConv on ONNX Runtime.

Keras' own exporter on the torch backend writes NHWC (it traces the Keras layers, which transpose to
NCHW around torch's convolutions): the graph tf2onnx would write is covered by the hand-built NHWC graphs of
test_foreign_onnx.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from edge_resnet.cli.app import cli  # noqa: E402
from edge_resnet.graph.load import load_onnx  # noqa: E402
from edge_resnet.graph.prepare import prepare_float_graph  # noqa: E402

log = logging.getLogger(__name__)
SIZE = 32
CLASSES = 10
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(keras.backend.backend() != "torch", reason="these tests run Keras on the torch backend")]


def randomized_resnet50v2(seed: int = 0):
    """Keras ResNet50V2 (softmax head, as Keras Applications build it) with random BN statistics and conv biases,
    so that a wrong mapping of any of them shows in the logits."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = keras.applications.ResNet50V2(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            w, b = layer.get_weights()
            layer.set_weights([w, rng.normal(0, 0.2, b.shape)])
    return model


def keras_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    """Keras's own pre-softmax logits: its pooled features through its own dense layer's weights."""
    pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output).predict(x_nhwc, verbose=0)
    w, b = model.get_layer("predictions").get_weights()
    return pooled.astype(np.float64) @ w + b


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("keras-r50v2")
    model = randomized_resnet50v2()
    x = np.random.default_rng(1).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    path = d / "resnet50v2.onnx"
    model.export(str(path), format="onnx", verbose=False)
    return {"dir": d, "onnx": path, "x": x, "probs": probs, "logits": keras_logits(model, x)}


@pytest.fixture(scope="module")
def canonical(keras_export):
    return prepare_float_graph(load_onnx(keras_export["onnx"]))


def ops(m: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in m.graph.node)


def run(m, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m),
                             providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_keras_exports_an_nhwc_graph_full_of_transposes(keras_export) -> None:
    m = onnx.load(str(keras_export["onnx"]))
    dims = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [SIZE, SIZE, 3]
    before = ops(m)
    log.info("Keras ResNet50V2 export: %d nodes %s", len(m.graph.node), dict(before))
    assert before["Transpose"] > 100 and before["Conv"] == 53 and before["Sub"] >= 49 and before["Cast"] > 0
    assert before["MatMul"] == 1 and before["Softmax"] == 1 and before["Pad"] > 0
    assert rel(run(m, keras_export["x"]), keras_export["probs"]) < 1e-4  # the export is Keras (the reference is sound)


def test_canonicalisation_gives_plain_nchw_convolutions_and_keras_logits(keras_export, canonical) -> None:
    after = ops(canonical.model)
    log.info("canonical: %s", canonical.canon)
    # ResNet50V2: 53 convs (BN folded into the 36 that feed one), 17 pre-activation BNs kept as Mul + Add after the
    # residual Adds (16) and the stem max pool, the Pad of the stem pool (its input is signed: not mergeable)
    assert after == Counter({"Conv": 53, "Relu": 49, "Add": 33, "Mul": 17, "MaxPool": 4, "Pad": 1,
                             "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})
    assert canonical.kind.value == "classifier" and canonical.output_name == "logits"
    assert [d.dim_value or d.dim_param for d in canonical.model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, SIZE, SIZE]
    assert rel(run(canonical.model, nchw(keras_export["x"])), keras_export["logits"]) <= 1e-4
    report = canonical.canon
    assert report.ops_before["Transpose"] > 100 and report.ops_after["Transpose"] == 0
    assert report.error is not None and report.error < 1e-5


@pytest.fixture(scope="module")
def bundles(keras_export, canonical, tmp_path_factory) -> dict:
    """cpu and onnxruntime bundles, each with --calib random and with real data (digits:train); the cpu/random one
    through the command line, the others through the API on the same canonical graph (the same steps, less time)."""
    from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
    from edge_resnet.data import PreprocessSpec

    root = tmp_path_factory.mktemp("keras-bundles")
    out = {}
    r = CliRunner().invoke(cli, ["compile", "--onnx", str(keras_export["onnx"]), "--target", "cpu", "--calib", "random",
                                 "--calib-count", "32", "-o", str(root / "cpu-random")])
    assert r.exit_code == 0, r.output
    out["cpu-random"] = (root / "cpu-random", r.output)
    spec = PreprocessSpec(input_size=SIZE, resize=SIZE)
    for target in ("cpu", "onnxruntime"):
        for calib in ("random", "digits:train"):
            name = f"{target}-{'random' if calib == 'random' else 'digits'}"
            if name in out:
                continue
            opts = CompileOptions(target=target, calib=calib, calib_count=32, spec=spec, progress=False)
            res = compile_bundle(ModelSource(onnx=str(keras_export["onnx"])), opts, root / name, input_size=SIZE,
                                 float_graph=canonical)
            out[name] = (res.bundle.path, "")
    return out


def test_the_compile_command_reports_the_canonicalisation(bundles) -> None:
    _, output = bundles["cpu-random"]
    # Keras numbers its input names once a process has built other models (keras_tensor_123)
    assert "canonical form: " in output
    assert re.search(r"layout: input 'keras_tensor\w*' \[N, 32, 32, 3\] \(NHWC\) -> \[N, 3, 32, 32\] \(NCHW\)", output)
    assert "head: classifier (output 'logits')" in output


@pytest.mark.parametrize("name", ["cpu-random", "cpu-digits", "onnxruntime-random", "onnxruntime-digits"])
def test_bundle_float_graph_gives_keras_logits_and_every_conv_is_int8(bundles, keras_export, name: str) -> None:
    from edge_resnet.bundle import load_bundle

    path, _ = bundles[name]
    b = load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "classifier" and manifest["model"]["canonical"]["ops_after"].get("Transpose", 0) == 0
    assert rel(run(b.float_model(), nchw(keras_export["x"])), keras_export["logits"]) <= 1e-4
    runner = b.load_runner()
    try:
        if name.startswith("cpu"):
            from edge_resnet.backends.openvino import int8_coverage, runtime_layers

            assert int8_coverage(runner) == (53, 53)
            layout_ops = Counter(layer.layer_type for layer in runtime_layers(runner, None)
                                 if layer.layer_type in ("Transpose", "Reorder"))
            log.info("%s: OpenVINO runtime graph layout ops %s", name, dict(layout_ops))
            assert layout_ops["Transpose"] == 0
            assert layout_ops["Reorder"] <= 4  # input/output layout changes of the plugin, not one per conv
        else:
            optimized = onnx.load(str(path / b.artifact.files["optimized"]))
            after = ops(optimized)
            log.info("%s: ORT optimised graph %s", name, dict(after))
            assert after["QLinearConv"] == 53 and after["Conv"] == 0 and after["Transpose"] == 0
        y = runner.infer(nchw(keras_export["x"]))
        assert y.shape == (4, CLASSES)
    finally:
        runner.close()


def test_a_keras_model_without_top_gives_an_nchw_feature_map(tmp_path: Path) -> None:
    """include_top=False, pooling=None: Keras' NHWC feature map comes out NCHW (the pooled forms, ReduceMean and
    ReduceMax over NHWC axes, are the hand-built graphs of test_foreign_onnx.py: one Keras export less in CI)."""
    pooling, kind, pool_op = None, "feature_map", None
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50V2(weights=None, include_top=False, pooling=pooling, input_shape=(SIZE, SIZE, 3))
    x = np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    y = model.predict(x, verbose=0)
    model.export(str(tmp_path / "m.onnx"), format="onnx", verbose=False)
    fg = prepare_float_graph(load_onnx(tmp_path / "m.onnx"))
    assert fg.kind.value == kind and fg.output_name == "features"
    after = ops(fg.model)
    assert after["Transpose"] == 0 and after["Conv"] == 53 and after["Gemm"] == 0
    out = run(fg.model, nchw(x))
    if pool_op is None:  # Keras' NHWC feature map comes out NCHW
        assert out.shape == (2, 2048, 1, 1) and rel(out.transpose(0, 2, 3, 1), y) <= 1e-4
    else:
        assert after[pool_op] == 1 and rel(out, y) <= 1e-4
