"""Options of every command that reads images: the preprocessing spec and the data source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]
# kept literal so `--help` does not import numpy/PIL; equal to edge_resnet.data.preprocess's bounds
MAX_INPUT_SIZE = 4096
MAX_RESIZE = 8192


def _floats3(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}")
    return parts  # type: ignore[return-value]


def preprocess_options(f: F) -> F:
    for opt in reversed([
        click.option("--input-size", type=click.IntRange(min=32, max=MAX_INPUT_SIZE), default=None,
                     help="Model input size (default: the model's, or 224)."),
        click.option("--resize", type=click.IntRange(min=1, max=MAX_RESIZE), default=None,
                     help="Shorter side before the centre crop (default: input size x 256/224)."),
        click.option("--mean", callback=_floats3, default=None, help="Per-channel mean on 0..1 pixels, e.g. 0.485,0.456,0.406."),
        click.option("--std", callback=_floats3, default=None, help="Per-channel std on 0..1 pixels."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None,
                     help="Channel order the model expects (default rgb)."),
        click.option("--resampler", type=click.Choice(["pil", "opencv"]), default=None,
                     help="Library that resizes, part of the bundle's preprocessing: pil (torchvision's antialiased "
                          "resize, default) or opencv (cv2.resize of the centre crop: several times cheaper per "
                          "camera frame; needs edge-resnet[video])."),
    ]):
        f = opt(f)
    return f


def make_spec(input_size: int | None, resize: int | None, mean: tuple | None, std: tuple | None,
              channel_order: str | None, base: Any = None, resampler: str | None = None) -> Any:
    """A PreprocessSpec from the options, over ``base`` (e.g. a bundle's or the model's spec)."""
    from dataclasses import replace

    from edge_resnet.data import PreprocessSpec

    spec = base or PreprocessSpec()
    changes: dict[str, Any] = {}
    if input_size is not None:
        changes["input_size"] = input_size
        if resize is None:
            changes["resize"] = max(input_size, round(input_size * 256 / 224))
    if resize is not None:
        changes["resize"] = resize
    if mean is not None:
        changes["mean"] = mean
    if std is not None:
        changes["std"] = std
    if channel_order is not None:
        changes["channel_order"] = channel_order
    if resampler is not None:
        changes["resampler"] = resampler
    return replace(spec, **changes) if changes else spec
