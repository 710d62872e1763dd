"""Keras Applications ResNet layer names <-> our torchvision-style state_dict keys.

Keras ResNet50/101/152 (``keras.applications.resnet``) and ResNet50V2/101V2/152V2
(``keras.applications.resnet_v2``) name every layer: ``conv1_conv``, ``conv1_bn``,
``conv2_block1_1_conv`` ... ``predictions`` (V2: ``conv2_block1_preact_bn`` ... ``post_bn``). A file is
mapped by those names, never by position, and must hold exactly the layers of one of the six networks.

- Kernels are HWIO (Conv2D) and IO (Dense); ours are OIHW and OI.
- Keras v1 convs have a bias and a BN after each: the bias is folded into the BN's moving mean
  (``mean' = mean - b``: ``BN(Wx + b) = BN'(Wx)`` exactly), so the network is our ``v1``.
- Keras V2 is our ``v2`` (see :mod:`edge_resnet.models.resnet`): its convs keep their biases.

This module is pure numpy + names; reading files is :mod:`keras_h5` and :mod:`keras_archive`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from edge_resnet.errors import CheckpointError
from edge_resnet.models.registry import DEPTHS
from edge_resnet.models.resnet import KERAS_BN_EPS, Variant

CONV, BN, DENSE = "Conv2D", "BatchNormalization", "Dense"
HEAD = "predictions"
_SHOW = 5
_BLOCK = re.compile(r"^conv([2-5])_block(\d+)_(0_conv|1_conv|2_conv|3_conv|0_bn|1_bn|2_bn|3_bn|preact_bn)$")
_STEM = {"conv1_conv", "conv1_bn", "post_bn", HEAD}


class KerasPreprocessing(str, Enum):
    """``keras.applications.imagenet_utils.preprocess_input`` modes of the ResNets."""

    CAFFE = "caffe"  # ResNet50/101/152: RGB -> BGR, minus the ImageNet mean on 0..255, no scaling
    TF = "tf"  # ResNet50V2/...: x / 127.5 - 1


@dataclass(frozen=True)
class KerasLayer:
    """The weights of one Keras layer as stored in a file, in Keras's order (kernel, bias / gamma...)."""

    name: str
    weights: tuple[np.ndarray, ...]
    weight_names: tuple[str, ...] = ()  # as the file names them, for messages


@dataclass(frozen=True)
class KerasResNet:
    """Which Keras Applications ResNet a file holds."""

    depth: int
    variant: Variant  # V1 (ResNet50) or V2 (ResNet50V2)
    num_classes: int | None  # None: no classifier (include_top=False)
    bn_eps: float = KERAS_BN_EPS

    @property
    def keras_name(self) -> str:
        return f"ResNet{self.depth}{'V2' if self.variant is Variant.V2 else ''}"

    @property
    def preprocessing(self) -> KerasPreprocessing:
        return KerasPreprocessing.TF if self.variant is Variant.V2 else KerasPreprocessing.CAFFE

    @property
    def model_name(self) -> str:
        """Our registry name, e.g. ``resnet50-v2``."""
        return f"resnet{self.depth}-{self.variant.value}"

    def describe(self) -> str:
        head = f"with {self.num_classes} classes" if self.num_classes is not None else \
            "without a classifier (include_top=False)"
        return f"a Keras {self.keras_name} {head}"

    def layers(self, include_top: bool | None = None) -> list[tuple[str, str]]:
        """(name, class) of every layer with weights, in the order of Keras's ``model.layers``."""
        top = self.num_classes is not None if include_top is None else include_top
        v2 = self.variant is Variant.V2
        out: list[tuple[str, str]] = [("conv1_conv", CONV)] if v2 else [("conv1_conv", CONV), ("conv1_bn", BN)]
        for stack, n in enumerate(DEPTHS[self.depth][1], start=2):
            for b in range(1, n + 1):
                p = f"conv{stack}_block{b}_"
                if v2:
                    out += [(p + "preact_bn", BN), (p + "1_conv", CONV), (p + "1_bn", BN), (p + "2_conv", CONV),
                            (p + "2_bn", BN)]
                    out += [(p + "0_conv", CONV)] if b == 1 else []
                    out += [(p + "3_conv", CONV)]
                elif b == 1:
                    out += [(p + "1_conv", CONV), (p + "1_bn", BN), (p + "2_conv", CONV), (p + "2_bn", BN),
                            (p + "0_conv", CONV), (p + "3_conv", CONV), (p + "0_bn", BN), (p + "3_bn", BN)]
                else:
                    out += [(p + "1_conv", CONV), (p + "1_bn", BN), (p + "2_conv", CONV), (p + "2_bn", BN),
                            (p + "3_conv", CONV), (p + "3_bn", BN)]
        if v2:
            out.append(("post_bn", BN))
        if top:
            out.append((HEAD, DENSE))
        return out


