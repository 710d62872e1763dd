"""``.safetensors`` state dicts (timm / Hugging Face) load like the same ``.pth``, without pickle."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from edge_resnet.cli.app import cli
from edge_resnet.errors import CheckpointError
from edge_resnet.models import build_model, load_weights


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same randomised ResNet-18 (BN statistics too) as .pth and as .safetensors."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=7)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    d = tmp_path_factory.mktemp("st")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, d / "r18.pth")
    save_file(sd, str(d / "r18.safetensors"))
    return d / "r18.pth", d / "r18.safetensors", sd


def _logits(onnx_path, x):
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.slow
def test_safetensors_gives_the_logits_of_the_same_pth(checkpoints, tmp_path):
    pth, st, _ = checkpoints
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    outs = []
    for ckpt in (pth, st):
        out = tmp_path / f"{ckpt.suffix[1:]}.onnx"
        r = CliRunner().invoke(cli, ["export", "--model", "resnet18", "--weights", str(ckpt), "--num-classes", "7",
                                     "--input-size", "32", "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs.append(_logits(out, x))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_safetensors_is_never_unpickled(checkpoints, monkeypatch):
    _, st, sd = checkpoints

    def no_torch_load(*a, **k):
        raise AssertionError("torch.load called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_torch_load)
    model = build_model("resnet18", num_classes=7)
    assert len(load_weights(model, st)) == 64
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_timm_and_hugging_face_key_layouts(checkpoints, tmp_path):
    """timm's ResNet keys are torchvision's; a ``model.``/``module.`` prefix (HF, DDP) is dropped."""
    _, _, sd = checkpoints
    for prefix in ("", "model.", "module."):
        path = tmp_path / f"p{prefix or 'none'}.safetensors"
        save_file({prefix + k: v for k, v in sd.items()}, str(path))
        model = build_model("resnet18", num_classes=7)
        load_weights(model, path)
        assert torch.equal(model.state_dict()["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])


def test_wrong_keys_get_one_clear_message(checkpoints, tmp_path):
    _, _, sd = checkpoints
    path = tmp_path / "renamed.safetensors"
    save_file({f"backbone.{k}" if k.startswith("layer") else k: v for k, v in sd.items()}, str(path))
    r = CliRunner().invoke(cli, ["export", "--model", "resnet18", "--weights", str(path), "--num-classes", "7",
                                 "--input-size", "32", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output and r.output.count("error:") == 1
    assert "does not match the model" in r.output
    assert "missing keys" in r.output and "unexpected keys" in r.output and "backbone.layer" in r.output
    print(r.output)


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_safetensors(checkpoints, tmp_path, damage):
    _, st, _ = checkpoints
    data = st.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:8] + b"[" + data[9:])
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model("resnet18", num_classes=7), bad)
    assert "safetensors" in str(e.value)
    print(e.value)
