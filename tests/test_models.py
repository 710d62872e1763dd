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
