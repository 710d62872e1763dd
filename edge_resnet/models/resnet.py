"""ResNet-18/34/50/101/152 in three variants, after torchvision's resnet.py.

- ``v1``   : stride 2 on the first 1x1 conv of a downsampling bottleneck (He et al. 2015, Caffe,
             Keras ResNet50).
- ``v1.5`` : stride 2 on the 3x3 conv (torchvision; the default). Its state_dict keys and shapes
             are torchvision's, so a torchvision or timm checkpoint loads as is.
- ``v2``   : pre-activation, exactly Keras ResNetV2 (He et al. 2016 as Keras Applications builds
             it, so a Keras ResNet50V2/101V2/152V2 checkpoint gives Keras's logits): BN and ReLU
             before each conv, a final BN + ReLU (``post_bn``) before pooling, and

             - a stem conv with a bias and no BN, then a max pool over a *zero*-padded input (the
               stem is not activated, so zero padding is not -inf padding);
             - the projection shortcut in the first block of each stage, taken from the
               pre-activated input, with stride 1;
             - the stride on the *last* block of stages 1-3 (none in stage 4), on its 3x3 conv, with
               a 1x1 max pool (stride 2) of the block input as its shortcut;
             - BN epsilon 1.001e-5 (Keras's), where torchvision's variants use 1e-5.

             This is the one v2: the only pre-activation ResNet checkpoints users have are Keras's
             (torchvision has none; timm's ResNetV2 is another network), and two v2s with the same
             state_dict layout would load each other's weights silently. (Until issue 11, ``v2``
             put the stride in the first block of a stage, as fb.resnet.torch does: same weights,
             other outputs and FLOPs.) ResNet-18/34 v2 follow the same conventions, though Keras
             Applications has no ResNet-18/34.

Keras ResNet50/101/152 are ``v1`` with a bias on every conv; :mod:`edge_resnet.models.keras_names`
folds each bias into the BN that follows (``mean' = mean - b``, exact) and sets the BN epsilon to
the file's (1.001e-5), so they need no variant of their own.

For the basic block (ResNet-18/34) v1 and v1.5 are the same network: the stride sits on the
first 3x3 conv in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Variant(str, Enum):
    V1 = "v1"
    V1_5 = "v1.5"
    V2 = "v2"


# BatchNorm epsilon: torchvision's (v1, v1.5) and Keras Applications' (v2, and Keras v1 files)
TORCH_BN_EPS = 1e-5
KERAS_BN_EPS = 1.001e-5


class Pooling(str, Enum):
    AVG = "avg"
    MAX = "max"
    NONE = "none"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V1_5, bn_eps: float = TORCH_BN_EPS) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V1_5, bn_eps: float = TORCH_BN_EPS) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant is Variant.V1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _PreActBlock(nn.Module):
    """Shared shortcut logic of the v2 blocks (Keras ResNetV2's ``residual_block_v2``).

    ``downsample`` (a 1x1 conv with a bias) projects the pre-activated input; without it, a block
    with ``stride > 1`` takes a 1x1 max pool of its (not pre-activated) input as the shortcut.
    """

    stride: int
    downsample: nn.Module | None

    def _shortcut(self, x: Tensor, pre: Tensor) -> Tensor:
        if self.downsample is not None:
            return self.downsample(pre)
        if self.stride > 1:
            return F.max_pool2d(x, kernel_size=1, stride=self.stride)
        return x


class PreActBasicBlock(_PreActBlock):
    """v2 basic block: BN-ReLU-conv3x3(stride), BN-ReLU-conv3x3, shortcut as in :class:`_PreActBlock`."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V2, bn_eps: float = KERAS_BN_EPS) -> None:
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = self._shortcut(x, pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(_PreActBlock):
    """v2 bottleneck (Keras ResNetV2 block2): BN-ReLU-1x1, BN-ReLU-3x3(stride), BN-ReLU-1x1(bias)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V2, bn_eps: float = KERAS_BN_EPS) -> None:
        super().__init__()
        self.stride = stride
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv3 = conv1x1(planes, planes * self.expansion, bias=True)  # Keras: the last 1x1 has a bias
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = self._shortcut(x, pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]


class ResNet(nn.Module):
    """A ResNet with Keras-like head options.

    include_top=True: global average pool + ``fc`` -> logits (N, num_classes).
    include_top=False: ``pooling`` "avg"/"max" -> an embedding (N, C); "none" -> the last feature
    map (N, C, H/32, W/32).
    """

    def __init__(self, block: Block, layers: Sequence[int], variant: Variant = Variant.V1_5,
                 num_classes: int = 1000, include_top: bool = True, pooling: Pooling | str = Pooling.AVG,
                 bn_eps: float | None = None) -> None:
        super().__init__()
        self.variant = Variant(variant)
        self.include_top = include_top
        self.pooling = Pooling(pooling if pooling is not None else Pooling.NONE)
        preact = self.variant is Variant.V2
        self.bn_eps = bn_eps if bn_eps is not None else (KERAS_BN_EPS if preact else TORCH_BN_EPS)
        self.inplanes = 64
        # Keras ResNetV2: the stem conv has a bias and is not followed by BN (the first block's
        # pre-activation is); torchvision: conv without bias, BN, ReLU.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=preact)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64, eps=self.bn_eps)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # Keras pads the un-activated stem output with zeros (ZeroPadding2D), not -inf
            self.maxpool = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(kernel_size=3, stride=2))
        # v2 (Keras ResNetV2): the stride is on the last block of stages 1-3; v1/v1.5: on the first of 2-4
        strides = (2, 2, 2, 1) if preact else (1, 2, 2, 2)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=strides[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=strides[1])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=strides[2])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=strides[3])
        self.num_features = 512 * block.expansion
        if preact:
            self.post_bn = nn.BatchNorm2d(self.num_features, eps=self.bn_eps)
            self.post_relu = nn.ReLU(inplace=True)
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.num_features, num_classes)
        elif self.pooling is Pooling.AVG:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        elif self.pooling is Pooling.MAX:
            self.maxpool_head = nn.AdaptiveMaxPool2d((1, 1))
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out_planes = planes * block.expansion
        preact = self.variant is Variant.V2
        # where the stage's stride goes: its first block (torchvision) or its last (Keras ResNetV2)
        strides = [1] * blocks
        strides[-1 if preact else 0] = stride
        layers = []
        for i, s in enumerate(strides):
            downsample: nn.Module | None = None
            if i == 0 and preact and self.inplanes != out_planes:
                # projection of the pre-activated input, as Keras ResNetV2's conv_shortcut
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, s, bias=True))
            elif i == 0 and not preact and (s != 1 or self.inplanes != out_planes):
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, s),
                                           nn.BatchNorm2d(out_planes, eps=self.bn_eps))
            layers.append(block(self.inplanes, planes, s, downsample, self.variant, bn_eps=self.bn_eps))
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        if self.variant is not Variant.V2:
            x = self.relu(self.bn1(x))
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.variant is Variant.V2:
            x = self.post_relu(self.post_bn(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        if self.include_top:
            return self.fc(torch.flatten(self.avgpool(x), 1))
        if self.pooling is Pooling.AVG:
            return torch.flatten(self.avgpool(x), 1)
        if self.pooling is Pooling.MAX:
            return torch.flatten(self.maxpool_head(x), 1)
        return x
