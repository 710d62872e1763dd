"""Bundles are written atomically and checked when loaded."""

from __future__ import annotations

import json

import pytest

from edge_resnet.bundle import MANIFEST, BundleWriter, load_bundle
from edge_resnet.errors import BundleError


def minimal_manifest() -> dict:
    """The entries every bundle's manifest has (model.onnx as both graph and artifact)."""
    from edge_resnet.data import PreprocessSpec
    from edge_resnet.targets import get_target

    return {"model": {"output": "logits"}, "labels": "labels.txt", "graphs": {"float": "model.onnx"},
            "preprocess": PreprocessSpec().to_dict(), "target": get_target("onnxruntime").to_dict(),
            "artifact": {"backend": "onnxruntime", "precision": "fp32", "files": {"model": "model.onnx"}, "info": {}}}


def _write(out, force=False, fail=False):
    with BundleWriter(out, force=force) as w:
        (w.dir / "model.onnx").write_bytes(b"x" * 1000)
        (w.dir / "labels.txt").write_text("a\nb\n")
        if fail:
            raise KeyboardInterrupt  # an interrupted compile
        return w.finish(minimal_manifest())


def test_finished_bundle_has_manifest_with_hashes(tmp_path):
    out = _write(tmp_path / "b")
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.onnx", "labels.txt"}
    b = load_bundle(out)
    assert b.labels == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary directory left behind


def test_interrupted_compile_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "b", fail=True)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_replace_keeps_the_old_bundle(tmp_path):
    out = _write(tmp_path / "b")
    before = (out / MANIFEST).read_text()
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "b", force=True, fail=True)
    assert (out / MANIFEST).read_text() == before
    load_bundle(out)


def test_existing_output_needs_force(tmp_path):
    _write(tmp_path / "b")
    with pytest.raises(BundleError, match="--force"):
        _write(tmp_path / "b")
    _write(tmp_path / "b", force=True)


def test_directory_without_manifest_is_not_a_bundle(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a complete bundle"):
        load_bundle(tmp_path / "half")


def test_modified_or_missing_file_is_detected(tmp_path):
    out = _write(tmp_path / "b")
    (out / "model.onnx").write_bytes(b"y" * 1000)
    with pytest.raises(BundleError, match="modified: model.onnx"):
        load_bundle(out)
    (out / "labels.txt").unlink()
    with pytest.raises(BundleError, match="missing: labels.txt"):
        load_bundle(out)