# ------------------------------------------------------------------------------------------ identify

# layer names that give other Keras Applications away (for "the file looks like ...")
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("expanded_conv", "MobileNetV2/V3"), ("conv_dw_", "MobileNet"), ("block1_conv1", "VGG16/VGG19"),
    ("stem_conv", "EfficientNet"), ("block1a_", "EfficientNet"), ("pool2_conv", "DenseNet"),
    ("mixed", "InceptionV3/InceptionResNetV2"), ("block1_sepconv1", "Xception"), ("normal_conv", "NASNet"),
    ("res2a_branch2a", "the 2017 Keras ResNet50 (keras-applications < 1.0.7, layer names res2a_branch2a...)"),
)
_WEIGHTLESS = {"InputLayer"}


def _family(names: Sequence[str]) -> str | None:
    return next((f for key, f in _FAMILIES if any(key in n for n in names)), None)


def looks_like(names: Iterable[str], model_name: str | None = None, classes: Mapping[str, str] | None = None) -> str:
    """A short description of a Keras model that is not a ResNet: family, name, layer kinds."""
    names = [n for n in names if not classes or classes.get(n) not in _WEIGHTLESS]
    if not names:
        return f"a Keras model{f' named {model_name!r}' if model_name else ''} without any layer holding weights"
    family = _family(names)
    desc = f"a Keras model named {model_name!r}" if model_name else "a Keras model"
    if family:
        desc += f", like {family},"
    if classes:
        kinds = Counter(classes.get(n, "?") for n in names)
        desc += " with " + ", ".join(f"{c} {k}" for k, c in kinds.most_common(4))
    else:
        desc += f" with {len(names)} layers holding weights"
    return f"{desc} (e.g. {', '.join(names[:3])})"


def identify(names: Iterable[str], head_units: int | None, *, model_name: str | None = None,
             classes: Mapping[str, str] | None = None, bn_eps: float | None = None,
             source: str = "the file") -> KerasResNet:
    """Which Keras ResNet these weighted layer names belong to, or one error saying what they are."""
    names = list(names)
    stacks: dict[int, set[int]] = {}
    preact = False
    for n in names:
        m = _BLOCK.match(n)
        if m:
            stacks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            preact |= m.group(3) == "preact_bn"
    preact |= "post_bn" in names
    resnetish = len(stacks) == 4 and "conv1_conv" in names and _family(names) is None  # DenseNet shares names
    if not resnetish:
        raise CheckpointError(
            f"{source} is not a Keras ResNet: it looks like {looks_like(names, model_name, classes)}",
            "pass the weights of a keras.applications ResNet50/101/152 or ResNet50V2/101V2/152V2 "
            "(layer names conv1_conv, conv2_block1_1_conv, ...); other Keras models are not supported",
        )
    counts = tuple(max(stacks[s]) for s in (2, 3, 4, 5))
    depth = next((d for d, (bottleneck, c) in DEPTHS.items() if bottleneck and c == counts), None)
    if depth is None:
        raise CheckpointError(
            f"{source} looks like a Keras ResNet, but with {list(counts)} blocks per stack, which is none of "
            "ResNet50 [3, 4, 6, 3], ResNet101 [3, 4, 23, 3] or ResNet152 [3, 8, 36, 3]",
            "only the Keras Applications depths are supported",
        )
    return KerasResNet(depth, Variant.V2 if preact else Variant.V1, head_units if HEAD in names else None,
                       bn_eps if bn_eps is not None else KERAS_BN_EPS)


