"""Registry of model names: ``resnet50`` (v1.5), ``resnet50-v1``, ``resnet50-v2``, ..."""

from __future__ import annotations

from dataclasses import dataclass

from edge_resnet.errors import ModelError
from edge_resnet.models.resnet import (
    BasicBlock,
    Block,
    Bottleneck,
    Pooling,
    PreActBasicBlock,
    PreActBottleneck,
    ResNet,
    Variant,
)

# depth -> (bottleneck?, blocks per stage), as in the paper's Table 1
DEPTHS: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}

_BLOCKS: dict[tuple[bool, bool], Block] = {
    # (bottleneck, pre-activation) -> block class
    (False, False): BasicBlock,
    (True, False): Bottleneck,
    (False, True): PreActBasicBlock,
    (True, True): PreActBottleneck,
}

_SUFFIX = {Variant.V1_5: "", Variant.V1: "-v1", Variant.V2: "-v2"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    depth: int
    variant: Variant

    @property
    def bottleneck(self) -> bool:
        return DEPTHS[self.depth][0]

    @property
    def layers(self) -> tuple[int, int, int, int]:
        return DEPTHS[self.depth][1]

    @property
    def keras_name(self) -> str | None:
        """The Keras Applications network whose checkpoints this model loads exactly, if any."""
        if not self.bottleneck or self.variant is Variant.V1_5:
            return None
        return f"ResNet{self.depth}{'V2' if self.variant is Variant.V2 else ''}"

    def build(self, num_classes: int = 1000, include_top: bool = True, pooling: Pooling | str | None = None,
              bn_eps: float | None = None) -> ResNet:
        """The network; ``bn_eps`` None: the variant's own (1e-5 for v1/v1.5, Keras's 1.001e-5 for v2)."""
        block = _BLOCKS[(self.bottleneck, self.variant is Variant.V2)]
        pool = Pooling(pooling) if pooling is not None else (Pooling.AVG if include_top else Pooling.NONE)
        if include_top and pool is not Pooling.AVG:
            raise ModelError(
                f"pooling={pool.value!r} only applies without the classifier head",
                "pass include_top=False (CLI: --no-top) to use max or no pooling",
            )
        if num_classes < 1:
            raise ModelError(f"num_classes must be >= 1, got {num_classes}")
        return ResNet(block, self.layers, self.variant, num_classes, include_top, pool, bn_eps=bn_eps)


MODELS: dict[str, ModelSpec] = {
    f"resnet{d}{_SUFFIX[v]}": ModelSpec(f"resnet{d}{_SUFFIX[v]}", d, v) for d in DEPTHS for v in Variant
}


def get_spec(name: str, variant: Variant | str | None = None) -> ModelSpec:
    """The spec for a registered name; ``variant`` overrides the name's default (v1.5)."""
    key = name.lower()
    if key not in MODELS:
        raise ModelError(f"unknown model {name!r}", f"use one of: {', '.join(MODELS)}")
    spec = MODELS[key]
    if variant is None:
        return spec
    try:
        v = Variant(variant)
    except ValueError as exc:
        raise ModelError(f"unknown variant {variant!r}", f"use one of: {', '.join(x.value for x in Variant)}") from exc
    if key != f"resnet{spec.depth}" and v is not spec.variant:
        raise ModelError(f"model {name!r} is {spec.variant.value}, but variant {v.value!r} was asked for",
                         f"use resnet{spec.depth} with --variant {v.value}, or drop --variant")
    return MODELS[f"resnet{spec.depth}{_SUFFIX[v]}"]


def build_model(name: str, variant: Variant | str | None = None, num_classes: int = 1000,
                include_top: bool = True, pooling: Pooling | str | None = None) -> ResNet:
    """Build a model by registered name, e.g. ``build_model("resnet50", num_classes=10)``."""
    return get_spec(name, variant).build(num_classes=num_classes, include_top=include_top, pooling=pooling)
