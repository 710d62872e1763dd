import pytest
import torch

from edge_resnet.errors import CheckpointError
from edge_resnet.models import build_model, guess_architecture, load_weights


@pytest.fixture(scope="module")
def r18_sd():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=10).state_dict()


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix", "no_bn_counters"])
def test_checkpoint_layouts_load(tmp_path, r18_sd, wrap):
    sd = dict(r18_sd)
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "no_bn_counters": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = build_model("resnet18", num_classes=10)
    digest = load_weights(model, path)
    assert len(digest) == 64
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], r18_sd[k]) for k in r18_sd if not k.endswith("num_batches_tracked"))


def test_wrong_num_classes_names_the_fix(tmp_path, r18_sd):
    path = tmp_path / "ckpt.pth"
    torch.save(r18_sd, path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model("resnet18"), path)
    msg = str(e.value)
    assert "fc.weight: checkpoint [10, 512] vs model [1000, 512]" in msg
    assert "resnet18 v1/v1.5 with num_classes=10" in msg
    assert "--num-classes 10" in msg


def test_wrong_variant_and_depth_are_inferred(tmp_path):
    path = tmp_path / "v2.pth"
    torch.save(build_model("resnet50-v2", num_classes=7).state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model("resnet34"), path)
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "resnet50 v2 with num_classes=7" in msg
    assert "--model resnet50 --variant v2 --num-classes 7" in msg


def test_guess_architecture_all_depths():
    for d in (18, 34, 50, 101, 152):
        assert guess_architecture(build_model(f"resnet{d}").state_dict()).startswith(f"resnet{d} v1/v1.5")
    assert guess_architecture(build_model("resnet18", include_top=False).state_dict()).endswith("(include_top=False)")


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(build_model("resnet18"), path)  # a pickled nn.Module, not a state_dict
    with pytest.raises(CheckpointError, match="never unpickled"):
        load_weights(build_model("resnet18"), path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_corrupt_or_truncated_checkpoint(tmp_path, r18_sd, content):
    path = tmp_path / "bad.pth"
    if content is None:  # truncated real checkpoint
        torch.save(r18_sd, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot be read as a PyTorch file"):
        load_weights(build_model("resnet18", num_classes=10), path)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(build_model("resnet18"), tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save({"epoch": 1, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_weights(build_model("resnet18"), path)


def test_headless_model_takes_a_full_checkpoint(tmp_path, r18_sd):
    path = tmp_path / "full.pth"
    torch.save(r18_sd, path)  # has fc.weight / fc.bias
    model = build_model("resnet18", include_top=False, pooling="avg")
    load_weights(model, path)
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], r18_sd["layer4.1.conv2.weight"])
