import pytest
import torch

from edge_resnet.errors import ModelError
from edge_resnet.models import MODELS, build_model, count_macs, count_parameters, get_spec

# torchvision.models.resnet{18,34,50,101,152}(): sum(p.numel() for p in m.parameters())
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name):
    assert count_parameters(build_model(name)) == TORCHVISION_PARAMS[name]
    # v1 moves a stride, not a weight
    assert count_parameters(build_model(name, variant="v1")) == TORCHVISION_PARAMS[name]


def test_resnet50_v2_has_keras_resnet50v2_trainable_parameters():
    # keras.applications.ResNet50V2(): Trainable params: 25,568,360
    assert count_parameters(build_model("resnet50-v2")) == 25_568_360


def test_resnet50_state_dict_layout_is_torchvisions():
    sd = build_model("resnet50").state_dict()
    assert len(sd) == 320  # 161 parameters + 53 BatchNorms x 3 buffers, as torchvision's
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key


def test_resnet18_state_dict_layout_is_torchvisions():
    sd = build_model("resnet18").state_dict()
    assert len(sd) == 122  # 62 parameters + 20 BatchNorms x 3 buffers
    assert tuple(sd["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert "layer1.0.downsample.0.weight" not in sd


def test_gmacs_resnet50_matches_published():
    # torchvision documents 4.09 GFLOPS (multiply-accumulates) for ResNet-50 at 224x224
    assert count_macs(build_model("resnet50")) / 1e9 == pytest.approx(4.09, abs=0.01)
    assert count_macs(build_model("resnet18")) / 1e9 == pytest.approx(1.81, abs=0.01)


def test_v1_strides_the_1x1_and_v15_the_3x3():
    v1, v15 = build_model("resnet50-v1").layer2[0], build_model("resnet50").layer2[0]
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    x = torch.randn(1, 3, 64, 64)
    assert build_model("resnet50-v1").eval()(x).shape == (1, 1000)


def test_v2_is_pre_activation():
    m = build_model("resnet50-v2", num_classes=5).eval()
    block = m.layer1[1]
    assert block.bn1.num_features == 256  # BN on the block input, before conv1
    assert not hasattr(m, "bn1") and hasattr(m, "post_bn")
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name", ["resnet50-v2", "resnet18-v2"])
def test_v2_strides_the_last_block_of_a_stage_as_keras(name):
    """Keras ResNetV2: stride 2 on the last block of stages 1-3 (its 3x3, or a basic block's first
    conv), none in stage 4; the projection in each stage's first block, with stride 1."""
    m = build_model(name)
    for stage, stride in zip((m.layer1, m.layer2, m.layer3, m.layer4), (2, 2, 2, 1), strict=True):
        strided = stage[-1].conv2 if name == "resnet50-v2" else stage[-1].conv1
        assert strided.stride == (stride, stride)
        assert all(b.stride == 1 for b in stage[:-1]) and stage[-1].stride == stride
        if stage[0].downsample is not None:
            assert stage[0].downsample[0].stride == (1, 1)
    assert m.bn_eps == pytest.approx(1.001e-5)
    assert all(b.eps == pytest.approx(1.001e-5) for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d))


def test_v2_strided_block_takes_a_max_pool_shortcut_of_its_input():
    torch.manual_seed(0)
    block = build_model("resnet50-v2").eval().layer1[-1]  # 256 -> 256 channels, stride 2, no projection
    assert block.downsample is None
    x = torch.randn(1, 256, 9, 9)
    with torch.no_grad():
        pre = block.relu(block.bn1(x))
        residual = block.conv3(block.relu(block.bn3(block.conv2(block.relu(block.bn2(block.conv1(pre)))))))
        torch.testing.assert_close(block(x), residual + x[:, :, ::2, ::2])  # 1x1 max pool, stride 2


def test_v2_stem_pool_pads_with_zeros():
    """The v2 stem is not activated: its max pool sees zero padding (Keras ZeroPadding2D), not -inf."""
    m = build_model("resnet50-v2").eval()
    x = -torch.ones(1, 64, 8, 8)  # all negative: a -inf padded pool would give -1 at the border too
    y = m.maxpool(x)
    assert y.shape == (1, 64, 4, 4)
    assert torch.all(y[..., 0, :] == 0) and torch.all(y[..., :, 0] == 0) and torch.all(y[..., 1:, 1:] == -1)


def test_v1_and_v15_keep_torchvisions_bn_epsilon():
    for name in ("resnet50", "resnet50-v1", "resnet18"):
        assert all(b.eps == 1e-5 for b in build_model(name).modules() if isinstance(b, torch.nn.BatchNorm2d))


@pytest.mark.parametrize(("pooling", "shape"), [("avg", (2, 512)), ("max", (2, 512)), (None, (2, 512, 2, 2))])
def test_keras_like_heads(pooling, shape):
    m = build_model("resnet18", include_top=False, pooling=pooling).eval()
    assert not hasattr(m, "fc")
    assert m(torch.randn(2, 3, 64, 64)).shape == shape


def test_avg_embedding_equals_mean_of_feature_map():
    torch.manual_seed(0)
    feat = build_model("resnet18", include_top=False, pooling=None).eval()
    emb = build_model("resnet18", include_top=False, pooling="avg").eval()
    emb.load_state_dict(feat.state_dict())
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(emb(x), feat(x).mean(dim=(2, 3)))


def test_smallest_input_32():
    assert build_model("resnet18", num_classes=10).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_registry_names_and_errors():
    assert {"resnet50", "resnet50-v1", "resnet50-v2", "resnet152-v2"} <= set(MODELS)
    assert len(MODELS) == 15
    assert get_spec("resnet50", "v2").name == "resnet50-v2"
    with pytest.raises(ModelError, match="(?s)unknown model 'resnet51'.*resnet50"):
        build_model("resnet51")
    with pytest.raises(ModelError, match="variant"):
        get_spec("resnet50-v2", "v1")
    with pytest.raises(ModelError, match="--no-top"):
        build_model("resnet18", pooling="max")


def test_models_command_lists_the_zoo_with_its_keras_counterparts():
    import json

    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    r = CliRunner().invoke(cli, ["models", "--json", "--input-size", "64"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert len(rows) == len(MODELS)
    assert rows["resnet50-v2"]["parameters"] == 25_568_360
    assert rows["resnet50-v2"]["gmacs"] == round(count_macs(build_model("resnet50-v2"), 64) / 1e9, 3)
    assert (rows["resnet50-v1"]["keras"], rows["resnet152-v2"]["keras"]) == ("ResNet50", "ResNet152V2")
    assert rows["resnet50"]["keras"] is None and rows["resnet18-v2"]["keras"] is None
    table = CliRunner().invoke(cli, ["models"]).output
    assert "ResNet101V2" in table.splitlines()[0 + list(MODELS).index("resnet101-v2") + 1]