def check_layers(arch: KerasResNet, names: Iterable[str], source: str = "the file") -> None:
    """Exactly the layers of ``arch``: one error listing the missing and the extra ones."""
    have = set(names)
    want = [n for n, _ in arch.layers()]
    missing = [n for n in want if n not in have]
    extra = sorted(have - set(want))
    if not (missing or extra):
        return
    lines = [f"{source} looks like {arch.describe()} but does not hold exactly its layers:"]
    for label, items in (("missing layers", missing), ("extra layers", extra)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:_SHOW])}{more}")
    raise CheckpointError("\n".join(lines), "pass an unmodified keras.applications ResNet (a custom head must be "
                          "named 'predictions', one Dense layer after the average pool); save it again if it is truncated")


def names_by_order(keys: Sequence[str], arch_hint: KerasResNet | None = None) -> dict[str, str]:
    """Keras 3 weight-file keys (``conv2d_7``, ``batch_normalization``...) -> layer names, for files
    whose groups do not record the layer's name (older Keras 3): Keras addresses a layer by its class
    and its rank among the layers of that class in ``model.layers``, so the Keras Applications order
    of the network the counts identify gives the names."""
    per_class = Counter(_class_of_key(k) for k in keys)
    arch = arch_hint or _arch_from_counts(per_class)
    order: dict[str, list[str]] = {}
    for name, cls in arch.layers(include_top=per_class.get("dense", 0) > 0):
        order.setdefault(snake_case(cls), []).append(name)
    out = {}
    for key in keys:
        cls, idx = _class_of_key(key), _index_of_key(key)
        names = order.get(cls, [])
        if idx >= len(names):
            raise CheckpointError(f"the weights file has a layer {key!r} that {arch.describe()} does not have",
                                  "pass an unmodified keras.applications ResNet")
        out[key] = names[idx]
    return out


def _arch_from_counts(per_class: Counter) -> KerasResNet:
    convs, bns, dense = per_class.get("conv2d", 0), per_class.get("batch_normalization", 0), per_class.get("dense", 0)
    for depth, (bottleneck, blocks) in DEPTHS.items():
        n = sum(blocks)
        if bottleneck and convs == 3 * n + 5:
            if bns == 3 * n + 5:
                return KerasResNet(depth, Variant.V1, 1 if dense else None)
            if bns == 3 * n + 1:
                return KerasResNet(depth, Variant.V2, 1 if dense else None)
    raise CheckpointError(
        f"the weights file records no layer names and its {convs} Conv2D, {bns} BatchNormalization and {dense} "
        "Dense layers are not those of a Keras ResNet50/101/152(V2)",
        "save the model with a recent Keras (model.save('model.keras')), which records the layer names")


def snake_case(cls: str) -> str:
    """keras.src.utils.naming.to_snake_case, which names the groups of a Keras 3 weights file."""
    name = re.sub(r"\W+", "", cls)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _class_of_key(key: str) -> str:
    return re.sub(r"_\d+$", "", key)


def _index_of_key(key: str) -> int:
    m = re.search(r"_(\d+)$", key)
    return int(m.group(1)) if m else 0


# ----------------------------------------------------------------------------------------- convert

_V1_ROLES = {"1_conv": "conv1", "2_conv": "conv2", "3_conv": "conv3", "0_conv": "downsample.0",
             "1_bn": "bn1", "2_bn": "bn2", "3_bn": "bn3", "0_bn": "downsample.1"}
_V2_ROLES = {"preact_bn": "bn1", "1_conv": "conv1", "1_bn": "bn2", "2_conv": "conv2", "2_bn": "bn3",
             "3_conv": "conv3", "0_conv": "downsample.0"}
_V2_CONV_BIAS = {"0_conv", "3_conv"}  # Keras ResNetV2: the other convs have use_bias=False


