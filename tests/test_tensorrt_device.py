"""After ``./build_engine.sh`` on the device, the same bundle directory is the artifact of ``runtime.load``,
``edge-resnet validate`` and ``edge-resnet bench``: the engine is found through the manifest's declared device
files, checked against its record and this device, and the manifest is not touched.

The device is faked: trtexec (tests/fakes/fake_trtexec.py), ``tensorrt`` and ``pycuda`` (tests/fakes/fake_tensorrt.py),
each with the rules of one TensorRT version (cited there)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fakes.device import AGX_ORIN, ORIN_NANO, device_env, fake_site, install_trtexec, run_script
from fakes.fake_tensorrt import FakePyCudaDriver, FakeTensorRT

import edge_resnet.runtime as rt
from edge_resnet.backends.tensorrt import DeviceInfo, PyCudaRuntime
from edge_resnet.backends.tensorrt.engine import read_record
from edge_resnet.bundle import load_bundle
from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle, float_graph_for
from edge_resnet.errors import BundleError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, random_r18_graph) -> Path:
    """A jetson-orin-nano INT8 bundle prepared here (no TensorRT)."""
    fg = random_r18_graph
    out = tmp_path_factory.mktemp("prepared") / "bundle"
    compile_bundle(ModelSource(name="resnet18", num_classes=10), CompileOptions(
        target="jetson-orin-nano", calib="digits:train", calib_count=32, progress=False), out, input_size=32,
        float_graph=fg)
    return out


def built(prepared: Path, root: Path, version: str = "10.3.0", device: dict | None = None, *args: str) -> Path:
    bundle = shutil.copytree(prepared, root / "bundle")
    install_trtexec(root / "bin", version, device=device or ORIN_NANO)
    res = run_script(bundle, root / "bin", *args)
    assert res.returncode == 0, res.stderr + res.stdout
    return bundle


def device_runtime(version: str = "10.3.0", device: dict | None = None, execute_graphs: bool = False) -> dict:
    trt = FakeTensorRT(version, execute_graphs=execute_graphs)
    info = DeviceInfo(**(device or ORIN_NANO))
    return {"trt": trt, "cuda": PyCudaRuntime(FakePyCudaDriver(trt, info))}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepared_bundle_says_to_build_on_the_device(prepared: Path) -> None:
    bundle = load_bundle(prepared)
    art = bundle.artifact
    assert art.info["runnable"] is False and "engine" not in art.files
    assert art.device_build["engine"] == "model.plan" and art.device_build["record"] == "engine.json"
    with pytest.raises(BundleError, match=r"not been built on this device yet.*\n.*run ./build_engine.sh"):
        rt.load(prepared, **device_runtime())


def test_runtime_uses_the_device_built_engine(tmp_path: Path, prepared: Path) -> None:
    """Row 9: the bundle stays usable as it is; the manifest is unchanged and still verifies."""
    manifest_before = _sha(prepared / "manifest.json")
    bundle = built(prepared, tmp_path)
    assert _sha(bundle / "manifest.json") == manifest_before
    load_bundle(bundle, verify=True)  # every listed file unchanged; the device files are declared, not listed
    with rt.load(bundle, **device_runtime()) as model:
        frames = [np.full((32, 32, 3), v, np.uint8) for v in (0, 80, 160, 240)]
        results = model.classify(frames, top_k=3)
        assert len(results) == 4 and all(len(r.indices) == 3 for r in results)
        streamed = list(model.stream(frames))  # worker threads: per-thread CUDA contexts
        assert [r.classification.index for r in streamed] == [r.index for r in results]


@pytest.mark.parametrize(("change", "match"), [
    ("tamper", "not the engine its record describes"),
    ("other-tensorrt", r"TensorRT 10.3.0 \(this machine: 10.4.0\)"),
    ("other-orin", "16 SMs"),
])
def test_engine_checked_against_record_and_device(tmp_path: Path, prepared: Path, change: str, match: str) -> None:
    device = AGX_ORIN if change == "other-orin" else ORIN_NANO
    bundle = built(prepared, tmp_path, device=device)
    options = device_runtime()
    if change == "tamper":
        with open(bundle / "model.plan", "ab") as f:
            f.write(b"\0")
    elif change == "other-tensorrt":
        options = device_runtime("10.4.0")
    with pytest.raises(BundleError, match=match) as exc:
        rt.load(bundle, **options)
    assert "build_engine.sh" in str(exc.value)


def test_engine_of_another_bundle_refused(tmp_path: Path, prepared: Path) -> None:
    other = built(prepared, tmp_path / "a")
    mine = tmp_path / "mine"
    compile_bundle(ModelSource(name="resnet18", num_classes=10), CompileOptions(
        target="jetson-orin-nano", calib="random", calib_count=4, progress=False), mine, input_size=32,
        float_graph=float_graph_for(ModelSource(onnx=str(prepared / "model.float.onnx")), 32))
    for name in ("model.plan", "engine.json"):
        shutil.copy(other / name, mine / name)
    with pytest.raises(BundleError, match="built for another bundle"):
        rt.load(mine, **device_runtime())


def test_device_record_names_the_engine_the_manifest_declares(tmp_path: Path, prepared: Path) -> None:
    bundle = built(prepared, tmp_path)
    text = (bundle / "engine.json").read_text().replace('"engine": "model.plan"', '"engine": "../model.plan"')
    (bundle / "engine.json").write_text(text)
    with pytest.raises(BundleError, match="describes '../model.plan'"):
        rt.load(bundle, **device_runtime())


def test_runtime_feeds_uint8_frames_to_the_device_built_frame_engine(tmp_path: Path, prepared: Path) -> None:
    """After ./build_engine.sh --frames, runtime.load gives the frame engine resized, cropped uint8 frames; the
    numbers are the host path's (the fake engines run the graphs trtexec built them from with ONNX Runtime)."""
    bundle = built(prepared, tmp_path, "10.3.0", None, "--frames")
    frames = [np.random.default_rng(i).integers(0, 256, size=(40, 52, 3), dtype=np.uint8) for i in range(5)]
    with rt.load(bundle, **device_runtime(execute_graphs=True)) as model, \
            rt.load(bundle, normalize_in_engine=False, **device_runtime(execute_graphs=True)) as host:
        assert model.frame_runner is not None and model.frame_runner.input_dtype == np.uint8
        np.testing.assert_allclose(model.infer(frames), host.infer(frames), rtol=1e-5, atol=1e-5)
        assert [r.index for r in model.classify(frames)] == [r.index for r in host.classify(frames)]


