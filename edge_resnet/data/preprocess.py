"""The one preprocessing recipe shared by calibration, validation and the runtime.

A :class:`PreprocessSpec` is stored with every artifact and reused unchanged everywhere, so the INT8
scales are calibrated on exactly the tensors the engine later sees. The recipe is torchvision's
ImageNet evaluation transform (``Resize(resize)`` + ``CenterCrop(input_size)`` + ``ToTensor`` +
``Normalize(mean, std)``) done with PIL and numpy only: this module must not import torch, the
camera runtime ships with numpy + pillow.

The resize is part of the contract (``resampler``): ``pil`` is torchvision's antialiased resize,
``opencv`` crops the same centre region and resizes only that with ``cv2.resize`` (no antialiasing,
several times cheaper per camera frame). Calibration, validation and the runtime all resize through
the spec, so a bundle is calibrated on the resampler it runs with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

from edge_resnet.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelOrder",
    "DeepStreamNormalization",
    "NormalizationAffine",
    "PreprocessSpec",
    "Resampler",
    "three_channels",
    "to_rgb",
]


class ChannelOrder(str, Enum):
    """Order of the three colour channels: of an input image, or of the model's input tensor."""

    RGB = "rgb"
    BGR = "bgr"


class Resampler(str, Enum):
    """The library that resizes: part of the preprocessing contract (the pixels differ slightly)."""

    PIL = "pil"  # torchvision's Resize: PIL, antialiased; resize the frame, then centre-crop
    OPENCV = "opencv"  # cv2.resize of the centre region Resize + CenterCrop keeps, straight to the input size


_RESAMPLING: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# interpolation -> cv2 flag (cv2 is imported only when a spec uses it)
_CV2_INTERPOLATION: dict[str, str] = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC", "nearest": "INTER_NEAREST"}
_LAYOUTS = ("NCHW",)
# bounds on the sizes a spec may ask for (a 100000 px input is a 240 GB batch, not a typo to compute)
MAX_INPUT_SIZE = 4096
MAX_RESIZE = 2 * MAX_INPUT_SIZE
_DTYPES = ("float32",)


@dataclass(frozen=True)
class NormalizationAffine:
    """``out[c] = scale[c] * (pixel[c] - offset[c])`` for 0..255 pixels, in the model's channel order."""

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    channel_order: ChannelOrder


