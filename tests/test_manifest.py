"""The typed manifest sections read and write the JSON compile writes, key for key and in order."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from conftest import build_digits_bundle

from edge_resnet.bundle import check_manifest, load_bundle, manifest_digest
from edge_resnet.errors import BundleError
from edge_resnet.manifest import (
    ABSENT,
    ArtifactSection,
    BudgetSection,
    CalibrationSection,
    GraphsSection,
    IntegritySection,
    Manifest,
    ModelSection,
    QuantizationSection,
)

SECTIONS = {"model": ModelSection, "graphs": GraphsSection, "calibration": CalibrationSection,
            "quantization": QuantizationSection, "artifact": ArtifactSection, "integrity": IntegritySection}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, digits_r18):
    """Real INT8 bundles (OpenVINO and ONNX Runtime), shared with the other tests of the session."""
    root = tmp_path_factory.getbasetemp() / "digits-bundles"
    return {t: build_digits_bundle(root, digits_r18.checkpoint, t) for t in ("cpu", "onnxruntime")}


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["cpu", "onnxruntime"])
def test_every_section_round_trips_a_compiled_manifest(bundles, target):
    m = _manifest(bundles[target])
    sections = Manifest.from_dict(m, "m")
    assert json.dumps(sections.to_dict()) == json.dumps(m)  # same keys, values and order
    for name, cls in SECTIONS.items():
        section = getattr(sections, name)
        assert isinstance(section, cls)
        assert json.dumps(cls.from_dict(m[name], "m", f"{name}.").to_dict()) == json.dumps(m[name])
    # the typed values are the JSON's
    assert sections.artifact.backend == m["artifact"]["backend"] == {"cpu": "openvino"}.get(target, target)
    assert sections.artifact.files == m["artifact"]["files"]
    assert sections.model.kind == "classifier" and sections.model.num_classes == 10
    assert sections.graphs.float == "model.float.onnx" and sections.graphs.int8 == "model.int8.onnx"
    assert sections.calibration.source == "digits:train" and sections.calibration.count == 128
    assert sections.calibration.scales == "scales.json" and sections.calibration.random is False
    assert sections.quantization.format == m["target"]["activation_format"]
    assert sections.integrity.manifest_sha256 == manifest_digest(m)
    assert sections.budget is ABSENT and sections.get("budget") is None
    assert load_bundle(bundles[target]).sections == sections


def test_unknown_keys_round_trip(bundles):
    """Keys this version does not declare (a newer bundle's) are kept, in place."""
    m = _manifest(bundles["onnxruntime"])
    future = {"future": {"x": 1}, **m, "model": {"zoo_extra": [1, 2], **m["model"], "later": None}}
    future["artifact"] = {**m["artifact"], "signature": "abc"}
    sections = Manifest.from_dict(future, "m")
    assert json.dumps(sections.to_dict()) == json.dumps(future)
    assert sections.extra == {"future": {"x": 1}} and sections.artifact.extra == {"signature": "abc"}
    assert sections.model.extra["zoo_extra"] == [1, 2] and sections.model.extra["later"] is None


def test_budget_record_is_added_as_the_rewrite_wrote_it(bundles):
    """budget.py's rewrite: the staged manifest with ``budget`` after ``host`` (finish adds the rest)."""
    m = _manifest(bundles["onnxruntime"])
    record = BudgetSection(max_drop=0.5, val="digits:test", val_count=None, max_rebuilds=8, sensitivity_images=32,
                           metric="top1", drop=0.1, passed=True, validation="validation.json", attempts=[],
                           ranking=None)
    rewritten = replace(Manifest.from_dict(m, "m"), budget=record, format_version=ABSENT, files=ABSENT,
                        integrity=ABSENT).to_dict()
    kept = {k: v for k, v in m.items() if k not in ("format_version", "files", "integrity")}
    assert list(rewritten) == [*kept, "budget"] and {**kept, "budget": record.to_dict()} == rewritten
    assert list(record.to_dict()) == ["max_drop", "val", "val_count", "max_rebuilds", "sensitivity_images", "metric",
                                      "drop", "passed", "validation", "attempts", "ranking"]
    assert BudgetSection.from_dict(record.to_dict(), "m", "budget.") == record


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("change, problem", [
    (lambda m: _without(m, "artifact"), "has no 'artifact' entry"),
    (lambda m: {**m, "graphs": {"int8": "model.int8.onnx"}}, "has no 'graphs.float' entry"),
    (lambda m: {**m, "artifact": {**m["artifact"], "files": "model.onnx"}},
     ": 'artifact.files' is a string, expected an object"),
    (lambda m: {**m, "files": list(m["files"])}, ": 'files' is a list, expected an object"),
    (lambda m: {**m, "calibration": {**m["calibration"], "count": "128"}},
     ": 'calibration.count' is a string, expected an integer"),
    (lambda m: {**m, "model": {**m["model"], "num_classes": True}},
     ": 'model.num_classes' is true/false, expected an integer or null"),
    (lambda m: {**m, "quantization": []}, ": 'quantization' is a list, expected an object or null"),
])
def test_a_malformed_section_is_one_bundle_error(bundles, change, problem):
    m = change(copy.deepcopy(_manifest(bundles["onnxruntime"])))
    with pytest.raises(BundleError) as exc:
        Manifest.from_dict(m, "B/manifest.json")
    assert exc.value.problem.startswith("B/manifest.json") and exc.value.problem.endswith(problem)
    assert "\n" not in exc.value.problem and exc.value.fix.startswith("compile the bundle again")
    m["integrity"]["manifest_sha256"] = manifest_digest(m)  # what a hand edit can do: loading says the same
    with pytest.raises(BundleError) as loaded:
        check_manifest(m, "B/manifest.json")
    assert loaded.value.problem == exc.value.problem
