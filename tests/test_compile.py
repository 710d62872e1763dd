"""edge-resnet compile: bundles for Jetson prepared on this host, errors, the manifest."""

from __future__ import annotations

import configparser
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edge_resnet.backends.tensorrt.calibration_cache import read_calibration_cache
from edge_resnet.cli.app import cli
from edge_resnet.data.preprocess import PreprocessSpec


def _compile(args, cache_dir):
    result = CliRunner().invoke(cli, ["compile", *args], env={"EDGE_RESNET_CACHE": str(cache_dir)})
    return result


@pytest.fixture(scope="module")
def jetson_bundle(tmp_path_factory, digits_r18, cache_dir):
    out = tmp_path_factory.mktemp("jet") / "bundle"
    r = _compile(["--model", "resnet18", "--num-classes", "10", "--weights", str(digits_r18.checkpoint),
                  "--input-size", "32", "--resize", "32", "--target", "jetson", "--calib", "digits:train",
                  "--calib-count", "128", "-o", str(out)], cache_dir)
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.mark.slow
def test_jetson_bundle_from_a_host_without_tensorrt(jetson_bundle):
    out, output = jetson_bundle
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "model.float.onnx", "model.int8.onnx", "build_engine.sh", "calibration.cache",
            "deepstream_nvinfer.txt", "labels.txt", "scales.json"} <= names
    assert "engine not built here" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["info"]["runnable"] is False
    assert manifest["target"]["name"] == "jetson-orin"
    assert manifest["calibration"]["count"] == 128 and manifest["calibration"]["random"] is False
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert (out / "labels.txt").read_text().split() == [str(i) for i in range(10)]  # digits' class folders
    script = (out / "build_engine.sh").read_text()
    assert "--onnx=model.int8.onnx" in script and "--saveEngine=model.plan" in script
    assert "input:1x3x32x32" in script and "input:8x3x32x32" in script


@pytest.mark.slow
def test_jetson_deepstream_config_reproduces_the_preprocessing(jetson_bundle):
    """nvinfer has one net-scale-factor: with scale 1 and zero offsets it passes raw pixels, and the DeepStream
    graph does the per-channel mean/std itself, with the spec's own float32 steps: exact, not approximate."""
    import onnxruntime as ort

    out, _ = jetson_bundle
    cfg = configparser.ConfigParser()
    cfg.read(out / "deepstream_nvinfer.txt")
    p = cfg["property"]
    assert float(p["net-scale-factor"]) == 1.0 and [float(v) for v in p["offsets"].split(";")] == [0.0, 0.0, 0.0]
    spec = PreprocessSpec.from_dict(json.loads((out / "manifest.json").read_text())["preprocess"])
    graph = onnx.load(str(out / p["onnx-file"]))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    pixels = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)  # what nvinfer gives (RGB, NCHW)
    normalized = session.run(["input"], {"pixels": pixels})[0]
    np.testing.assert_array_equal(normalized, spec.apply_batch(list(rgb), "rgb"))  # bit for bit
    assert p["network-mode"] == "1" and p["network-type"] == "1" and p["labelfile-path"] == "labels.deepstream.txt"
    assert (out / "labels.deepstream.txt").read_text() == ";".join(str(i) for i in range(10)) + "\n"


@pytest.mark.slow
def test_calibration_cache_has_every_tensor_in_trt_text_format(jetson_bundle):
    out, _ = jetson_bundle
    import onnx

    from edge_resnet.backends.tensorrt.dla import activation_tensors

    header, scales = read_calibration_cache(out / "calibration.cache")
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    assert list(scales) == activation_tensors(onnx.load(str(out / "model.float.onnx")))  # every activation
    quantizers = json.loads((out / "scales.json").read_text())["quantizers"]
    assert quantizers and all(scales[t] == pytest.approx(q["scale"], rel=1e-6) for t, q in quantizers.items())


def test_int8_without_calibration_data_is_an_error(tmp_path, cache_dir):
    r = _compile(["--model", "resnet18", "--input-size", "32", "--target", "jetson", "-o", str(tmp_path / "b")], cache_dir)
    assert r.exit_code != 0
    assert "--int8 needs calibration data" in r.output and "--calib random" in r.output
    assert not (tmp_path / "b").exists()


def test_unknown_target_lists_known_ones(tmp_path, cache_dir):
    r = _compile(["--model", "resnet18", "--target", "tpu", "--calib", "random", "-o", str(tmp_path / "b")], cache_dir)
    assert r.exit_code != 0 and "unknown target 'tpu'" in r.output and "jetson-orin" in r.output


@pytest.mark.slow
def test_random_calibration_is_marked(tmp_path, cache_dir):
    out = tmp_path / "b"
    r = _compile(["--model", "resnet18", "--num-classes", "4", "--input-size", "32", "--target", "jetson-xavier-nx",
                  "--calib", "random", "--calib-count", "16", "-o", str(out)], cache_dir)
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["random"] is True
    # implicit (JetPack 5): float ONNX + cache, and trtexec gets the cache with --int8
    assert "int8" not in manifest["graphs"]
    script = (out / "build_engine.sh").read_text()
    assert "--onnx=model.float.onnx" in script and "--calib=calibration.device.cache" in script and "--int8" in script
    # nvinfer needs the cache with the device's header, which build_engine.sh writes
    assert "int8-calib-file=calibration.device.cache" in (out / "deepstream_nvinfer.txt").read_text()
