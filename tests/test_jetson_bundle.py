"""Jetson bundle: trtexec command per TensorRT generation, build_engine.sh, DeepStream nvinfer config, labels."""

from __future__ import annotations

import configparser
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.data.preprocess import PreprocessSpec
from edge_resnet.deploy.jetson import (
    deepstream_nvinfer_config,
    trtexec_command,
    write_build_script,
    write_labels,
)
from edge_resnet.errors import BackendError, BundleError, DataError
from edge_resnet.targets import BatchRange, TargetProfile, TensorRTOptions
from edge_resnet.types import ActivationFormat, BackendName, Precision, QuantMode

SHAPE = (3, 224, 224)
DEFAULT_BATCH = BatchRange(1, 4, 8)


def _profile(name: str, *, dla: int | None = None, quant_mode: QuantMode = QuantMode.EXPLICIT,
             fallback: Precision = Precision.FP16, batch: BatchRange = DEFAULT_BATCH,
             workspace_mb: int = 1024) -> TargetProfile:
    return TargetProfile(
        name=name, description=name, backend=BackendName.TENSORRT, device="cuda:0",
        activation_format=ActivationFormat.S8S8, quant_mode=quant_mode, fallback_precision=fallback,
        platform="jetson", batch=batch,
        tensorrt=TensorRTOptions(versions=">=8.5", dla_core=dla, workspace_mb=workspace_mb, jetpack="6.2"),
    )


ORIN = _profile("orin-int8")
ORIN_DLA = _profile("orin-dla-int8", dla=1, batch=BatchRange(1, 2, 4))
XAVIER_NX = _profile("xavier-nx-int8", quant_mode=QuantMode.IMPLICIT)

IMAGENET = {"input_size": 224, "resize": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "channel_order": "rgb"}
EQUAL_STD = {"input_size": 224, "resize": 224, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25],
             "channel_order": "bgr"}

# ------------------------------------------------------------------------------------------- trtexec


def _cmd(profile: TargetProfile, generation: int, precision: Precision = Precision.INT8, **kw) -> list[str]:
    return trtexec_command(profile, "model.onnx", "model.plan", precision, generation, input_shape=SHAPE, **kw)


def test_common_arguments() -> None:
    cmd = _cmd(ORIN, 10)
    assert cmd[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--minShapes=input:1x3x224x224" in cmd
    assert "--optShapes=input:4x3x224x224" in cmd
    assert "--maxShapes=input:8x3x224x224" in cmd
    assert "--timingCacheFile=timing.cache" in cmd


@pytest.mark.parametrize(
    ("generation", "workspace", "precision_flags"),
    [(8, "--workspace=1024", ["--int8", "--fp16"]),
     (10, "--memPoolSize=workspace:1024M", ["--int8", "--fp16"]),
     (11, "--memPoolSize=workspace:1024M", [])],
)
def test_flags_per_generation(generation: int, workspace: str, precision_flags: list[str]) -> None:
    cmd = _cmd(ORIN, generation)
    assert workspace in cmd
    assert [a for a in cmd if a in ("--int8", "--fp16", "--best")] == precision_flags
    assert not any(a.startswith("--workspace") for a in cmd) or generation == 8
    assert not any(a.startswith("--memPoolSize") for a in cmd) or generation >= 10
    assert "--stronglyTyped" not in cmd  # 10: it may not be combined with --int8; 11: always on
    assert not any(a.startswith(("--useDLACore", "--allowGPUFallback", "--calib")) for a in cmd)


def test_int8_with_fp32_fallback_has_no_fp16() -> None:
    assert [a for a in _cmd(_profile("o", fallback=Precision.FP32), 10) if a in ("--int8", "--fp16")] == ["--int8"]


def test_fp16_and_fp32_builds() -> None:
    assert [a for a in _cmd(ORIN, 8, Precision.FP16) if a in ("--int8", "--fp16")] == ["--fp16"]
    assert "--stronglyTyped" in _cmd(ORIN, 10, Precision.FP32)  # no precision flag: strongly typed is allowed
    assert not any(a in ("--int8", "--fp16", "--stronglyTyped") for a in _cmd(ORIN, 11, Precision.FP16))


@pytest.mark.parametrize("generation", [8, 10, 11])
def test_dla_flags_only_with_dla(generation: int) -> None:
    cmd = _cmd(ORIN_DLA, generation)
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd
    assert {a.split(":", 1)[1] for a in cmd if a.startswith(("--minShapes", "--optShapes", "--maxShapes"))} == {
        "2x3x224x224"
    }  # DLA: static shapes


def test_dla_without_gpu_fallback() -> None:
    profile = TargetProfile(
        name="dla-strict", description="", backend=BackendName.TENSORRT, device="cuda:0",
        activation_format=ActivationFormat.S8S8, platform="jetson",
        tensorrt=TensorRTOptions(dla_core=0, gpu_fallback=False),
    )
    cmd = _cmd(profile, 10)
    assert "--useDLACore=0" in cmd and "--allowGPUFallback" not in cmd


def test_dla_fp32_refused() -> None:
    with pytest.raises(BackendError, match="FP16 or INT8"):
        _cmd(ORIN_DLA, 10, Precision.FP32)


@pytest.mark.parametrize("generation", [8])
def test_implicit_jetpack5_uses_calib(generation: int) -> None:
    cmd = _cmd(XAVIER_NX, generation, calib_cache_name="calibration.cache")
    assert "--int8" in cmd and cmd[-1] == "--calib=calibration.cache"


@pytest.mark.parametrize("generation", [10, 11])
def test_implicit_refused_on_10_and_later(generation: int) -> None:
    with pytest.raises(BackendError, match="implicit INT8 calibration"):
        _cmd(XAVIER_NX, generation, calib_cache_name="calibration.cache")


def test_calibration_cache_only_with_implicit() -> None:
    with pytest.raises(BackendError, match="needs a calibration cache"):
        _cmd(XAVIER_NX, 8)
    with pytest.raises(BackendError, match="would be ignored"):
        _cmd(ORIN, 8, calib_cache_name="calibration.cache")


def test_unknown_generation() -> None:
    with pytest.raises(BackendError, match="unknown TensorRT generation 9"):
        _cmd(ORIN, 9)


# ---------------------------------------------------------------------------------------- build script

FAKE_TRTEXEC = """#!/usr/bin/env bash
printf '%s\\n' "$@" > trtexec_args.txt
for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done
"""


def _script(tmp_path: Path, profile: TargetProfile = ORIN, generation: int = 10, **kw) -> Path:
    return write_build_script(tmp_path / "bundle" / "build_engine.sh", profile, "model.onnx", "model.plan",
                              Precision.INT8, generation, input_shape=SHAPE, **kw)


def test_script_is_executable_bash_with_strict_mode(tmp_path: Path) -> None:
    path = _script(tmp_path)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert "/usr/src/tensorrt/bin/trtexec" in text and "command -v trtexec" in text
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_script_runs_the_exact_command(tmp_path: Path) -> None:
    path = _script(tmp_path, ORIN_DLA, 8)
    bundle = path.parent
    (bundle / "model.onnx").write_bytes(b"onnx")
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, check=True)
    expected = trtexec_command(ORIN_DLA, "model.onnx", "model.plan", Precision.INT8, 8, input_shape=SHAPE)
    assert (bundle / "trtexec_args.txt").read_text().splitlines() == expected[1:]
    assert (bundle / "model.plan").exists()
    assert "--useDLACore=1" in out.stdout and "wrote model.plan" in out.stdout


