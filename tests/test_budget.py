"""compile --max-drop: the drift budget, with a real fallback case.

The fallback case is built from the digits-trained ResNet-18 by making one activation tensor hard to
quantize without changing the float function: the four most active output channels of layer3.0's first
conv (its BN, so gamma and beta) are scaled up 1000x and the matching input channels of layer3.0.conv2
down 1000x. ReLU is positively homogeneous, so the float model is unchanged; but the per-tensor int8
scale of conv2's input is now set by the outlier channels and the other channels collapse to zero.
Per-channel weight scales cannot absorb this: the outliers are in the activations. (layer3.0 because
its residual branch carries the signal, its shortcut being a strided 1x1 conv: in an identity block
the shortcut alone keeps the accuracy up and the case is too mild.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_resnet.budget import DriftBudget, compile_with_budget, step_sizes
from edge_resnet.bundle import load_bundle
from edge_resnet.cli.app import cli
from edge_resnet.compile import CompileOptions, ModelSource
from edge_resnet.errors import BudgetExceeded, BundleError

BLOCK, CONSUMER = "layer3.0", "layer3.0.conv2"
SCALE, CHANNELS = 1000.0, 4


def _compile(args):
    return CliRunner().invoke(cli, ["compile", "--model", "resnet18", "--num-classes", "10", "--input-size", "32",
                                    "--resize", "32", "--calib", "digits:train", "--calib-count", "256", *args])


def _most_active_channels(digits, k: int) -> torch.Tensor:
    """The k channels of BLOCK's bn1 output with the largest mean after the ReLU, on training images."""
    acts = []
    bn1 = dict(digits.model.named_modules())[f"{BLOCK}.bn1"]
    hook = bn1.register_forward_hook(lambda _m, _i, out: acts.append(torch.relu(out)))
    try:
        with torch.no_grad():
            digits.model(torch.from_numpy(digits.arrays("train", count=128)[0]))
    finally:
        hook.remove()
    return torch.argsort(acts[0].mean((0, 2, 3)), descending=True)[:k]


def _outlier_checkpoint(digits, out):
    sd = torch.load(digits.checkpoint, weights_only=True)
    ch = _most_active_channels(digits, CHANNELS)
    sd[f"{BLOCK}.bn1.weight"][ch] *= SCALE
    sd[f"{BLOCK}.bn1.bias"][ch] *= SCALE
    sd[f"{BLOCK}.conv2.weight"][:, ch] /= SCALE
    torch.save(sd, out)
    return out


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory, digits_r18):
    return _outlier_checkpoint(digits_r18, tmp_path_factory.mktemp("outlier") / "outlier.pth")


def _files(path):
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.slow
def test_budget_met_at_first_keeps_nothing_float(digits_r18, tmp_path):
    out = tmp_path / "b"
    r = _compile(["--weights", str(digits_r18.checkpoint), "--target", "cpu", "--max-drop", "1.0", "--val",
                  "digits:test", "-o", str(out)])
    assert r.exit_code == 0, r.output
    bundle = load_bundle(out)  # hashes verified, validation.json included
    m = bundle.manifest
    assert m["kept_float"] == [] and m["quantization"]["exclude"] == []
    budget = m["budget"]
    assert budget["passed"] is True and budget["metric"] == "top1" and budget["drop"] <= 1.0
    assert len(budget["attempts"]) == 1 and budget["ranking"] is None  # no fallback, no ranking
    doc = json.loads((out / "validation.json").read_text())
    assert doc["budget"] == {"max_drop": 1.0, "metric": "top1", "drop": budget["drop"], "passed": True}
    assert doc["kept_float"] == [] and doc["bundle"] == str(out.absolute()) and len(doc["per_layer"]) == 29
    assert "within budget" in r.output
    assert _files(out) == ["b"]  # no staging directory left