def torch_prefix(name: str, variant: Variant) -> str:
    """``conv2_block1_1_conv`` -> ``layer1.0.conv1`` (v1) and so on."""
    fixed = {"conv1_conv": "conv1", "conv1_bn": "bn1", "post_bn": "post_bn", HEAD: "fc"}
    if name in fixed:
        return fixed[name]
    m = _BLOCK.match(name)
    if m is None:
        raise KeyError(name)
    roles = _V2_ROLES if variant is Variant.V2 else _V1_ROLES
    return f"layer{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.{roles[m.group(3)]}"


def _has_bias(name: str, variant: Variant) -> bool:
    """Keras v1 convs all have a bias; V2's stem, shortcut and last 1x1 only."""
    if variant is not Variant.V2 or name == "conv1_conv":
        return True
    m = _BLOCK.match(name)
    return m is not None and m.group(3) in _V2_CONV_BIAS


def to_state_dict(arch: KerasResNet, layers: Mapping[str, KerasLayer], source: str = "the file"
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every Keras weight as our state_dict entry (float32, OIHW), v1 conv biases folded into BN.

    Returns the state_dict and, for messages, the Keras weight each key comes from.
    """
    sd: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    v2 = arch.variant is Variant.V2
    conv_bias: dict[str, np.ndarray] = {}  # v1: bias of the conv that feeds BN <name>
    for name, cls in arch.layers():
        layer = layers[name]
        prefix = torch_prefix(name, arch.variant)
        w = [np.asarray(a, dtype=np.float32) for a in layer.weights]
        before = set(sd)
        if cls == CONV:
            has_bias = _has_bias(name, arch.variant)
            _expect(layer, 2 if has_bias else 1, "kernel" + (" and bias" if has_bias else ""), source)
            _expect_rank(layer, w[0], 4, source)
            sd[f"{prefix}.weight"] = np.ascontiguousarray(w[0].transpose(3, 2, 0, 1))
            if has_bias and v2:
                sd[f"{prefix}.bias"] = w[1]
            elif has_bias:
                conv_bias[name[: -len("conv")] + "bn"] = w[1]
        elif cls == BN:
            _expect(layer, 4, "gamma, beta, moving_mean and moving_variance", source)
            gamma, beta, mean, var = w
            if name in conv_bias:
                b = conv_bias.pop(name)
                if b.shape != mean.shape:
                    raise CheckpointError(f"{source}: the bias of the conv before {name} has shape {list(b.shape)}, "
                                          f"its moving mean {list(mean.shape)}", "the file is corrupt or not a Keras ResNet")
                mean = mean - b  # BN(Wx + b) = gamma (Wx - (mean - b)) / sqrt(var + eps) + beta
            sd.update({f"{prefix}.weight": gamma, f"{prefix}.bias": beta, f"{prefix}.running_mean": mean,
                       f"{prefix}.running_var": var})
        else:
            _expect(layer, 2, "kernel and bias", source)
            _expect_rank(layer, w[0], 2, source)
            sd[f"{prefix}.weight"] = np.ascontiguousarray(w[0].T)
            sd[f"{prefix}.bias"] = w[1]
        origin.update({k: name for k in set(sd) - before})
    return sd, origin


def _expect(layer: KerasLayer, n: int, what: str, source: str) -> None:
    if len(layer.weights) != n:
        got = ", ".join(layer.weight_names) or f"{len(layer.weights)} arrays"
        raise CheckpointError(f"{source}: layer {layer.name} holds {len(layer.weights)} weights ({got}); a Keras "
                              f"ResNet's has {n} ({what})", "pass an unmodified keras.applications ResNet")


def _expect_rank(layer: KerasLayer, w: np.ndarray, rank: int, source: str) -> None:
    if w.ndim != rank:
        raise CheckpointError(f"{source}: layer {layer.name} has a kernel of shape {list(w.shape)}, expected rank {rank}",
                              "the file is corrupt or not a Keras ResNet")


def keras_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Our parameter shape as Keras stores it (for messages): OIHW -> HWIO, OI -> IO."""
    if len(shape) == 4:
        o, i, h, w = shape
        return (h, w, i, o)
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)