def test_script_explains_missing_trtexec(tmp_path: Path) -> None:
    path = _script(tmp_path)
    (path.parent / "model.onnx").write_bytes(b"onnx")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "trtexec not found" in res.stderr and "TRTEXEC=" in res.stderr


def test_script_explains_missing_inputs(tmp_path: Path) -> None:
    path = _script(tmp_path, XAVIER_NX, 8, calib_cache_name="calibration.cache")
    (path.parent / "model.onnx").write_bytes(b"onnx")
    env = {**os.environ, "TRTEXEC": "/bin/true"}
    res = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "calibration.cache is missing" in res.stderr


# ------------------------------------------------------------------------------------------ DeepStream


def _parse(text: str) -> configparser.SectionProxy:
    cp = configparser.ConfigParser()
    cp.read_string(text)
    return cp["property"]


def _deepstream_y(prop: configparser.SectionProxy, pixel: np.ndarray) -> np.ndarray:
    scale = prop.getfloat("net-scale-factor")
    offsets = np.array([float(v) for v in prop["offsets"].split(";")])
    return scale * (pixel - offsets)


def _spec_y(spec: dict, pixel: np.ndarray) -> np.ndarray:
    return (pixel / 255.0 - np.array(spec["mean"])) / np.array(spec["std"])


def test_config_keys_for_explicit_int8_classifier() -> None:
    prop = _parse(deepstream_nvinfer_config(ORIN, EQUAL_STD, "model.onnx", "model.plan", "labels.txt", 10))
    assert prop["onnx-file"] == "model.onnx" and prop["model-engine-file"] == "model.plan"
    assert prop["labelfile-path"] == "labels.txt"
    assert (prop["network-mode"], prop["network-type"], prop["process-mode"], prop["gie-unique-id"]) == ("1", "1", "1", "1")
    assert prop["infer-dims"] == "3;224;224" and prop["batch-size"] == "8"
    assert prop["model-color-format"] == "1"  # bgr
    assert prop["output-blob-names"] == "logits"
    assert "classifier-threshold" in prop
    assert "int8-calib-file" not in prop
    assert "enable-dla" not in prop and "use-dla-core" not in prop


