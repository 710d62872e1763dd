"""Jetson bundles prepared without TensorRT: trtexec arguments per TensorRT version, build_engine.sh run against a
fake trtexec of each version (tests/fakes/fake_trtexec.py, whose rules cite NVIDIA's sources), DeepStream files
checked with ports of the nvinfer functions that read them."""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fakes.device import AGX_ORIN, ORIN_NANO, install_trtexec, run_script
from fakes.fake_tensorrt import cache_header, read_plan
from fakes.fake_trtexec import workspace_mib

from edge_resnet.backends.tensorrt.calibration_cache import read_calibration_cache
from edge_resnet.backends.tensorrt.deepstream import DeepStreamFiles, labels_text, nvinfer_config
from edge_resnet.backends.tensorrt.engine import read_record
from edge_resnet.backends.tensorrt.trtexec import trtexec_command
from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle, float_graph_for
from edge_resnet.data.preprocess import PreprocessSpec
from edge_resnet.errors import BackendError, BundleError, DataError
from edge_resnet.targets import BatchRange, TargetProfile, TensorRTOptions, get_target
from edge_resnet.types import ActivationFormat, BackendName, Precision, QuantMode

SHAPE = (3, 224, 224)
DEFAULT_BATCH = BatchRange(1, 4, 8)


def _profile(name: str, *, dla: int | None = None, quant_mode: QuantMode = QuantMode.EXPLICIT,
             fallback: Precision = Precision.FP16, batch: BatchRange = DEFAULT_BATCH, workspace_mb: int = 1024,
             versions: str = ">=8.5") -> TargetProfile:
    return TargetProfile(
        name=name, description=name, backend=BackendName.TENSORRT, device="cuda:0",
        activation_format=ActivationFormat.S8S8, quant_mode=quant_mode, fallback_precision=fallback,
        platform="jetson", batch=batch,
        tensorrt=TensorRTOptions(versions=versions, dla_core=dla, workspace_mb=workspace_mb, jetpack="6.2"),
    )


ORIN = _profile("orin-int8")
ORIN_DLA = _profile("orin-dla-int8", dla=1, batch=BatchRange(1, 2, 4))
XAVIER_NX = _profile("xavier-nx-int8", quant_mode=QuantMode.IMPLICIT, versions=">=8.5,<11")

IMAGENET = {"input_size": 224, "resize": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "channel_order": "rgb"}
EQUAL_STD = {"input_size": 224, "resize": 224, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.25, 0.25],
             "channel_order": "bgr"}

# ------------------------------------------------------------------------------------------- trtexec


def _cmd(profile: TargetProfile, version: str, precision: Precision = Precision.INT8, **kw) -> list[str]:
    return trtexec_command(profile, "model.onnx", "model.plan", precision, version, input_shape=SHAPE, **kw)