@dataclass(frozen=True)
class DeepStreamNormalization:
    """Values for a DeepStream ``nvinfer`` config: ``y = net-scale-factor * (x - offsets)``.

    DeepStream has a single scalar ``net-scale-factor``. When the spec's std differs across channels
    (ImageNet's does: 0.229/0.224/0.225) the scalar is the mean of the per-channel ``1/(255*std)``
    and the normalized values are off by at most ``max_relative_error`` (about 1.3 % for ImageNet).
    ``exact`` is True when one scalar reproduces the spec.
    """

    net_scale_factor: float
    offsets: tuple[float, float, float]
    model_color_format: int  # nvinfer: 0 = RGB, 1 = BGR
    exact: bool
    max_relative_error: float
    max_abs_error: float = 0.0  # worst |y_deepstream - y_spec| over pixels 0..255 (at 0 or 255)

    def config_entries(self) -> dict[str, str]:
        """The ``[property]`` entries, formatted for the config file."""
        return {
            "net-scale-factor": f"{self.net_scale_factor:.10g}",
            "offsets": ";".join(f"{o:.10g}" for o in self.offsets),
            "model-color-format": str(self.model_color_format),
        }


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise DataError(
            f"preprocess {name} must be a list of 3 numbers (one per channel), got {value!r}",
            f"write e.g. {name} = [0.485, 0.456, 0.406]",
        )
    out = []
    for v in value:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not math.isfinite(v)
        ):
            raise DataError(f"preprocess {name} must hold 3 finite numbers, got {value!r}")
        out.append(float(v))
    return (out[0], out[1], out[2])


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"preprocess {name} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PreprocessSpec:
    """How one uint8 image becomes one float32 CHW model input.

    The shorter side is resized to ``resize`` (PIL, antialiased), the centre ``input_size`` square
    is cropped, pixels are divided by 255 and normalized with ``mean``/``std``. ``mean`` and ``std``
    are indexed in the model's channel order (``channel_order``): entry ``c`` applies to channel
    ``c`` of the output tensor.
    """

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: ChannelOrder = ChannelOrder.RGB
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"
    resampler: Resampler = Resampler.PIL

    def __post_init__(self) -> None:
        # Coerce JSON-ish values (lists, strings) so from_dict and keyword construction agree.
        input_size = _int("input_size", self.input_size)
        resize = _int("resize", self.resize)
        if input_size < 1:
            raise DataError(f"preprocess input_size must be >= 1, got {input_size}")
        if input_size > MAX_INPUT_SIZE or resize > MAX_RESIZE:
            raise DataError(
                f"preprocess input_size {input_size} / resize {resize} is out of range",
                f"use an input size up to {MAX_INPUT_SIZE} and a resize up to {MAX_RESIZE} pixels",
            )
        if resize < input_size:
            raise DataError(
                f"preprocess resize ({resize}) is smaller than input_size ({input_size})",
                "resize is the shorter side before the centre crop; use resize >= input_size "
                "(ImageNet models: resize 256, input_size 224)",
            )
        mean = _triple("mean", self.mean)
        std = _triple("std", self.std)
        if any(s <= 0 for s in std):
            raise DataError(f"preprocess std must be positive, got {list(std)}")
        try:
            order = ChannelOrder(str(getattr(self.channel_order, "value", self.channel_order)).lower())
        except ValueError:
            raise DataError(
                f"unknown channel_order {self.channel_order!r}",
                "use 'rgb' or 'bgr' (the order the model expects)",
            ) from None
        if self.interpolation not in _RESAMPLING:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}", f"use one of {sorted(_RESAMPLING)}"
            )
        try:
            resampler = Resampler(str(getattr(self.resampler, "value", self.resampler)).lower())
        except ValueError:
            raise DataError(f"unknown resampler {self.resampler!r}",
                            f"use one of {[r.value for r in Resampler]}") from None
        if self.layout not in _LAYOUTS:
            raise DataError(f"unsupported layout {self.layout!r}", f"use one of {list(_LAYOUTS)}")
        if self.dtype not in _DTYPES:
            raise DataError(f"unsupported dtype {self.dtype!r}", f"use one of {list(_DTYPES)}")
        for name, value in (
            ("input_size", input_size),
            ("resize", resize),
            ("mean", mean),
            ("std", std),
            ("channel_order", order),
            ("resampler", resampler),
        ):
            object.__setattr__(self, name, value)

    # -- serialization ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists, strings, numbers); ``from_dict(to_dict())`` round-trips."""
        return {
            "input_size": self.input_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order.value,
            "interpolation": self.interpolation,
            "layout": self.layout,
            "dtype": self.dtype,
            "resampler": self.resampler.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Read a spec written by :meth:`to_dict`. Missing keys take the defaults; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise DataError(f"a preprocess spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"unknown keys in preprocess spec: {unknown}", f"known keys: {sorted(known)}")
        return cls(**dict(data))

    # -- the transform ------------------------------------------------------------------------

    @cached_property
    def _lut(self) -> np.ndarray:
        """(3, 256) float32 table: value ``v`` of output channel ``c`` -> ``(v/255 - mean[c]) / std[c]``.

        Computed with the same float32 operations as torchvision's ToTensor + Normalize, so a table
        lookup gives bit-identical results and is faster than the arithmetic per pixel.
        """
        v = np.arange(256, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return np.ascontiguousarray((v[None, :] - mean) / std, dtype=np.float32)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing the shorter side to ``resize`` (torchvision's rounding)."""
        if width <= height:
            return int(self.resize * height / width), self.resize
        return self.resize, int(self.resize * width / height)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        """Resize (shorter side to ``resize``) and centre-crop an HxWx3 uint8 image, channels untouched.

        Both resamplers treat each channel on its own, so resizing a BGR frame and reordering the crop
        gives the same bytes as reordering first (tested), without copying the full frame.
        """
        if self.resampler is Resampler.OPENCV:
            return self._crop_opencv(image)
        h, w = image.shape[:2]
        new_h, new_w = self.resized_size(h, w)
        if (new_h, new_w) != (h, w):
            pil = Image.fromarray(np.ascontiguousarray(image))  # HxWx3 uint8 -> "RGB" (any order)
            pil = pil.resize((new_w, new_h), _RESAMPLING[self.interpolation], reducing_gap=None)
            image = np.asarray(pil)
        s = self.input_size
        top = int(round((new_h - s) / 2.0))
        left = int(round((new_w - s) / 2.0))
        return image[top : top + s, left : left + s]

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the source region the ``opencv`` resampler resizes: the centre
        square that ``Resize(resize)`` + ``CenterCrop(input_size)`` keeps, side ``min(h, w) * input_size /
        resize`` rounded to whole pixels."""
        side = max(1, int(round(min(height, width) * self.input_size / self.resize)))
        return (height - side) // 2, (width - side) // 2, side, side

    def _crop_opencv(self, image: np.ndarray) -> np.ndarray:
        cv2 = import_cv2()
        top, left, h, w = self.crop_box(*image.shape[:2])
        s = self.input_size
        region = image[top : top + h, left : left + w]
        if (h, w) == (s, s):
            return region
        return cv2.resize(region, (s, s), interpolation=getattr(cv2, _CV2_INTERPOLATION[self.interpolation]))

    def resize_and_crop(self, image: np.ndarray, order: ChannelOrder | str = ChannelOrder.RGB) -> np.ndarray:
        """The geometric part only: uint8 image in -> ``input_size`` square uint8 HxWx3 RGB out."""
        return self.crop(image, order, ChannelOrder.RGB)

    def crop(self, image: np.ndarray, order: ChannelOrder | str, out_order: ChannelOrder) -> np.ndarray:
        """The geometric part only, channels in ``out_order``: what an engine that normalises itself takes."""
        image, order = three_channels(image, order)
        crop = self._crop(image)
        return crop[..., ::-1] if order is not out_order else crop

    def apply(self, image: np.ndarray, order: ChannelOrder | str = ChannelOrder.RGB,
              out: np.ndarray | None = None) -> np.ndarray:
        """One uint8 image (HxWx3 in ``order``, HxW grayscale, or HxWx4 with alpha) -> CHW float32.

        ``order`` is the channel order of the given image (OpenCV frames are BGR); the output is in
        the model's channel order (``self.channel_order``). ``out``: a C-contiguous (3, S, S) float32
        array to write into (e.g. one row of a batch), instead of a new one.
        """
        image, order = three_channels(image, order)
        crop = self._crop(image)
        swap = order is not self.channel_order  # output channel c reads crop channel 2 - c
        lut = self._lut
        shape = (3, self.input_size, self.input_size)
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise DataError(f"apply(out=...) needs a C-contiguous float32 array of shape {shape}, got "
                            f"{out.dtype} {out.shape}")
        for c in range(3):
            np.take(lut[c], crop[..., 2 - c if swap else c], out=out[c])
        return out

    def apply_batch(
        self, images: Sequence[np.ndarray] | np.ndarray, order: ChannelOrder | str = ChannelOrder.RGB
    ) -> np.ndarray:
        """A list of uint8 images (any sizes) or an (N, H, W, C) uint8 array -> NCHW float32."""
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise DataError(
                f"apply_batch takes a list of images or an (N, H, W, C) array, got an array of shape {images.shape}",
                "for a single image use apply(); for (N, H, W) grayscale pass list(array)",
            )
        n = len(images)
        if n == 0:
            raise DataError("apply_batch got no images", "pass at least one image")
        s = self.input_size
        out = np.empty((n, 3, s, s), dtype=np.float32)
        for i, image in enumerate(images):
            self.apply(image, order, out=out[i])
        return out

    # -- for runtimes that normalize themselves (DeepStream, ...) ------------------------------

    def normalization_affine(self) -> NormalizationAffine:
        """Per-channel ``(scale, offset)`` with ``out = scale * (pixel - offset)``, pixel in 0..255.

        ``(p/255 - mean)/std == (p - 255*mean) / (255*std)``, so ``offset = 255*mean`` and
        ``scale = 1/(255*std)``, in the model's channel order.
        """
        s0, s1, s2 = (1.0 / (255.0 * s) for s in self.std)
        m0, m1, m2 = (255.0 * m for m in self.mean)
        return NormalizationAffine(scale=(s0, s1, s2), offset=(m0, m1, m2), channel_order=self.channel_order)

    def deepstream_normalization(self) -> DeepStreamNormalization:
        """DeepStream's scalar ``net-scale-factor`` (mean of the per-channel scales) and ``offsets``.

        See :class:`DeepStreamNormalization` for the approximation when std differs across channels.
        """
        affine = self.normalization_affine()
        scales = np.asarray(affine.scale, dtype=np.float64)
        scalar = float(scales.mean())
        rel = float(np.max(np.abs(scales - scalar) / scales))
        exact = bool(np.allclose(scales, scales[0], rtol=1e-9, atol=0.0))
        if not exact:
            logger.debug("DeepStream net-scale-factor %.6g approximates per-channel %s", scalar, affine.scale)
        worst = max(abs(scalar - s_c) * max(o, 255.0 - o) for s_c, o in zip(affine.scale, affine.offset, strict=True))
        return DeepStreamNormalization(
            net_scale_factor=float(scales[0]) if exact else scalar,
            offsets=affine.offset,
            model_color_format=0 if self.channel_order is ChannelOrder.RGB else 1,
            exact=exact,
            max_relative_error=0.0 if exact else rel,
            max_abs_error=0.0 if exact else float(worst),
        )


def import_cv2():  # -> the cv2 module
    """OpenCV, for specs whose resampler is ``opencv``; a DataError naming the extra when it is missing."""
    try:
        import cv2
    except ImportError as exc:
        raise DataError("this preprocessing spec resizes with OpenCV (resampler 'opencv'), which is not installed",
                        "pip install 'edge-resnet[video]' (opencv-python-headless)") from exc
    return cv2


def three_channels(image: np.ndarray, order: ChannelOrder | str = ChannelOrder.RGB) -> tuple[np.ndarray, ChannelOrder]:
    """Validate one uint8 image; return it as HxWx3 in its own channel order (grayscale replicated, alpha
    dropped), and that order. No copy for an HxWx3 array: the caller reorders channels later, on
    the small crop rather than on the full frame."""
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"expected an image as a numpy array, got {type(image).__name__}",
            "convert it first, e.g. np.asarray(pil_image.convert('RGB'))",
        )
    try:
        order = ChannelOrder(str(getattr(order, "value", order)).lower())
    except ValueError:
        raise DataError(f"unknown channel order {order!r}", "use 'rgb' or 'bgr'") from None
    if image.dtype != np.uint8:
        raise DataError(
            f"expected a uint8 image (pixels 0..255), got dtype {image.dtype}",
            "convert to 8-bit first, e.g. np.clip(x, 0, 255).astype(np.uint8); "
            "already-normalized float tensors do not go through preprocessing",
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        if image.size == 0:
            raise DataError(f"empty image of shape {image.shape}", "check the image source")
        return np.repeat(image[..., None], 3, axis=2), order
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DataError(
            f"expected an image of shape (H, W, 3), (H, W, 4) or (H, W), got {image.shape}",
            "pass one HxWxC image in channels-last layout (transpose CHW arrays with .transpose(1, 2, 0))",
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"empty image of shape {image.shape}", "check the image source")
    return image[..., :3], order


def to_rgb(image: np.ndarray, order: ChannelOrder | str = ChannelOrder.RGB) -> np.ndarray:
    """Validate one uint8 image and return it as HxWx3 RGB (grayscale replicated, alpha dropped).

    ``order`` is the channel order of ``image`` (``bgr`` for OpenCV frames, also BGRA).
    """
    image, order = three_channels(image, order)
    return np.ascontiguousarray(image[..., ::-1] if order is ChannelOrder.BGR else image)
