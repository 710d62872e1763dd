"""Bad Keras/safetensors input gets one clear message each: exit != 0, no traceback, the fix named."""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from keras_reference import build, save

from edge_resnet.cli.app import cli

SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("keras-bad")
    resnet = build("ResNet50", classes=5, size=SIZE)
    out = {fmt: save(resnet, fmt, d) for fmt in ("keras", "weights.h5", "h5")}
    headless = build("ResNet50V2", classes=None, size=SIZE)
    out["headless"] = save(headless, "keras", d)
    out["headless_model"] = headless
    mobilenet = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3), classes=3)
    out["mobilenet"] = d / "mobilenet.keras"
    mobilenet.save(out["mobilenet"])
    seq = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    out["sequential.h5"] = d / "small.h5"
    seq.save(out["sequential.h5"])
    out["sequential.weights.h5"] = d / "small.weights.h5"
    seq.save_weights(out["sequential.weights.h5"])
    return out


def fails(args: list[str], *expected: str) -> str:
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0, r.output
    assert isinstance(r.exception, SystemExit), f"an uncaught {type(r.exception).__name__}: {r.exception}"
    assert "Traceback" not in r.output
    assert r.output.count("error:") == 1, r.output
    for text in expected:
        assert text in r.output, r.output
    print(" ".join(args[:1] + [a.rsplit("/", 1)[-1] for a in args[1:]]), "->", r.output.strip())
    return r.output


def export(tmp_path, weights, *extra: str) -> list[str]:
    return ["export", "--weights", str(weights), *extra, "--input-size", str(SIZE), "-o", str(tmp_path / "m.onnx")]


def test_keras_mobilenet_is_not_a_resnet(files, tmp_path):
    fails(export(tmp_path, files["mobilenet"]), "is not a Keras ResNet", "MobileNetV2", "mobilenetv2_0.35_32")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("key", ["sequential.h5", "sequential.weights.h5"])
def test_small_sequential_model_is_not_a_resnet(files, tmp_path, key):
    fails(export(tmp_path, files[key]), "is not a Keras ResNet", "dense")


@pytest.mark.parametrize("fmt", ["h5", "weights.h5", "keras"])
def test_truncated_file(files, tmp_path, fmt):
    data = files[fmt].read_bytes()
    bad = tmp_path / f"truncated.{fmt}"
    bad.write_bytes(data[: len(data) // 2])
    fails(export(tmp_path, bad), "truncated")


def test_keras_zip_member_leaving_the_folder(files, tmp_path):
    bad = tmp_path / "evil.keras"
    with zipfile.ZipFile(files["keras"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../../outside.txt", b"x")
    fails(export(tmp_path, bad), "'../../outside.txt'", "leaves the archive's folder")
    assert not (tmp_path.parent / "outside.txt").exists()


def test_keras_zip_absolute_member(files, tmp_path):
    bad = tmp_path / "abs.keras"
    with zipfile.ZipFile(files["keras"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(zipfile.ZipInfo("/tmp/abs.txt"), b"x")
    fails(export(tmp_path, bad), "is an absolute path")


def test_h5_external_link_is_refused(files, tmp_path):
    bad = tmp_path / "linked.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1_conv"])
        g = f.create_group("conv1_conv")
        g.attrs["weight_names"] = np.array([b"conv1_conv/kernel:0"])
        g["conv1_conv"] = h5py.ExternalLink(str(files["h5"]), "/model_weights/conv1_conv/conv1_conv")
    fails(export(tmp_path, bad), "ExternalLink", "refused")


def test_hdf5_that_is_not_keras(tmp_path):
    bad = tmp_path / "data.h5"
    with h5py.File(bad, "w") as f:
        f["images"] = np.zeros((2, 3))
    fails(export(tmp_path, bad), "not a Keras weights file")


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model", "resnet101"], ["--model resnet101 is ResNet-101", "a Keras ResNet50 with 5 classes",
                                "--model resnet50-v1"]),
    (["--model", "resnet18"], ["Keras Applications has no ResNet-18/34"]),
    (["--model", "resnet50-v2"], ["is v2", "ResNet50/101/152 are v1"]),
    (["--model", "resnet50", "--variant", "v1.5"], ["is v1.5"]),
    (["--num-classes", "10"], ["--num-classes 10 does not match", "pass --num-classes 5"]),
])
def test_options_that_contradict_the_file(files, tmp_path, extra, expected):
    fails(export(tmp_path, files["keras"], *extra), *expected)


def test_headless_file_needs_no_top(files, tmp_path):
    fails(export(tmp_path, files["headless"]), "include_top=False", "--no-top")


def test_compile_checks_the_options_too(files, tmp_path):
    fails(["compile", "--weights", str(files["h5"]), "--num-classes", "3", "--target", "onnxruntime", "--fp32",
           "-o", str(tmp_path / "b")], "--num-classes 3 does not match")
    assert not (tmp_path / "b").exists()


def test_python_api_names_the_mismatch(files):
    from edge_resnet.errors import CheckpointError
    from edge_resnet.models import build_model, load_weights

    with pytest.raises(CheckpointError, match=r"a Keras ResNet50 with 5 classes.*variant v1.5 \(the file: v1\)"):
        load_weights(build_model("resnet50", num_classes=5), files["keras"])
    model = build_model("resnet50-v1", num_classes=5)
    load_weights(model, files["weights.h5"])
    assert model.bn1.eps == pytest.approx(1.001e-5)


def test_headless_file_with_no_top_gives_keras_features(files):
    """A file saved with include_top=False builds with --no-top: Keras's last feature map, exactly."""
    import torch
    from keras_reference import logits

    from edge_resnet.models.from_weights import build_from_options

    model, digest = build_from_options(None, None, str(files["headless"]), None, True, "none")
    assert model.variant.value == "v2" and not hasattr(model, "fc") and len(digest) == 64
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    ref = logits(files["headless_model"], x).transpose(0, 3, 1, 2)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 1e-5


def _legacy_copy(files, tmp_path, name):
    import shutil

    path = tmp_path / name
    shutil.copy(files["h5"], path)
    return path


def test_missing_layer(files, tmp_path):
    path = _legacy_copy(files, tmp_path, "missing.h5")
    with h5py.File(path, "r+") as f:
        g = f["model_weights"]
        names = [n for n in g.attrs["layer_names"] if n not in (b"conv3_block2_2_bn", "conv3_block2_2_bn")]
        g.attrs["layer_names"] = np.array([n if isinstance(n, bytes) else n.encode() for n in names])
    fails(export(tmp_path, path), "a Keras ResNet50 with 5 classes but does not hold exactly its layers",
          "missing layers (1): conv3_block2_2_bn")


def test_extra_layer(files, tmp_path):
    """A custom head under another name than 'predictions' is an extra layer, named in the message."""
    import keras

    base = build("ResNet50", classes=None, size=SIZE)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(3, name="my_head")(x))
    path = tmp_path / "custom.keras"
    model.save(path)
    fails(export(tmp_path, path, "--no-top"), "extra layers (1): my_head", "named 'predictions'")


def test_shape_mismatch(files, tmp_path):
    path = _legacy_copy(files, tmp_path, "shapes.h5")
    with h5py.File(path, "r+") as f:
        g = f["model_weights/conv2_block1_2_conv"]
        name = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]][0]
        del g[name]
        g.create_dataset(name, data=np.zeros((3, 3, 64, 32), np.float32))
    fails(export(tmp_path, path), "conv2_block1_2_conv: [3, 3, 64, 32] in the file, ResNet50 has [3, 3, 64, 64]")