def test_common_arguments() -> None:
    cmd = _cmd(ORIN, "10.3.0")
    assert cmd[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--minShapes=input:1x3x224x224" in cmd
    assert "--optShapes=input:4x3x224x224" in cmd
    assert "--maxShapes=input:8x3x224x224" in cmd
    assert "--timingCacheFile=timing.cache" in cmd


@pytest.mark.parametrize("version", ["8.5.2", "8.6.2", "10.0.1", "10.3.0", "10.16.0", "11.4.1"])
def test_workspace_is_mib_without_a_suffix_on_every_version(version: str) -> None:
    """Row 7: ``--memPoolSize=workspace:1024M`` is ~1 PiB on trtexec 10.0.x (the unit applied twice); no suffix is
    MiB on 8.x and every 10.x/11.x (the fake parses it as that version's sampleOptions.cpp does)."""
    pool = [a for a in _cmd(ORIN, version) if a.startswith("--memPoolSize")]
    assert pool == ["--memPoolSize=workspace:1024"]
    assert workspace_mib("1024", tuple(int(v) for v in version.split("."))) == 1024
    assert not any(a.startswith("--workspace") for a in _cmd(ORIN, version))  # deprecated in 8.4


def test_fake_trtexec_models_the_10_0_suffix_bug() -> None:
    assert workspace_mib("1024M", (10, 0, 1)) == 1024 * 2**20
    assert workspace_mib("1024M", (10, 3, 0)) == workspace_mib("1024M", (8, 6, 2)) == 1024


@pytest.mark.parametrize(
    ("version", "precision_flags"),
    [("8.6.2", ["--int8", "--fp16"]), ("10.3.0", ["--int8", "--fp16"]), ("11.4.1", [])],
)
def test_precision_flags_per_version(version: str, precision_flags: list[str]) -> None:
    cmd = _cmd(ORIN, version)
    assert [a for a in cmd if a in ("--int8", "--fp16", "--best")] == precision_flags
    assert "--stronglyTyped" not in cmd  # 10: it may not be combined with --int8; 11: always on
    assert not any(a.startswith(("--useDLACore", "--allowGPUFallback", "--calib")) for a in cmd)


def test_strongly_typed_only_where_trtexec_has_it() -> None:
    """Row 8: FP32 on 10.x is --stronglyTyped; trtexec 8.6 has no such option ("Unknown option")."""
    assert "--stronglyTyped" in _cmd(ORIN, "10.3.0", Precision.FP32)
    assert "--stronglyTyped" not in _cmd(ORIN, "8.6.2", Precision.FP32)
    assert not any(a in ("--int8", "--fp16", "--stronglyTyped") for a in _cmd(ORIN, "11.4.1", Precision.FP32))


def test_int8_with_fp32_fallback_has_no_fp16() -> None:
    assert [a for a in _cmd(_profile("o", fallback=Precision.FP32), "10.3.0") if a in ("--int8", "--fp16")] == ["--int8"]


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
def test_dla_int8_is_implicit_from_the_float_graph(version: str) -> None:
    """Row 1: DLA takes INT8 only from implicit quantization (NVIDIA/TensorRT#2222)."""
    cmd = trtexec_command(ORIN_DLA, "model.float.onnx", "model.plan", Precision.INT8, version, input_shape=SHAPE,
                          calib_cache_name="calibration.device.cache")
    assert "--useDLACore=1" in cmd and "--allowGPUFallback" in cmd and "--int8" in cmd and "--fp16" in cmd
    assert cmd[-1] == "--calib=calibration.device.cache"
    assert {a.split(":", 1)[1] for a in cmd if a.startswith(("--minShapes", "--optShapes", "--maxShapes"))} == {
        "2x3x224x224"}  # DLA: static shapes


def test_dla_on_11_4_1_keeps_the_qdq_graph() -> None:
    cmd = trtexec_command(ORIN_DLA, "model.int8.onnx", "model.plan", Precision.INT8, "11.4.1", input_shape=SHAPE)
    assert "--useDLACore=1" in cmd and not any(a.startswith("--calib") for a in cmd)


@pytest.mark.parametrize("version", ["10.8.0", "10.16.0", "11.0.0", "11.3.0", "11.4.0"])
def test_dla_refused_where_tensorrt_has_none(version: str) -> None:
    with pytest.raises(BackendError, match="no DLA on Jetson"):
        _cmd(ORIN_DLA, version)


def test_dla_fp32_refused() -> None:
    with pytest.raises(BackendError, match="FP16 or INT8"):
        _cmd(ORIN_DLA, "10.3.0", Precision.FP32)


@pytest.mark.parametrize("version", ["8.5.2", "10.3.0"])
def test_implicit_uses_calib(version: str) -> None:
    cmd = _cmd(XAVIER_NX, version, calib_cache_name="calibration.device.cache")
    assert "--int8" in cmd and cmd[-1] == "--calib=calibration.device.cache"


def test_implicit_refused_on_11() -> None:
    with pytest.raises(BackendError, match="TensorRT 11 removed"):
        _cmd(_profile("implicit", quant_mode=QuantMode.IMPLICIT), "11.4.1")


# ------------------------------------------------------------------------------------ bundles and scripts


@pytest.fixture(scope="module")
def headless_graph():
    import torch

    torch.manual_seed(0)
    return float_graph_for(ModelSource(name="resnet18", include_top=False, pooling="avg"), 32)


def make_bundle(root: Path, fg, target: str, precision: Precision = Precision.INT8, labels=None,
                name: str | None = None) -> Path:
    out = root / (name or f"{target}-{precision.value}")
    compile_bundle(ModelSource(name="resnet18", num_classes=10), CompileOptions(
        target=target, precision=precision, calib="random", calib_count=8, progress=False,
        labels=tuple(labels) if labels else None), out, input_size=32, float_graph=fg)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, random_r18_graph, headless_graph):
    float_graph = random_r18_graph
    root = tmp_path_factory.mktemp("jetson-bundles")
    return {
        "nano": make_bundle(root, float_graph, "jetson-orin-nano", labels=[f"digit {i}" for i in range(10)]),
        "agx": make_bundle(root, float_graph, "jetson-agx-orin"),
        "xavier": make_bundle(root, float_graph, "jetson-xavier-nx"),
        "fp32": make_bundle(root, float_graph, "jetson-orin", Precision.FP32),
        "headless": make_bundle(root, headless_graph, "jetson-orin-nano", name="headless"),
    }


