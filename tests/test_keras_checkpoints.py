"""Keras Applications ResNets enter exactly: `edge-resnet export --weights FILE` gives Keras's logits.

Every network is built by Keras itself (Keras 3, torch backend) with randomised BN statistics and
biases, saved as ``.keras``, ``.weights.h5`` and legacy ``.h5``, exported by the CLI with Keras and
TensorFlow blocked from being imported, and run by ONNX Runtime against Keras's own output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from keras_reference import KERAS_RESNETS, build, logits, save

from edge_resnet.cli.app import cli

CLASSES, SIZE = 5, 32
FORMATS = ("keras", "weights.h5", "h5")  # Keras 3 archive, Keras 3 weights, legacy whole-model HDF5
EXPORTED = (*FORMATS, "keras2-weights.h5")  # and Keras 2 save_weights (Keras Applications' published files)
REL_TOL = 1e-4


@dataclass
class Case:
    name: str  # Keras's, e.g. ResNet50V2
    model: object
    files: dict[str, Path]
    x: np.ndarray
    ref: np.ndarray

    @property
    def depth(self) -> int:
        return int(self.name[len("ResNet"):].removesuffix("V2"))

    @property
    def ours(self) -> str:
        return f"resnet{self.depth}-{'v2' if self.name.endswith('V2') else 'v1'}"


@pytest.fixture(scope="module", params=KERAS_RESNETS)
def case(request, tmp_path_factory) -> Iterator[Case]:
    folder = tmp_path_factory.mktemp(request.param)
    model = build(request.param, classes=CLASSES, size=SIZE, seed=KERAS_RESNETS.index(request.param))
    x = np.random.default_rng(7).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    files = {fmt: save(model, fmt, folder) for fmt in (*FORMATS, "keras2-weights.h5")}
    yield Case(request.param, model, files, x, logits(model, x))
    shutil.rmtree(folder, ignore_errors=True)  # up to 0.9 GB a depth: gone once its tests are done


def export(args: list[str], monkeypatch) -> tuple[int, str]:
    """The CLI with Keras and TensorFlow unimportable (``import keras`` raises ImportError)."""
    for mod in ("keras", "tensorflow", "tf_keras"):
        monkeypatch.setitem(sys.modules, mod, None)
    r = CliRunner().invoke(cli, ["export", *args])
    return r.exit_code, r.output


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_export_gives_keras_logits(case, tmp_path, monkeypatch):
    """One export per network, the four formats taken in turn (.keras and .weights.h5 on a v1 and
    a v2 network, legacy .h5 and Keras 2's on one each): the test below proves that all the files
    give bit-identical tensors, and an export costs 40-60 s of CI, so exporting each network from
    every format would add nothing but time."""
    fmt = EXPORTED[KERAS_RESNETS.index(case.name) % len(EXPORTED)]
    out = tmp_path / "m.onnx"
    named = ["--model", f"resnet{case.depth}", "--num-classes", str(CLASSES)] if fmt != "keras2-weights.h5" else []
    code, output = export([*named, "--weights", str(case.files[fmt]), "--input-size", str(SIZE), "-o", str(out)],
                          monkeypatch)  # the Keras 2 file without --model: read from the file
    assert code == 0, output
    graph = onnx.load(str(out))
    assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"], "BN left in the exported graph"
    got = run_onnx(out, case.x)
    rel = relative_error(got, case.ref)
    print(f"{case.name} {fmt}: relative error {rel:.2e}")
    assert rel <= REL_TOL, f"{case.name} from {fmt}: relative error {rel:.2e}"
    assert np.array_equal(got.argmax(1), case.ref.argmax(1))


def test_all_formats_give_the_same_state_dict(case, monkeypatch):
    """The three Keras 3 files, and the Keras 2 save_weights layout (Keras Applications' published
    files), map to identical tensors; and the layer names are Keras's, in Keras's order."""
    import torch

    from edge_resnet.models.formats import open_foreign
    from edge_resnet.models.keras_names import BN, CONV, KerasResNet
    from edge_resnet.models.resnet import Variant

    sds = {fmt: open_foreign(path).state_dict for fmt, path in case.files.items()}
    first = sds["keras"]
    for fmt, sd in sds.items():
        assert sd.keys() == first.keys(), fmt
        assert all(torch.equal(sd[k], first[k]) for k in sd), fmt
    arch = KerasResNet(case.depth, Variant.V2 if case.name.endswith("V2") else Variant.V1, CLASSES)
    weighted = [(layer.name, type(layer).__name__) for layer in case.model.layers if layer.weights]
    assert arch.layers() == weighted
    assert {CONV, BN} <= {c for _, c in weighted}


def test_keras2_layout_is_one_keras_reads(case):
    """The Keras 2 save_weights file the tests write (Keras 3 cannot) loads in Keras 3's own legacy
    reader into the same weights: the layout is Keras's."""
    from keras.src.legacy.saving import legacy_h5_format

    fresh = build(case.name, classes=CLASSES, size=SIZE, seed=99)
    with h5py.File(case.files["keras2-weights.h5"], "r") as f:
        version = f.attrs["keras_version"]
        assert "layer_names" in f.attrs and (version.decode() if isinstance(version, bytes) else version).startswith("2.")
        legacy_h5_format.load_weights_from_hdf5_group(f, fresh)
    for a, b in zip(case.model.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_older_keras3_files_without_layer_names(case, tmp_path):
    """Keras 3 before layer names were recorded in .weights.h5: groups are named by class rank."""
    import shutil

    import torch

    from edge_resnet.models.formats import open_foreign

    path = tmp_path / "old.weights.h5"
    shutil.copy(case.files["weights.h5"], path)
    with h5py.File(path, "r+") as f:
        for key in f["layers"]:
            if "vars" in f["layers"][key] and "name" in f["layers"][key]["vars"].attrs:
                del f["layers"][key]["vars"].attrs["name"]
    old, new = open_foreign(path).state_dict, open_foreign(case.files["weights.h5"]).state_dict
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in new)


def test_model_and_classes_are_read_from_the_file(case):
    from edge_resnet.models.from_weights import resolve_model

    for fmt, path in case.files.items():
        choice = resolve_model(None, None, path, None)
        assert (choice.name, choice.num_classes) == (case.ours, CLASSES), fmt
        assert resolve_model(f"resnet{case.depth}", None, path, CLASSES).name == case.ours
    assert resolve_model(case.ours, None, case.files["keras"], None).variant == case.ours.split("-")[1]


def test_parameters_and_macs_match_keras(case):
    """Our network has Keras's parameters (v1: minus the conv biases folded into BN) and its MACs."""
    import keras

    from edge_resnet.models import build_model, count_macs, count_parameters

    km = case.model
    trainable = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
    conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in km.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    macs = 0
    for layer in km.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, c_out = layer.output.shape[1:]
            kh, kw, c_in, _ = layer.kernel.shape
            macs += h * w * c_out * kh * kw * c_in
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    ours = build_model(case.ours, num_classes=CLASSES)
    v2 = case.name.endswith("V2")
    assert count_parameters(ours) == (trainable if v2 else trainable - conv_biases)
    assert count_macs(ours, SIZE) == macs


@pytest.mark.parametrize("case", ["ResNet50V2"], indirect=True)
def test_export_never_imports_keras_or_tensorflow(case, tmp_path):
    """A fresh interpreter that reads a .keras file and builds the model has not imported Keras or TF."""
    code = (
        "import sys\n"
        "from edge_resnet.models.from_weights import build_from_options\n"
        f"model, digest = build_from_options(None, None, {str(case.files['keras'])!r}, None, False, None)\n"
        "bad = [m for m in ('keras', 'tensorflow', 'tf_keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(type(model).__name__, model.variant.value, model.fc.out_features)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ResNet", "v2", str(CLASSES)]


# ---------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", ["ResNet50", "ResNet50V2"])
def test_default_preprocessing_is_keras_preprocess_input(name):
    """caffe (V1: BGR, minus the ImageNet mean on 0..255) and tf (V2: x/127.5 - 1) as PreprocessSpecs
    give keras.applications' preprocess_input, within one float32 rounding of the 0..255 scale."""
    import keras

    from edge_resnet.data import PreprocessSpec
    from edge_resnet.models.from_weights import _KERAS_SPECS
    from edge_resnet.models.keras_names import KerasPreprocessing

    mode = KerasPreprocessing.TF if name.endswith("V2") else KerasPreprocessing.CAFFE
    fn = keras.applications.resnet_v2.preprocess_input if name.endswith("V2") else keras.applications.resnet.preprocess_input
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value in every channel
    spec = PreprocessSpec(input_size=16, resize=16, **_KERAS_SPECS[mode])
    ours = spec.apply(img)  # RGB image in, model channel order out
    ref = np.asarray(fn(img.astype(np.float32))).transpose(2, 0, 1)
    assert np.abs(ours - ref).max() <= np.spacing(np.float32(255))


@pytest.mark.parametrize("case", ["ResNet50", "ResNet50V2"], indirect=True)  # one per variant
def test_spec_for_a_checkpoint(case, tmp_path):
    """compile's default preprocessing: Keras's for a Keras file, ImageNet's for a torch file."""
    import torch

    from edge_resnet.compile import CompileOptions, ModelSource, _spec_for
    from edge_resnet.graph.prepare import FloatGraph
    from edge_resnet.models import build_model

    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["logits"])], "g",
                               [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 64, 64])],
                               [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3, 64, 64])])
    fg = FloatGraph(onnx.helper.make_model(g), None, "logits")
    spec = _spec_for(fg, CompileOptions(), source=ModelSource(case.ours, weights=str(case.files["h5"]), num_classes=CLASSES))
    v2 = case.name.endswith("V2")
    assert (spec.input_size, spec.channel_order.value) == (64, "rgb" if v2 else "bgr")
    assert spec.mean == pytest.approx((0.5,) * 3 if v2 else (103.939 / 255, 116.779 / 255, 123.68 / 255))
    assert spec.std == pytest.approx((0.5,) * 3 if v2 else (1 / 255,) * 3)
    pth = tmp_path / "t.pth"
    torch.save(build_model("resnet18").state_dict(), pth)
    imagenet = _spec_for(fg, CompileOptions(), source=ModelSource("resnet18", weights=str(pth)))
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.channel_order.value == "rgb"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ResNet50", "ResNet50V2"], indirect=True)  # one per variant
def test_compile_records_keras_preprocessing_and_gives_keras_logits(case, tmp_path):
    """`edge-resnet compile --weights model.keras`: the bundle's preprocessing is Keras's (or the
    user's where given), and its float graph on an image preprocessed by the bundle's spec gives
    Keras's logits on the same image preprocessed by keras.applications."""
    import json

    import keras

    v2 = case.name.endswith("V2")
    override = ["--channel-order", "rgb", "--std", "0.25,0.25,0.25"] if not v2 else []
    out = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["compile", "--weights", str(case.files["keras"]), "--target", "onnxruntime",
                                 "--fp32", "--input-size", str(SIZE), *override, "-o", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    pre = manifest["preprocess"]
    assert (manifest["model"]["name"], manifest["model"]["num_classes"]) == (case.ours, CLASSES)
    if v2:
        assert (pre["channel_order"], pre["mean"], pre["std"]) == ("rgb", [0.5] * 3, [0.5] * 3)
        from edge_resnet.data import PreprocessSpec

        spec = PreprocessSpec.from_dict({**pre, "resize": SIZE})
        img = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        got = run_onnx(out / manifest["graphs"]["float"], spec.apply(img)[None])
        ref = logits(case.model, keras.applications.resnet_v2.preprocess_input(img.astype(np.float32))
                     .transpose(2, 0, 1)[None])
        assert relative_error(got, ref) <= REL_TOL
    else:  # the user's --channel-order and --std override Keras's caffe; the mean stays caffe's
        assert (pre["channel_order"], pre["std"]) == ("rgb", [0.25] * 3)
        assert pre["mean"] == pytest.approx([103.939 / 255, 116.779 / 255, 123.68 / 255])