def test_without_the_frame_engine_the_host_normalises(tmp_path: Path, prepared: Path, caplog) -> None:
    bundle = built(prepared, tmp_path)  # no --frames
    with caplog.at_level("INFO", logger="edge_resnet.runtime.model"), rt.load(bundle, **device_runtime()) as model:
        assert model.frame_runner is None
        assert len(model.classify(np.zeros((32, 32, 3), np.uint8))) == 1
    assert "frame engine" in caplog.text and "--frames" in caplog.text
    assert "does not list" not in caplog.text  # the device's files are declared (device_build), not strangers
    with pytest.raises(BundleError, match=r"not been built on this device\n.*build_engine.sh --frames"):
        rt.load(bundle, normalize_in_engine=True, **device_runtime())


def test_a_replaced_frame_engine_is_refused(tmp_path: Path, prepared: Path) -> None:
    bundle = built(prepared, tmp_path, "10.3.0", None, "--frames")
    with open(bundle / "model.frames.plan", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="not the frame engine the record describes"):
        rt.load(bundle, normalize_in_engine=True, **device_runtime())


@pytest.mark.parametrize("name", ["../outside.plan", "/etc/passwd", "sub/../../x"])
def test_a_device_file_outside_the_bundle_is_refused_when_the_bundle_opens(tmp_path: Path, prepared: Path,
                                                                           name: str) -> None:
    """The device's files are declared in the manifest, not hashed (they do not exist yet); a re-hashed manifest
    naming one outside the bundle is refused at open, before anything is read or written."""
    from test_hostile import edit_manifest

    bundle = shutil.copytree(prepared, tmp_path / "bundle")
    edit_manifest(bundle, lambda m: {**m, "artifact": {**m["artifact"], "device_build": {
        **m["artifact"]["device_build"], "frames_engine": name}}})
    with pytest.raises(BundleError, match="artifact.device_build.frames_engine .*a bundle may only name files inside"):
        load_bundle(bundle)


@pytest.mark.slow
def test_validate_and_bench_run_on_the_device(tmp_path: Path, prepared: Path) -> None:
    """`edge-resnet validate` and `bench` as a user on the device runs them (fake tensorrt/pycuda importable)."""
    bundle = built(prepared, tmp_path)
    env = device_env(fake_site(tmp_path / "site"), tmp_path / "bin", "10.3.0")
    cli = str(Path(ROOT / ".venv/bin/edge-resnet")) if (ROOT / ".venv/bin/edge-resnet").exists() else "edge-resnet"
    val = subprocess.run([cli, "validate", str(bundle), "--data", "digits:test", "--count", "32", "--no-progress",
                          "--no-per-layer"], env=env, capture_output=True, text=True, timeout=300)
    assert val.returncode == 0, val.stderr
    assert "tensorrt" in val.stdout
    bench = subprocess.run([cli, "bench", str(bundle), "--batch", "1", "--iters", "5", "--warmup", "1"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert "tensorrt" in bench.stdout


# --------------------------------------------------------------------------------- the README's steps


def readme_block(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert m, f"README.md has no {marker} block"
    return [line for line in m.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_jetson_steps(tmp_path: Path) -> None:
    """Every command of the README's Jetson section, the device's with the fakes (TensorRT 10.3, an Orin Nano)."""
    host, device = tmp_path / "host", tmp_path / "device"
    host.mkdir()
    device.mkdir()
    venv_bin = Path(ROOT / ".venv/bin")
    env_host = {**__import__("os").environ}
    if venv_bin.is_dir():
        env_host["PATH"] = f"{venv_bin}:{env_host['PATH']}"
    for line in readme_block("jetson-host-steps"):
        res = subprocess.run(["bash", "-c", line], cwd=host, env=env_host, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{line}\n{res.stderr}"
    shutil.copy(host / "bundle.tar", device / "bundle.tar")  # "copy bundle.tar to the Jetson"
    install_trtexec(tmp_path / "bin", "10.3.0")
    env = device_env(fake_site(tmp_path / "site"), tmp_path / "bin", "10.3.0")
    if venv_bin.is_dir():
        env["PATH"] = f"{tmp_path / 'bin'}:{venv_bin}:{env['PATH']}"
    outputs = []
    for line in readme_block("jetson-device-steps"):
        res = subprocess.run(["bash", "-c", line], cwd=device, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"
        outputs.append(res.stdout)
    assert (device / "bundle" / "model.plan").is_file() and (device / "bundle" / "model.deepstream.plan").is_file()
    assert read_record(device / "bundle" / "engine.json").extra["frames_engine"]["file"] == "model.frames.plan"
    assert "trtexec timing on this device" in outputs[1]
    assert "artifact  jetson-orin-nano: tensorrt" in outputs[1] and "top-1" in outputs[1]  # build_engine.sh --validate
    assert "Classification(" in outputs[-1]
