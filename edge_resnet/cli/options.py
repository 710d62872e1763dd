"""Option groups shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def model_options(f: F) -> F:
    for opt in reversed([
        click.option("--model", "model_name", default="resnet50", show_default=True,
                     help="Registered model name (see `edge-resnet models`)."),
        click.option("--variant", type=click.Choice(["v1", "v1.5", "v2"]), default=None,
                     help="Override the name's variant (default v1.5)."),
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="A .pt/.pth state_dict (loaded with weights_only=True)."),
        click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True),
        click.option("--no-top", is_flag=True, help="Drop the classifier head (Keras include_top=False)."),
        click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=None,
                     help="With --no-top: avg/max give an embedding, none the last feature map."),
        click.option("--input-size", type=click.IntRange(min=32), default=224, show_default=True),
    ]):
        f = opt(f)
    return f


def build_from_options(model_name: str, variant: str | None, weights: str | None, num_classes: int,
                       no_top: bool, pooling: str | None) -> tuple[Any, str | None]:
    """Build the model the options describe, with weights loaded; returns (model, weights sha256)."""
    from edge_resnet.models import build_model, load_weights

    model = build_model(model_name, variant=variant, num_classes=num_classes, include_top=not no_top,
                        pooling=pooling if no_top else None)
    digest = load_weights(model, weights) if weights else None
    return model.eval(), digest