@pytest.mark.parametrize(("precision", "mode"), [(Precision.FP32, "0"), (Precision.INT8, "1"), (Precision.FP16, "2")])
def test_network_mode(precision: Precision, mode: str) -> None:
    text = deepstream_nvinfer_config(ORIN, IMAGENET, "m.onnx", "m.plan", "l.txt", 10, precision=precision)
    assert _parse(text)["network-mode"] == mode


def test_int8_calib_file_only_for_implicit() -> None:
    prop = _parse(deepstream_nvinfer_config(XAVIER_NX, IMAGENET, "m.onnx", "m.plan", "l.txt", 10,
                                            calib_cache_name="calibration.cache"))
    assert prop["int8-calib-file"] == "calibration.cache"
    with pytest.raises(BundleError, match="implicit profiles only"):
        deepstream_nvinfer_config(ORIN, IMAGENET, "m.onnx", "m.plan", "l.txt", 10, calib_cache_name="c.cache")
    with pytest.raises(BundleError, match="implicit profiles only"):
        deepstream_nvinfer_config(XAVIER_NX, IMAGENET, "m.onnx", "m.plan", "l.txt", 10)


def test_dla_keys_only_with_dla() -> None:
    prop = _parse(deepstream_nvinfer_config(ORIN_DLA, IMAGENET, "m.onnx", "m.plan", "l.txt", 10))
    assert (prop["enable-dla"], prop["use-dla-core"], prop["batch-size"]) == ("1", "1", "2")


@pytest.mark.parametrize("pixel", [[0, 0, 0], [255, 255, 255], [12, 200, 97], [124, 116, 104]])
def test_equal_std_normalisation_is_exact(pixel: list[int]) -> None:
    prop = _parse(deepstream_nvinfer_config(ORIN, EQUAL_STD, "m.onnx", "m.plan", "l.txt", 10))
    x = np.array(pixel, dtype=np.float64)
    np.testing.assert_allclose(_deepstream_y(prop, x), _spec_y(EQUAL_STD, x), atol=1e-9)


@pytest.mark.parametrize("pixel", [[0, 0, 0], [255, 255, 255], [12, 200, 97], [255, 0, 128]])
def test_per_channel_std_within_documented_error(pixel: list[int], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        text = deepstream_nvinfer_config(ORIN, IMAGENET, "m.onnx", "m.plan", "l.txt", 1000)
    bound = PreprocessSpec(mean=IMAGENET["mean"], std=IMAGENET["std"]).deepstream_normalization().max_abs_error
    assert 0 < bound < 0.05
    assert "net-scale-factor" in caplog.text and f"{bound:.4g}" in text  # warned, and stated in the file
    x = np.array(pixel, dtype=np.float64)
    assert np.abs(_deepstream_y(_parse(text), x) - _spec_y(IMAGENET, x)).max() <= bound + 1e-9


def test_error_bound_is_attained_at_an_extreme_pixel() -> None:
    norm = PreprocessSpec(mean=IMAGENET["mean"], std=IMAGENET["std"]).deepstream_normalization()
    extremes = [np.array(p, float) for p in ([0, 0, 0], [255, 255, 255])]
    worst = max(np.abs(norm.net_scale_factor * (x - np.array(norm.offsets)) - _spec_y(IMAGENET, x)).max()
                for x in extremes)
    assert worst == pytest.approx(norm.max_abs_error)


def test_offsets_and_scale_from_mean_std() -> None:
    norm = PreprocessSpec(mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25)).deepstream_normalization()
    assert norm.offsets == pytest.approx((127.5, 102.0, 76.5))
    assert norm.net_scale_factor == pytest.approx(1 / (255 * 0.25)) and norm.max_abs_error == 0


def test_resize_crop_difference_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        text = deepstream_nvinfer_config(ORIN, IMAGENET, "m.onnx", "m.plan", "l.txt", 10)
    assert "center crop" in text and "center crop" in caplog.text


@pytest.mark.parametrize(
    ("spec", "match"),
    [({**IMAGENET, "channel_order": "gray"}, "channel_order"), ({**IMAGENET, "std": [0.2, 0, 0.2]}, "std must be positive"),
     ({**IMAGENET, "mean": [0.5, 0.5]}, "list of 3 numbers")],
)
def test_bad_spec(spec: dict, match: str) -> None:
    with pytest.raises((BundleError, DataError), match=match):
        deepstream_nvinfer_config(ORIN, spec, "m.onnx", "m.plan", "l.txt", 10)


# ---------------------------------------------------------------------------------------------- labels


def test_labels_round_trip(tmp_path: Path) -> None:
    names = ["tench", "goldfish", "great white shark"]
    path = write_labels(tmp_path / "labels.txt", names)
    assert path.read_text().splitlines() == ["tench;goldfish;great white shark"]
    assert path.read_text().strip().split(";") == names


@pytest.mark.parametrize("names", [[], ["a;b"], ["a", ""], ["x\ny"]])
def test_bad_labels(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(BundleError):
        write_labels(tmp_path / "labels.txt", names)
