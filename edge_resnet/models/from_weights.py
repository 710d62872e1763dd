"""What a weights file says about the model: which network to build, and its default preprocessing.

A Keras file names its network (depth, V1/V2, classes), so ``--model`` and ``--num-classes`` may be
left out and are checked when given. A torch or safetensors state dict says less: without
``--model`` it is ResNet-50 (v1.5) with 1000 classes, as without weights, and a mismatch is reported
when the weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_resnet.data import PreprocessSpec
from edge_resnet.errors import CheckpointError, ModelError
from edge_resnet.models.formats import keras_architecture
from edge_resnet.models.keras_names import KerasPreprocessing, KerasResNet
from edge_resnet.models.registry import get_spec

DEFAULT_MODEL = "resnet50"
DEFAULT_CLASSES = 1000

# keras.applications.imagenet_utils.preprocess_input, as a PreprocessSpec (mean/std on 0..1 pixels,
# in the model's channel order): "caffe" = BGR, x*255 - [103.939, 116.779, 123.68]; "tf" = x*255/127.5 - 1
_KERAS_SPECS: dict[KerasPreprocessing, dict] = {
    KerasPreprocessing.CAFFE: {"channel_order": "bgr", "mean": (103.939 / 255, 116.779 / 255, 123.68 / 255),
                               "std": (1 / 255, 1 / 255, 1 / 255)},
    KerasPreprocessing.TF: {"channel_order": "rgb", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}


@dataclass(frozen=True)
class ModelChoice:
    """The zoo model to build: registry name, variant, classes (and the Keras network, if any)."""

    name: str
    variant: str | None
    num_classes: int
    keras: KerasResNet | None = None


def resolve_model(model_name: str | None, variant: str | None, weights: str | Path | None,
                  num_classes: int | None, include_top: bool = True) -> ModelChoice:
    """Fill in what the options leave out from the weights file, and check what they give against it."""
    arch = keras_architecture(weights) if weights else None
    if arch is None:
        return ModelChoice(model_name or DEFAULT_MODEL, variant, num_classes or DEFAULT_CLASSES)
    src = f"{weights} holds {arch.describe()}"
    if model_name is not None:
        spec = get_spec(model_name, variant)  # unknown names and contradictory variants fail here
        explicit_variant = variant is not None or model_name.lower() != f"resnet{spec.depth}"
        if spec.depth != arch.depth:
            raise CheckpointError(
                f"--model {model_name} is ResNet-{spec.depth}, but {src}"
                + (" (Keras Applications has no ResNet-18/34)" if spec.depth < 50 else ""),
                f"pass --model {arch.model_name}, or leave --model out: it is read from the file")
        if explicit_variant and spec.variant is not arch.variant:
            raise CheckpointError(
                f"--model {model_name}{f' --variant {variant}' if variant else ''} is {spec.variant.value}, but {src} "
                f"(Keras {'ResNetV2 is v2' if arch.variant.value == 'v2' else 'ResNet50/101/152 are v1'})",
                f"pass --model {arch.model_name}, or leave --model and --variant out: they are read from the file")
    elif variant is not None and variant != arch.variant.value:
        raise CheckpointError(f"--variant {variant} does not match: {src}",
                              f"pass --variant {arch.variant.value}, or leave it out: it is read from the file")
    if include_top and arch.num_classes is None:
        raise CheckpointError(f"the model has a classifier, but {src}",
                              "pass --no-top (with --pooling avg|max|none) to build the network without a classifier")
    if num_classes is not None and include_top and num_classes != arch.num_classes:
        raise CheckpointError(f"--num-classes {num_classes} does not match: {src}",
                              f"pass --num-classes {arch.num_classes}, or leave it out: it is read from the file")
    return ModelChoice(arch.model_name, arch.variant.value, arch.num_classes or num_classes or DEFAULT_CLASSES, arch)


def checkpoint_preprocessing(weights: str | Path | None, input_size: int = 224) -> PreprocessSpec:
    """The default preprocessing for a model with these weights: Keras's own for a Keras file
    ("caffe" for ResNet50/101/152, "tf" for the V2s), else the torchvision ImageNet convention."""
    resize = max(input_size, round(input_size * 256 / 224))
    arch = keras_architecture(weights) if weights else None
    if arch is None:
        return PreprocessSpec(input_size=input_size, resize=resize)
    return PreprocessSpec(input_size=input_size, resize=resize, **_KERAS_SPECS[arch.preprocessing])


def check_head_options(no_top: bool, pooling: str | None) -> None:
    """--pooling shapes the output of a model without its classifier; with the classifier it would be ignored."""
    if pooling is not None and not no_top:
        raise ModelError(f"--pooling {pooling} applies to a model without its classifier, and --no-top is not given "
                         "(a classifier always average-pools before its fc layer)",
                         f"add --no-top for an embedding or feature-map model (--no-top --pooling {pooling}), "
                         "or drop --pooling")


def build_from_options(model_name: str | None, variant: str | None, weights: str | None, num_classes: int | None,
                       no_top: bool, pooling: str | None) -> tuple[Any, str | None]:
    """Build the model the options describe, with weights loaded; returns (model, weights sha256).

    ``model_name``/``num_classes`` None: read from a Keras weights file, else resnet50 / 1000.
    """
    from edge_resnet.models import build_model, load_weights  # torch is imported here, not before

    check_head_options(no_top, pooling)
    choice = resolve_model(model_name, variant, weights, num_classes, include_top=not no_top)
    model = build_model(choice.name, variant=choice.variant, num_classes=choice.num_classes, include_top=not no_top,
                        pooling=pooling if no_top else None)
    digest = load_weights(model, weights) if weights else None
    return model.eval(), digest
