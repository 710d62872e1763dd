"""edge-resnet validate: the digits-trained ResNet-18 bundles (OpenVINO cpu, ONNX Runtime) against their
float model, the JSON schema, the CLI, per-layer errors and label handling."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edge_resnet.bundle import load_bundle
from edge_resnet.cli.app import cli
from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
from edge_resnet.data import open_dataset
from edge_resnet.errors import DataError, EdgeResnetError
from edge_resnet.types import Precision
from edge_resnet.validate import per_layer_errors, validate_bundle
from edge_resnet.validate.run import label_map

SCHEMA_KEYS = {"bundle", "bundle_sha256", "target", "backend", "precision", "device", "data", "reference", "metrics",
               "per_class", "confusion", "per_layer", "budget", "kept_float"}
METRIC_KEYS = {"agreement_top1", "cosine_mean", "cosine_min", "sqnr_db", "float_top1", "int8_top1", "float_top5",
               "int8_top5", "top1_drop_points", "top5_drop_points"}


def _build(digits, target: str, out, **options):
    source = ModelSource("resnet18", weights=str(digits.checkpoint), num_classes=10)
    opts = CompileOptions(target=target, calib="digits:train", calib_count=256, spec=digits.spec, progress=False,
                          **options)
    return compile_bundle(source, opts, out, input_size=32).bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, digits_r18):
    root = tmp_path_factory.mktemp("validate")
    return {t: _build(digits_r18, t, root / t) for t in ("cpu", "onnxruntime")}


@pytest.fixture(scope="module")
def results(bundles):
    out = {}
    for target, b in bundles.items():
        data = open_dataset("digits:test", b.spec)
        out[target] = validate_bundle(b, data, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target,backend,fmt_layers", [("cpu", "openvino", 29), ("onnxruntime", "onnxruntime", 29)])
def test_validation_json_of_the_digits_resnet18(results, bundles, digits_r18, target, backend, fmt_layers):
    doc = results[target].to_json()
    json.loads(json.dumps(doc))  # serializable
    assert set(doc) == SCHEMA_KEYS and set(doc["metrics"]) == METRIC_KEYS
    assert doc["bundle_sha256"] == bundles[target].digest  # which bundle, wherever it is copied
    assert doc["target"] == target and doc["backend"] == backend and doc["precision"] == "int8"
    assert doc["data"] == {"source": "digits:test", "count": 540, "labelled": True}
    assert doc["reference"] == {"runtime": "onnxruntime", "precision": "fp32"}
    m = doc["metrics"]
    # the float reference is the trained model: its accuracy is the one measured at training
    assert m["float_top1"] == pytest.approx(digits_r18.test_accuracy, abs=1e-6)
    assert m["agreement_top1"] >= 0.98 and abs(m["top1_drop_points"]) <= 1.5
    assert m["top1_drop_points"] == pytest.approx(100 * (m["float_top1"] - m["int8_top1"]))
    assert 0.99 < m["cosine_mean"] <= 1.0 and m["cosine_min"] <= m["cosine_mean"] and m["sqnr_db"] > 15
    assert [c["class"] for c in doc["per_class"]] == [str(i) for i in range(10)]
    assert sum(c["support"] for c in doc["per_class"]) == 540
    conf = doc["confusion"]
    assert conf["labels"] == [str(i) for i in range(10)]
    f, q = np.array(conf["float"]), np.array(conf["int8"])
    assert f.shape == q.shape == (10, 10) and f.sum() == q.sum() == 540
    assert np.trace(q) / 540 == pytest.approx(m["int8_top1"])
    layers = doc["per_layer"]
    assert len(layers) == fmt_layers  # 20 Conv + 8 Add + fc
    assert [e["sqnr_db"] for e in layers] == sorted(e["sqnr_db"] for e in layers)  # worst first
    assert {e["op"] for e in layers} == {"Conv", "Add", "Gemm"}
    assert "layer3.1.conv2" in {e["layer"] for e in layers} and "fc" in {e["layer"] for e in layers}
    assert doc["budget"] is None and doc["kept_float"] == []


@pytest.mark.slow
def test_cli_validate_prints_the_table_and_writes_json(bundles, tmp_path):
    out = tmp_path / "v.json"
    r = CliRunner().invoke(cli, ["validate", str(bundles["onnxruntime"].path), "--data", "digits:test", "--count", "200",
                                 "--json", str(out), "--max-drop", "1.5", "--no-progress"])
    assert r.exit_code == 0, r.output
    for text in ("top-1", "top-5", "agreement", "cosine mean/min", "SQNR", "worst layers", "within budget"):
        assert text in r.output
    doc = json.loads(out.read_text())
    assert doc["data"]["count"] == 200 and doc["budget"]["metric"] == "top1" and doc["budget"]["passed"] is True
    assert doc["budget"]["max_drop"] == 1.5 and len(doc["per_layer"]) == 29


@pytest.mark.slow
def test_cli_validate_over_budget_exits_3(bundles, tmp_path):
    out = tmp_path / "v.json"
    # a negative budget asks the INT8 build to beat the float model by a point: it cannot here
    r = CliRunner().invoke(cli, ["validate", str(bundles["cpu"].path), "--data", "digits:test", "--count", "100",
                                 "--max-drop", "-1", "--no-per-layer", "--json", str(out), "--no-progress"])
    assert r.exit_code == 3, r.output
    assert "OVER BUDGET" in r.output and "drift over budget" in r.output
    doc = json.loads(out.read_text())  # written before failing
    assert doc["budget"]["passed"] is False and doc["per_layer"] == []


def test_cli_report_without_the_report_module_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "edge_resnet.report", None)
    r = CliRunner().invoke(cli, ["validate", str(tmp_path), "--data", "digits:test", "--report", str(tmp_path / "r.html")])
    assert r.exit_code == 1
    assert "edge_resnet.report module, which is not available" in r.output


@pytest.mark.slow
def test_cli_report_calls_write_report(bundles, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("edge_resnet.report")
    fake.write_report = lambda path, **kw: calls.append((path, kw))
    monkeypatch.setitem(sys.modules, "edge_resnet.report", fake)
    r = CliRunner().invoke(cli, ["validate", str(bundles["cpu"].path), "--data", "digits:test", "--count", "50",
                                 "--no-per-layer", "--report", str(tmp_path / "r.html"), "--no-progress"])
    assert r.exit_code == 0, r.output
    (path, kw), = calls
    assert str(path) == str(tmp_path / "r.html") and kw["bench"] is None
    assert kw["manifest"]["target"]["name"] == "cpu" and kw["validation"]["data"]["count"] == 50


@pytest.mark.slow
def test_unlabelled_data_is_judged_by_agreement(bundles, tmp_path):
    b = bundles["cpu"]
    raw = np.stack([img for batch in open_dataset("digits:test", b.spec, count=64).images(64) for img in batch.images])
    np.save(tmp_path / "x.npy", raw)  # uint8 images, no labels
    result = validate_bundle(b, open_dataset(tmp_path / "x.npy", b.spec), per_layer=False, progress=False)
    doc = result.to_json()
    assert doc["data"]["labelled"] is False and doc["data"]["count"] == 64
    assert doc["metrics"]["float_top1"] is None and doc["metrics"]["top1_drop_points"] is None
    assert doc["per_class"] == [] and doc["confusion"] is None
    check = result.check_budget(5.0)
    assert check.metric == "agreement"
    assert check.drop == pytest.approx(100 * (1 - doc["metrics"]["agreement_top1"]))


@pytest.mark.slow
def test_per_layer_matches_layers_by_node_name(bundles):
    """When a layer's output tensor has another name in the Q/DQ graph, it is still matched (by node name)."""
    b = bundles["cpu"]
    x, _ = next((bt.x, bt.y) for bt in open_dataset("digits:test", b.spec, count=16).batches(16))
    fm = onnx.load(str(b.float_model()))
    qm = onnx.load(str(b.file("model.int8.onnx")))
    before = {e.layer: e.sqnr_db for e in per_layer_errors(fm, qm, [x], progress=False)}
    node = next(n for n in qm.graph.node if n.name == "layer2.0.conv1")
    old = node.output[0]
    node.output[0] = "renamed_tensor"
    for n in qm.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = "renamed_tensor"
    after = {e.layer: e.sqnr_db for e in per_layer_errors(fm, qm, [x], progress=False)}
    assert set(after) == set(before)
    assert after["layer2.0.conv1"] == pytest.approx(before["layer2.0.conv1"])


