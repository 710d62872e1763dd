"""ResNet-18/34/50/101/152 in three variants, after torchvision's resnet.py.

- ``v1``   : stride 2 on the first 1x1 conv of a downsampling bottleneck (He et al. 2015, Caffe,
             Keras ResNet50).
- ``v1.5`` : stride 2 on the 3x3 conv (torchvision; the default). Its state_dict keys and shapes
             are torchvision's, so a torchvision or timm checkpoint loads as is.
- ``v2``   : pre-activation (He et al. 2016, Keras ResNetV2): BN and ReLU before each conv, a
             projection shortcut taken from the pre-activated input, and a final BN + ReLU
             (``post_bn``) before pooling. The stem conv and the last 1x1 conv of a bottleneck have a
             bias and the stem has no BN, as in Keras, so ResNet-50 v2 has Keras ResNet50V2's
             25,568,360 trainable parameters. The stride sits in the first block of a stage (He et
             al. 2016, fb.resnet.torch) rather than the last (Keras): same weights, other FLOPs.

For the basic block (ResNet-18/34) v1 and v1.5 are the same network: the stride sits on the
first 3x3 conv in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
from torch import Tensor, nn


class Variant(str, Enum):
    V1 = "v1"
    V1_5 = "v1.5"
    V2 = "v2"


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
                 variant: Variant = Variant.V1_5) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V1_5) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant is Variant.V1 else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class PreActBasicBlock(nn.Module):
    """v2 basic block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, identity or projected pre-activation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V2) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActBottleneck(nn.Module):
    """v2 bottleneck (Keras ResNetV2 block2): BN-ReLU-1x1, BN-ReLU-3x3(stride), BN-ReLU-1x1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 variant: Variant = Variant.V2) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, bias=True)  # Keras: the last 1x1 has a bias
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
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
                 num_classes: int = 1000, include_top: bool = True, pooling: Pooling | str = Pooling.AVG) -> None:
        super().__init__()
        self.variant = Variant(variant)
        self.include_top = include_top
        self.pooling = Pooling(pooling if pooling is not None else Pooling.NONE)
        preact = self.variant is Variant.V2
        self.inplanes = 64
        # Keras ResNetV2: the stem conv has a bias and is not followed by BN (the first block's
        # pre-activation is); torchvision: conv without bias, BN, ReLU.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=preact)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        if preact:
            self.post_bn = nn.BatchNorm2d(self.num_features)
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
        downsample: nn.Module | None = None
        out_planes = planes * block.expansion
        if stride != 1 or self.inplanes != out_planes:
            if self.variant is Variant.V2:
                # projection of the pre-activated input, as Keras ResNetV2's conv_shortcut
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride, bias=True))
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, out_planes, stride), nn.BatchNorm2d(out_planes))
        layers = [block(self.inplanes, planes, stride, downsample, self.variant)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, variant=self.variant) for _ in range(1, blocks)]
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
