"""A Keras Applications ResNet file (``.keras``, ``.weights.h5``, legacy ``.h5``) as our state_dict.

Ties the readers together: :mod:`keras_archive` / :mod:`keras_h5` read the file, the model config
(when the file has one) is used as JSON data for the layer names, classes and BN epsilon, and
:mod:`keras_names` identifies the network and maps its weights. Neither Keras nor TensorFlow is
imported.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_resnet.errors import CheckpointError
from edge_resnet.models.keras_archive import read_config, read_keras_archive
from edge_resnet.models.keras_h5 import KerasH5, read_h5
from edge_resnet.models.keras_names import (
    HEAD,
    KerasResNet,
    check_layers,
    identify,
    keras_shape,
    names_by_order,
    snake_case,
    to_state_dict,
)
from edge_resnet.models.registry import DEPTHS
from edge_resnet.models.resnet import ResNet

log = logging.getLogger(__name__)


@dataclass
class KerasCheckpoint:
    path: Path
    layout: str
    arch: KerasResNet
    state_dict: dict[str, torch.Tensor]
    origin: dict[str, str]  # state_dict key -> the Keras layer it comes from
    keras_version: str | None = None

    def describe(self) -> str:
        version = f", Keras {self.keras_version}" if self.keras_version else ""
        return f"{self.arch.describe()} ({self.layout}{version})"

    def prepare(self, model: nn.Module) -> None:
        """Check that ``model`` is this file's network and give it the file's BN epsilon."""
        check_model(model, self.arch, self.path)
        self.check_shapes(model)
        n = 0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = self.arch.bn_eps
                n += 1
        log.debug("%s: BN epsilon %g on %d layers", self.path, self.arch.bn_eps, n)


    def check_shapes(self, model: nn.Module) -> None:
        """Every weight has the shape ``model`` needs; the error names Keras layers and Keras shapes."""
        own = model.state_dict()
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in self.state_dict.items()
               if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if not bad:
            return
        shown = "; ".join(f"{self.origin.get(k, k)}: {list(keras_shape(a))} in the file, {self.arch.keras_name} has "
                          f"{list(keras_shape(b))}" for k, a, b in bad[:5])
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise CheckpointError(f"{self.path} has {self.arch.keras_name}'s layers but {len(bad)} of other shapes: "
                              f"{shown}{more}", "pass an unmodified keras.applications ResNet")


def inspect_keras(path: str | Path, archive: bool) -> KerasResNet:
    """Which Keras ResNet ``path`` holds, reading names and shapes only (no weights)."""
    path = Path(path)
    if archive:
        config = read_config(path)
        info = _ConfigInfo.of(config)
        return identify(info.names, info.units.get(HEAD), model_name=info.model_name, classes=info.classes,
                        bn_eps=info.bn_eps(path), source=str(path))
    return _identify(read_h5(path, data=False), path)


def read_keras(path: str | Path, archive: bool) -> KerasCheckpoint:
    path = Path(path)
    kf = read_keras_archive(path) if archive else read_h5(path)
    arch = _identify(kf, path)
    layers = _named_layers(kf, arch)
    check_layers(arch, layers, source=str(path))
    sd, origin = to_state_dict(arch, layers, source=str(path))
    log.info("%s: %s", path, arch.describe())
    _note_activation(kf.config, path)
    return KerasCheckpoint(path, kf.layout, arch, {k: torch.from_numpy(v) for k, v in sd.items()}, origin,
                           kf.keras_version)


def _identify(kf: KerasH5, path: Path) -> KerasResNet:
    info = _ConfigInfo.of(kf.config)
    names = _layer_names(kf, None)
    head = next((kf.head_units[k] for k, n in names.items() if n == HEAD and k in kf.head_units), None)
    return identify(list(names.values()), head, model_name=info.model_name, classes=info.classes or None,
                    bn_eps=info.bn_eps(path), source=str(path))


def _layer_names(kf: KerasH5, arch: KerasResNet | None) -> dict[str, str]:
    """The file's key of each layer -> its Keras layer name (older Keras 3 files record no names)."""
    if kf.named:
        return {k: k for k in kf.layers}
    keys = list(kf.layers)
    by_key = _ConfigInfo.of(kf.config).keys if kf.config else {}
    if not by_key or not set(keys) <= set(by_key):
        by_key = names_by_order(keys, arch)
    return {k: by_key[k] for k in keys}