@pytest.mark.slow
def test_feature_bundle_has_no_top_k(tmp_path):
    source = ModelSource("resnet18", num_classes=10, include_top=False, pooling="avg")  # random weights
    opts = CompileOptions(target="onnxruntime", precision=Precision.FP32, progress=False)
    b = compile_bundle(source, opts, tmp_path / "features", input_size=32).bundle
    assert b.output_kind == "features"
    result = validate_bundle(load_bundle(b.path), open_dataset("digits:test", b.spec, count=32), progress=False)
    doc = result.to_json()
    m = doc["metrics"]
    assert m["agreement_top1"] is None and m["float_top1"] is None and m["top5_drop_points"] is None
    assert doc["per_class"] == [] and doc["confusion"] is None and doc["per_layer"] == []  # fp32: no Q/DQ graph
    # fp32 artifact == reference: SQNR is infinite, written as null so the file is strict JSON
    assert m["cosine_mean"] > 0.9999 and (m["sqnr_db"] is None or m["sqnr_db"] > 60)
    json.loads(json.dumps(doc, allow_nan=False))
    with pytest.raises(EdgeResnetError, match="outputs features"):
        result.check_budget(1.0)


def test_label_map_matches_class_folders_by_name():
    labels = ["cat", "dog", "fox"]
    assert label_map(labels, ["cat", "dog", "fox"], 3) is None
    assert label_map(labels, ["fox", "cat"], 3).tolist() == [2, 0]  # a subset, in another order
    assert label_map(["class_0", "class_1", "class_2"], ["a", "b"], 3) is None  # no names: by position
    with pytest.raises(DataError, match="not in the bundle's labels.txt"):
        label_map(labels, ["cat", "wolf"], 3)