@pytest.mark.slow
def test_outlier_layer_is_found_and_kept_float(digits_r18, outlier_ckpt, tmp_path):
    from edge_resnet.graph.export import export_float_graph
    from edge_resnet.models import build_model, load_weights
    from edge_resnet.quant.ptq import run_onnx

    # the edit leaves the float model's function (and accuracy) unchanged
    x, y = digits_r18.arrays("test")
    model = build_model("resnet18", num_classes=10)
    load_weights(model, outlier_ckpt)
    edited = run_onnx(export_float_graph(model.eval(), 32).model, x)
    original = run_onnx(digits_r18.float_graph, x)
    np.testing.assert_allclose(edited, original, rtol=1e-3, atol=1e-3)
    assert (edited.argmax(1) == y).mean() == pytest.approx(digits_r18.test_accuracy, abs=1e-6)

    # an S8S8 (TensorRT placement) OpenVINO CPU profile of the user's own: one Q/DQ per tensor, so
    # keeping the consumer float is enough (the shipped cpu profile is u8s8: next test)
    profile = tmp_path / "cpu-s8s8.toml"
    profile.write_text('name = "cpu-s8s8"\ndescription = "OpenVINO CPU, TensorRT-style Q/DQ"\nbackend = "openvino"\n'
                       'device = "CPU"\nactivation_format = "s8s8"\n')
    out = tmp_path / "b"
    r = _compile(["--weights", str(outlier_ckpt), "--target", str(profile), "--max-drop", "1.0", "--val", "digits:test",
                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = load_bundle(out).manifest
    attempts = m["budget"]["attempts"]
    assert attempts[0]["kept_float"] == [] and attempts[0]["drop"] > 5.0  # plain INT8: far over budget
    assert m["budget"]["ranking"]["layers"][0]["layer"] == CONSUMER  # the sensitivity ranking finds it
    assert m["kept_float"] == [CONSUMER] and attempts[-1]["kept_float"] == [CONSUMER]
    assert m["budget"]["drop"] <= 1.0 and len(attempts) == 2
    assert m["quantization"]["quantized"]["Conv"] == 19
    doc = json.loads((out / "validation.json").read_text())
    assert doc["kept_float"] == [CONSUMER] and doc["budget"]["passed"] is True
    assert CONSUMER not in {e["layer"] for e in doc["per_layer"]}  # kept float: not a quantized layer
    assert f"kept float: {CONSUMER}" in r.output
    print(f"budget 1.0: drop {attempts[0]['drop']:.2f} -> {attempts[-1]['drop']:.2f} points, kept float {m['kept_float']}")


@pytest.mark.slow
def test_u8s8_needs_both_sides_of_the_outlier_tensor_kept_float(outlier_ckpt, tmp_path):
    """In u8s8 (ONNX Runtime) the tensor is quantized at the producer's output and at the consumer's input:
    the isolated-layer ranking puts both convs first, and the loop keeps both float."""
    out = tmp_path / "b"
    r = _compile(["--weights", str(outlier_ckpt), "--target", "onnxruntime", "--max-drop", "1.0", "--val",
                  "digits:test", "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = load_bundle(out).manifest
    producer = f"{BLOCK}.conv1"
    assert {e["layer"] for e in m["budget"]["ranking"]["layers"][:2]} == {producer, CONSUMER}
    assert sorted(m["kept_float"]) == sorted([producer, CONSUMER])
    drops = [a["drop"] for a in m["budget"]["attempts"]]
    assert drops[0] > 5.0 and drops[1] > 1.0 and drops[-1] <= 1.0  # one side alone does not help
    print(f"u8s8 budget 1.0: drops {[round(d, 2) for d in drops]}, kept float {m['kept_float']}")


@pytest.mark.slow
def test_budget_not_met_within_the_rebuilds_writes_nothing(outlier_ckpt, tmp_path):
    source = ModelSource("resnet18", weights=str(outlier_ckpt), num_classes=10)
    from edge_resnet.train import DigitsRecipe

    opts = CompileOptions(target="cpu", calib="digits:train", calib_count=128, spec=DigitsRecipe().spec(),
                          progress=False)
    budget = DriftBudget(1.0, "digits:test", val_count=200, max_rebuilds=0)
    with pytest.raises(BudgetExceeded, match=r"over the budget of 1.00.*within 0 rebuilds.*no bundle was written") as e:
        compile_with_budget(source, opts, budget, tmp_path / "b", input_size=32)
    assert e.value.exit_code == 3 and "--max-rebuilds" in e.value.fix
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a staging directory


def test_negative_budget_is_rejected_before_building(tmp_path):
    r = _compile(["--target", "cpu", "--max-drop", "-0.5", "--val", "digits:test", "-o", str(tmp_path / "b")])
    assert r.exit_code == 3
    assert "beat the float model" in r.output and "budget >= 0" in r.output
    assert list(tmp_path.iterdir()) == []


def test_budget_needs_val_data_and_a_free_output(tmp_path):
    r = _compile(["--target", "cpu", "--max-drop", "0.5", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--max-drop and --val go together" in r.output
    (tmp_path / "b").mkdir()
    opts = CompileOptions(target="cpu", calib="digits:train")
    with pytest.raises(BundleError, match="already exists"):
        compile_with_budget(ModelSource("resnet18", num_classes=10), opts, DriftBudget(0.5, "digits:test"),
                            tmp_path / "b", input_size=32)


def test_step_sizes_grow_after_three_single_steps():
    steps = step_sizes()
    assert [next(steps) for _ in range(7)] == [1, 1, 1, 2, 4, 8, 16]