def _named_layers(kf: KerasH5, arch: KerasResNet) -> dict[str, Any]:
    return {name: replace(kf.layers[key], name=name) for key, name in _layer_names(kf, arch).items()}


def check_model(model: nn.Module, arch: KerasResNet, path: Path | str) -> None:
    """One clear error when ``model`` is not the network the Keras file holds."""
    if not isinstance(model, ResNet):
        raise CheckpointError(f"{path} holds {arch.describe()}, which loads into our ResNet only")
    counts = tuple(len(getattr(model, f"layer{i}")) for i in (1, 2, 3, 4))
    depth = next((d for d, (b, c) in DEPTHS.items() if c == counts and b == (model.num_features == 2048)), None)
    classes = model.fc.out_features if hasattr(model, "fc") else None
    problems = []
    if depth != arch.depth:
        problems.append(f"depth {depth} (the file: {arch.depth})")
    if model.variant is not arch.variant:
        problems.append(f"variant {model.variant.value} (the file: {arch.variant.value})")
    if classes is not None and arch.num_classes is None:
        problems.append("a classifier (the file has none: it was saved with include_top=False)")
    elif classes is not None and classes != arch.num_classes:
        problems.append(f"{classes} classes (the file: {arch.num_classes})")
    if problems:
        fix = f"build resnet{arch.depth}-{arch.variant.value}" + (
            f" with num_classes={arch.num_classes}" if arch.num_classes else " with include_top=False")
        raise CheckpointError(f"{path} holds {arch.describe()}, but the model has {'; '.join(problems)}",
                              f"{fix} (the CLI infers all of it from the file when --model and --num-classes are left out)")


def _note_activation(config: dict[str, Any] | None, path: Path) -> None:
    info = _ConfigInfo.of(config)
    act = info.activations.get(HEAD)
    if act and act not in ("linear", "softmax"):
        log.warning("%s: the classifier applies %r; the exported graph outputs the values before it", path, act)
    elif act == "softmax":
        log.info("%s: the classifier applies softmax; the exported graph outputs the logits before it", path)


@dataclass
class _ConfigInfo:
    """What a Keras model config (``config.json`` / ``model_config``) says, read as plain JSON data."""

    model_name: str | None
    names: list[str]
    classes: dict[str, str]  # layer name -> class name
    units: dict[str, int]  # Dense layer -> units
    activations: dict[str, str]
    epsilons: dict[str, float]  # BatchNormalization layer -> epsilon
    keys: dict[str, str]  # Keras 3 weights-file group key (conv2d_3) -> layer name

    @classmethod
    def of(cls, config: dict[str, Any] | None) -> _ConfigInfo:
        inner = config.get("config") if isinstance(config, dict) else None
        layers = inner.get("layers") if isinstance(inner, dict) else None
        model_name = inner.get("name") if isinstance(inner, dict) and isinstance(inner.get("name"), str) else None
        out = cls(model_name, [], {}, {}, {}, {}, {})
        rank: Counter[str] = Counter()
        for entry in layers if isinstance(layers, list) else []:
            if not isinstance(entry, dict):
                continue
            lc = entry.get("config") if isinstance(entry.get("config"), dict) else {}
            name, klass = lc.get("name", entry.get("name")), entry.get("class_name")
            if not isinstance(name, str) or not isinstance(klass, str):
                continue
            out.names.append(name)
            out.classes[name] = klass
            if isinstance(lc.get("units"), int):
                out.units[name] = lc["units"]
            if isinstance(lc.get("activation"), str):
                out.activations[name] = lc["activation"]
            if klass == "BatchNormalization" and isinstance(lc.get("epsilon"), (int, float)):
                out.epsilons[name] = float(lc["epsilon"])
            snake = snake_case(klass)
            out.keys[snake if rank[snake] == 0 else f"{snake}_{rank[snake]}"] = name
            rank[snake] += 1
        return out

    def bn_eps(self, path: Path) -> float | None:
        values = set(self.epsilons.values())
        if len(values) > 1:
            raise CheckpointError(f"{path}: its BatchNormalization layers use different epsilons {sorted(values)}",
                                  "only Keras Applications ResNets (epsilon 1.001e-5 everywhere) are supported")
        return values.pop() if values else None
