"""Option groups shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from edge_resnet.cli.data_options import MAX_INPUT_SIZE

F = Callable[..., Any]

WEIGHTS_HELP = ("A checkpoint: torch .pt/.pth (weights_only) or .safetensors state_dict (torchvision/timm keys), "
                "or a Keras Applications ResNet .keras / .weights.h5 / legacy .h5.")


def model_options(f: F) -> F:
    for opt in reversed([
        click.option("--model", "model_name", default=None,
                     help="Registered model name (see `edge-resnet models`); default: read from a Keras "
                          "--weights file, else resnet50."),
        click.option("--variant", type=click.Choice(["v1", "v1.5", "v2"]), default=None,
                     help="Override the name's variant (default v1.5; a Keras file's own)."),
        click.option("--weights", type=click.Path(dir_okay=False), default=None, help=WEIGHTS_HELP),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classes of the classifier; default: a Keras file's, else 1000."),
        click.option("--no-top", is_flag=True, help="Drop the classifier head (Keras include_top=False)."),
        click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=None,
                     help="With --no-top: avg/max give an embedding, none the last feature map."),
        click.option("--input-size", type=click.IntRange(min=32, max=MAX_INPUT_SIZE), default=224, show_default=True),
    ]):
        f = opt(f)
    return f


def finite_points(ctx: click.Context | None, param: click.Parameter | None, value: float | None) -> float | None:
    """A drift budget in points: a finite number (click's float type takes nan and inf); what a negative
    one means is the command's to say."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a drift budget: use a finite number of points, e.g. 0.5")
    return value


def ray_options(f: F) -> F:
    """``--ray`` and ``--ray-actors`` (Ray itself is imported only when they are given)."""
    for opt in reversed([
        click.option("--ray", "ray_cluster", metavar="auto|local|ADDRESS", default=None,
                     help="Run on a Ray cluster (pip install 'edge-resnet[ray]'): local starts one on this machine, "
                          "auto joins the one `ray start` runs here, or HOST:PORT. Results equal the local run's."),
        click.option("--ray-actors", type=click.IntRange(min=1), default=None,
                     help="With --ray: actors (each loads the bundle once); default one per CPU of the cluster."),
    ]):
        f = opt(f)
    return f