def copy_bundle(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize("version", ["8.6.2", "10.0.1", "10.3.0", "11.4.1"])
def test_script_builds_with_the_device_tensorrt(tmp_path: Path, bundles, version: str) -> None:
    """Rows 6/7/8/9: the script reads the TensorRT version from trtexec, uses that version's arguments, records the
    engine and prints the timing summary."""
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    calls = tmp_path / "calls.jsonl"
    install_trtexec(tmp_path / "bin", version, calls=calls)
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 0, res.stderr + res.stdout
    build = [c for c in _calls(calls) if "--help" not in c["argv"]]
    assert [c["rc"] for c in build] == [0]
    expected = trtexec_command(get_target("jetson-orin-nano"), "model.int8.onnx", "model.plan.partial",
                               Precision.INT8, version, input_shape=(3, 32, 32))[1:]
    assert build[0]["argv"] == expected
    assert build[0]["workspace_mib"] == 1024
    major, minor, patch = (int(v) for v in version.split("."))
    header, _ = read_plan((bundle / "model.plan").read_bytes())
    assert header == (major, minor, patch)
    record = read_record(bundle / "engine.json")
    assert record.tensorrt_version == version and record.device.sm_count == 8 and record.device.memory_mib == 7620
    assert record.onnx == "model.int8.onnx" and record.timing["throughput_qps"] == 812.5
    assert "trtexec timing on this device:" in res.stdout and "Throughput: 812.5 qps" in res.stdout
    assert not list(bundle.glob("*.partial"))


def test_script_fp32_on_tensorrt_8_6(tmp_path: Path, bundles) -> None:
    """Row 8: a script written with TensorRT 10 as the default no longer passes --stronglyTyped to trtexec 8.6."""
    bundle = copy_bundle(bundles["fp32"], tmp_path / "b")
    calls = tmp_path / "calls.jsonl"
    install_trtexec(tmp_path / "bin", "8.6.2", calls=calls)
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 0, res.stderr
    argv = [c for c in _calls(calls) if "--help" not in c["argv"]][0]["argv"]
    assert "--stronglyTyped" not in argv and not {"--int8", "--fp16"} & set(argv)
    install_trtexec(tmp_path / "bin10", "10.3.0", calls=tmp_path / "calls10.jsonl")
    assert run_script(copy_bundle(bundles["fp32"], tmp_path / "b10"), tmp_path / "bin10").returncode == 0
    assert "--stronglyTyped" in [c for c in _calls(tmp_path / "calls10.jsonl") if "--help" not in c["argv"]][0]["argv"]


@pytest.mark.parametrize(("key", "version"), [("xavier", "8.5.2"), ("xavier", "8.6.2"), ("agx", "8.6.2"),
                                              ("agx", "10.3.0")])
def test_script_writes_the_device_cache_header(tmp_path: Path, bundles, key: str, version: str) -> None:
    """Rows 1 and 6: implicit builds (JetPack 5, and every DLA INT8 build) get a calibration cache with the
    device's own header, made from the bundle's scales; the bundle's files are not changed."""
    bundle = copy_bundle(bundles[key], tmp_path / "b")
    before = (bundle / "calibration.cache").read_bytes()
    calls = tmp_path / "calls.jsonl"
    install_trtexec(tmp_path / "bin", version, device=AGX_ORIN if key == "agx" else ORIN_NANO, calls=calls)
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 0, res.stderr + res.stdout
    build = [c for c in _calls(calls) if "--help" not in c["argv"]][0]
    assert build["calib_header"] == cache_header(version)
    assert "--onnx=model.float.onnx" in build["argv"] and "--calib=calibration.device.cache" in build["argv"]
    if key == "agx":
        assert "--useDLACore=0" in build["argv"] and "--allowGPUFallback" in build["argv"]
    device_header, device_scales = read_calibration_cache(bundle / "calibration.device.cache")
    _, bundle_scales = read_calibration_cache(bundle / "calibration.cache")
    assert device_header == cache_header(version) and device_scales == bundle_scales
    assert (bundle / "calibration.cache").read_bytes() == before


def test_fake_trtexec_rejects_another_versions_cache(tmp_path: Path, bundles) -> None:
    """The rule the previous test relies on: 10.3 given the bundle's 8.5.2 header fails (DLA-SW#26)."""
    bundle = copy_bundle(bundles["xavier"], tmp_path / "b")
    install_trtexec(tmp_path / "bin", "10.3.0")
    res = subprocess.run([str(tmp_path / "bin" / "trtexec"), "--onnx=model.float.onnx", "--int8",
                          "--calib=calibration.cache", "--saveEngine=x.plan"], cwd=bundle, capture_output=True,
                         text=True)
    assert res.returncode == 1 and "bound to nullptr" in res.stdout


@pytest.mark.parametrize(("key", "version", "match"), [
    ("agx", "10.8.0", "no DLA on Jetson"), ("agx", "11.0.0", "no DLA on Jetson"),
    ("xavier", "11.4.1", "outside the versions target jetson-xavier-nx accepts"),
    ("nano", "8.4.1", "too old for a jetson target"), ("nano", "9.2.0", "not supported"),
])
def test_script_refuses_what_the_plan_refuses(tmp_path: Path, bundles, key: str, version: str, match: str) -> None:
    bundle = copy_bundle(bundles[key], tmp_path / "b")
    install_trtexec(tmp_path / "bin", version)
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 1 and match in res.stderr, res.stderr
    assert not (bundle / "model.plan").exists()


def test_script_refuses_a_modified_onnx(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    with open(bundle / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    install_trtexec(tmp_path / "bin", "10.3.0")
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 1 and "model.int8.onnx differs from the one the manifest lists" in res.stderr


def test_script_discards_a_timing_cache_of_another_tensorrt(tmp_path: Path, bundles) -> None:
    """trtexec fails with "TimingCache creation failed" on another version's cache: the script starts a new one."""
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    install_trtexec(tmp_path / "bin86", "8.6.2")
    install_trtexec(tmp_path / "bin10", "10.3.0")
    assert run_script(bundle, tmp_path / "bin86").returncode == 0
    res = run_script(bundle, tmp_path / "bin10")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "discarding timing.cache (made by TensorRT 8.6.2, this is 10.3.0)" in res.stdout
    assert read_record(bundle / "engine.json").tensorrt_version == "10.3.0"


def test_script_failure_leaves_no_engine(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    install_trtexec(tmp_path / "bin", "10.3.0", fail_build=True)
    res = run_script(bundle, tmp_path / "bin")
    assert res.returncode == 1 and "trtexec failed building model.plan" in res.stderr
    assert "Engine could not be created" in res.stderr  # the log's tail
    assert not (bundle / "model.plan").exists() and not (bundle / "engine.json").exists()


def test_script_explains_missing_trtexec(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(["bash", str(bundle / "build_engine.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "trtexec not found" in res.stderr and "TRTEXEC=" in res.stderr


def test_script_usage_and_unknown_option(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    ok = subprocess.run(["bash", str(bundle / "build_engine.sh"), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--deepstream" in ok.stdout and "--validate SRC" in ok.stdout
    assert "--frames" in ok.stdout
    bad = subprocess.run(["bash", str(bundle / "build_engine.sh"), "--fast"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown option --fast" in bad.stderr
    assert os.access(bundle / "build_engine.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(bundle / "build_engine.sh")], check=True)


@pytest.mark.parametrize(("name", "output"), [("nano", "probabilities"), ("headless", "features")])
def test_script_deepstream_engine(tmp_path: Path, bundles, name: str, output: str) -> None:
    bundle = copy_bundle(bundles[name], tmp_path / "b")
    install_trtexec(tmp_path / "bin", "10.3.0")
    res = run_script(bundle, tmp_path / "bin", "--deepstream")
    assert res.returncode == 0, res.stderr
    header, meta = read_plan((bundle / "model.deepstream.plan").read_bytes())
    assert header == (10, 3, 0) and meta["output"] == output
    assert read_record(bundle / "engine.json").extra["deepstream_engine"]["file"] == "model.deepstream.plan"


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.4.1"])
def test_script_frames_engine(tmp_path: Path, bundles, version: str) -> None:
    """--frames builds the frame graph (uint8 N x S x S x 3 frames, see backends/tensorrt/frames.py) with the main
    plan's arguments for its own input, no --inputIOFormats (trtexec then keeps UINT8, LINEAR), and records it."""
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    calls = tmp_path / "calls.jsonl"
    install_trtexec(tmp_path / "bin", version, calls=calls)
    res = run_script(bundle, tmp_path / "bin", "--frames")
    assert res.returncode == 0, res.stderr + res.stdout
    build = [c for c in _calls(calls) if "--help" not in c["argv"]]
    assert [c["rc"] for c in build] == [0, 0]
    expected = trtexec_command(get_target("jetson-orin-nano"), "model.frames.onnx", "model.frames.plan.partial",
                               Precision.INT8, version, input_name="frames", input_shape=(32, 32, 3))[1:]
    assert build[1]["argv"] == expected and not any(a.startswith("--inputIOFormats") for a in expected)
    header, meta = read_plan((bundle / "model.frames.plan").read_bytes())
    assert header == tuple(int(v) for v in version.split(".")) and meta["input_dtype"] == "uint8"
    frames = read_record(bundle / "engine.json").extra["frames_engine"]
    assert frames["file"] == "model.frames.plan" and frames["tensorrt_version"] == version
    assert frames["sha256"] == hashlib.sha256((bundle / "model.frames.plan").read_bytes()).hexdigest()
    graph = onnx.load(bundle / "model.frames.onnx")
    assert [n.op_type for n in graph.graph.node if "frames" in n.input] == ["Cast"]  # NVIDIA/TensorRT#3985


def test_script_frames_refused_for_an_implicit_bundle(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["xavier"], tmp_path / "b")
    install_trtexec(tmp_path / "bin", "8.5.2")
    res = run_script(bundle, tmp_path / "bin", "--frames")
    assert res.returncode == 1 and "no frame graph" in res.stderr and "normalise on the host" in res.stderr
    assert not (bundle / "model.frames.onnx").exists() and not (bundle / "engine.json").exists()


def test_script_validate_without_edge_resnet_says_how(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["nano"], tmp_path / "b")
    install_trtexec(tmp_path / "bin", "10.3.0")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    res = subprocess.run(["bash", str(bundle / "build_engine.sh"), "--validate", "digits:test"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "edge-resnet is not installed here" in res.stdout and "--data digits:test" in res.stdout


# ------------------------------------------------------------------------------------------ DeepStream


def parse_labels_file(text: str) -> list[list[str]]:
    """NvDsInferContextImpl::parseLabelsFile: one line per output layer, labels split on ';'."""
    labels = []
    for line in text.split("\n"):
        if line:
            labels.append(line.split(";"))
    return labels


def parse_attributes_from_softmax_layers(layers: list[np.ndarray], threshold: float,
                                         labels: list[list[str]]) -> list[tuple[int, int, float, str | None]]:
    """ClassifyPostprocessor::parseAttributesFromSoftmaxLayers for one frame: (layer, class, confidence, label)."""
    out = []
    for layer_index, probs in enumerate(layers):
        best, found = 0.0, None
        for c, p in enumerate(probs):
            if p > threshold and p > best:
                best, found = float(p), c
        if found is not None:
            label = labels[layer_index][found] if layer_index < len(labels) and found < len(labels[layer_index]) \
                else None
            out.append((layer_index, found, best, label))
    return out


def _ds_config(bundle: Path) -> configparser.SectionProxy:
    cp = configparser.ConfigParser()
    cp.read(bundle / "deepstream_nvinfer.txt")
    return cp["property"]


def test_labels_file_is_what_parse_labels_file_reads(bundles) -> None:
    """Row 2: every class gets its label through m_Labels[0][class]."""
    bundle = bundles["nano"]
    prop = _ds_config(bundle)
    labels = parse_labels_file((bundle / prop["labelfile-path"]).read_text())
    assert len(labels) == 1 and labels[0] == [f"digit {i}" for i in range(10)]
    assert (bundle / "labels.txt").read_text().splitlines() == labels[0]  # the runtime's file is unchanged


def test_labels_text_keeps_class_indices() -> None:
    assert parse_labels_file(labels_text(["a;b", "c", ""])) == [["a,b", "c", "class_2"]]


def test_deepstream_graph_gives_probabilities_nvinfer_labels(bundles) -> None:
    """Row 3: nvinfer's softmax parser takes a class only above threshold and above 0, so it needs probabilities:
    the DeepStream graph ends in a Softmax, and every frame gets its arg-max label with a probability."""
    bundle = bundles["nano"]
    prop = _ds_config(bundle)
    assert prop["output-blob-names"] == "probabilities" and prop["onnx-file"] == "model.deepstream.onnx"
    model = onnx.load(str(bundle / prop["onnx-file"]))
    assert model.graph.node[-1].op_type == "Softmax" and [o.name for o in model.graph.output] == ["probabilities"]
    # nvinfer with net-scale-factor=1 and zero offsets hands the graph raw pixels; the graph normalises them
    assert (prop["net-scale-factor"], prop["offsets"]) == ("1.0", "0.0;0.0;0.0")
    assert [i.name for i in model.graph.input] == ["pixels"]
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 3, 32, 32)).astype(np.float32)
    spec = json.loads((bundle / "manifest.json").read_text())["preprocess"]
    mean, std = (np.asarray(spec[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    x = (pixels / np.float32(255) - mean) / std  # the spec's float32 steps (PreprocessSpec._lut)
    probs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": pixels})[0]
    logits = ort.InferenceSession(str(bundle / "model.int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, softmax / softmax.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    labels = parse_labels_file((bundle / prop["labelfile-path"]).read_text())
    threshold = float(prop["classifier-threshold"])
    for p, z in zip(probs, logits, strict=True):
        [(_, cls, conf, label)] = parse_attributes_from_softmax_layers([p], threshold, labels)
        assert cls == int(z.argmax()) and label == f"digit {cls}" and 0 < conf <= 1
    # the raw logits a frame with all logits <= 0 would give: no label at all
    assert parse_attributes_from_softmax_layers([-np.abs(logits[0]) - 1], threshold, labels) == []


def nvinfer_sets_int8(prop: configparser.SectionProxy, bundle: Path) -> bool:
    """nvdsinfer_model_builder.cpp: INT8 only with network-mode=1 and an accessible int8-calib-file (else "INT8
    calibration file not specified. Trying FP16 mode.")."""
    calib = prop.get("int8-calib-file")
    return prop.getint("network-mode") == 1 and calib is not None and (bundle / calib).is_file()


def test_explicit_int8_deepstream_build_from_onnx_keeps_int8(bundles) -> None:
    """Row 4: a DeepStream build from onnx-file of a Q/DQ network needs the INT8 flag, which nvinfer sets only with
    an accessible int8-calib-file."""
    bundle = bundles["nano"]
    prop = _ds_config(bundle)
    assert nvinfer_sets_int8(prop, bundle)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(bundle / prop["onnx-file"])).graph.node}


def test_implicit_deepstream_uses_the_device_cache(tmp_path: Path, bundles) -> None:
    bundle = copy_bundle(bundles["xavier"], tmp_path / "b")
    prop = _ds_config(bundle)
    assert prop["int8-calib-file"] == "calibration.device.cache" and not nvinfer_sets_int8(prop, bundle)
    install_trtexec(tmp_path / "bin", "8.5.2")
    assert run_script(bundle, tmp_path / "bin").returncode == 0
    assert nvinfer_sets_int8(prop, bundle)  # build_engine.sh wrote it with the device's header
    assert read_calibration_cache(bundle / "calibration.device.cache")[0] == cache_header("8.5.2")


def test_headless_bundle_attaches_tensors(bundles) -> None:
    """Row 10: features are not class scores: network-type=100 and output-tensor-meta=1, no labels. Issue 13:
    the features graph takes raw pixels too (net-scale-factor=1, zero offsets), so nvinfer's features are the
    runtime's, to float rounding."""
    bundle = bundles["headless"]
    prop = _ds_config(bundle)
    assert prop["network-type"] == "100" and prop["output-tensor-meta"] == "1"
    assert prop["output-blob-names"] == "features" and prop["model-engine-file"] == "model.deepstream.plan"
    assert "labelfile-path" not in prop and "classifier-threshold" not in prop
    assert not (bundle / "labels.deepstream.txt").exists()
    assert (prop["net-scale-factor"], prop["offsets"]) == ("1.0", "0.0;0.0;0.0")
    model = onnx.load(str(bundle / prop["onnx-file"]))
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["features"]
    pixels = np.random.default_rng(1).integers(0, 256, size=(8, 3, 32, 32)).astype(np.float32)
    spec = json.loads((bundle / "manifest.json").read_text())["preprocess"]
    mean, std = (np.asarray(spec[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    features = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": pixels})[0]
    reference = ort.InferenceSession(str(bundle / "model.int8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": (pixels / np.float32(255) - mean) / std})[0]
    np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-6)
    script = (bundle / "build_engine.sh").read_text()
    assert "model.deepstream.onnx" in script and "model.deepstream.plan" in script


def test_dla_keys_only_with_dla(bundles) -> None:
    prop = _ds_config(bundles["agx"])
    assert (prop["enable-dla"], prop["use-dla-core"], prop["batch-size"]) == ("1", "0", "1")
    assert "enable-dla" not in _ds_config(bundles["nano"])


# ------------------------------------------------------------------------------------- normalisation

_FILES = DeepStreamFiles("m.onnx", "m.plan", "c.cache", "l.txt", "probabilities")


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


@pytest.mark.parametrize(("precision", "mode"), [("fp32", "0"), ("int8", "1"), ("fp16", "2")])
def test_network_mode(precision: str, mode: str) -> None:
    assert _parse(nvinfer_config(ORIN, IMAGENET, _FILES, 10, precision))["network-mode"] == mode


def test_int8_config_without_calib_file_refused() -> None:
    with pytest.raises(BundleError, match="int8-calib-file"):
        nvinfer_config(ORIN, IMAGENET, DeepStreamFiles("m.onnx", "m.plan", None, "l.txt", "probabilities"), 10, "int8")


@pytest.mark.parametrize("pixel", [[0, 0, 0], [255, 255, 255], [12, 200, 97], [124, 116, 104]])
def test_equal_std_normalisation_is_exact(pixel: list[int]) -> None:
    prop = _parse(nvinfer_config(ORIN, EQUAL_STD, _FILES, 10, "int8"))
    x = np.array(pixel, dtype=np.float64)
    np.testing.assert_allclose(_deepstream_y(prop, x), _spec_y(EQUAL_STD, x), atol=1e-9)
    assert prop["model-color-format"] == "1"  # bgr


@pytest.mark.parametrize("pixel", [[0, 0, 0], [255, 255, 255], [12, 200, 97], [255, 0, 128]])
def test_per_channel_std_within_documented_error(pixel: list[int], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        text = nvinfer_config(ORIN, IMAGENET, _FILES, 1000, "int8")
    bound = PreprocessSpec(mean=IMAGENET["mean"], std=IMAGENET["std"]).deepstream_normalization().max_abs_error
    assert 0 < bound < 0.05
    assert "net-scale-factor" in caplog.text and f"{bound:.4g}" in text  # warned, and stated in the file
    x = np.array(pixel, dtype=np.float64)
    assert np.abs(_deepstream_y(_parse(text), x) - _spec_y(IMAGENET, x)).max() <= bound + 1e-9


def test_resize_crop_difference_is_flagged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        text = nvinfer_config(ORIN, IMAGENET, _FILES, 10, "int8")
    assert "center crop" in text and "center crop" in caplog.text


@pytest.mark.parametrize(
    ("spec", "match"),
    [({**IMAGENET, "channel_order": "gray"}, "channel_order"), ({**IMAGENET, "std": [0.2, 0, 0.2]}, "std must be positive"),
     ({**IMAGENET, "mean": [0.5, 0.5]}, "list of 3 numbers")],
)
def test_bad_spec(spec: dict, match: str) -> None:
    with pytest.raises((BundleError, DataError), match=match):
        nvinfer_config(ORIN, spec, _FILES, 10, "int8")
