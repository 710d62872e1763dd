"""scikit-learn's handwritten digits (1,797 real 8x8 images) as a small built-in real data set.

Used by ``edge-resnet demo`` and the tests: calibration and validation run on real images without a
download. Images stay 8x8 here; the :class:`~edge_resnet.data.preprocess.PreprocessSpec` upsamples
them to the model's input size like any other image.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Literal

import numpy as np

from edge_resnet.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["DIGITS_CLASS_NAMES", "DIGITS_SPLITS", "load_digits_split"]

DIGITS_CLASS_NAMES: list[str] = [str(i) for i in range(10)]
DIGITS_SPLITS = ("train", "test")
_TEST_SIZE = 0.3
_SEED = 0

Split = Literal["train", "test"]


@cache
def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # sklearn is imported here, not at module level: the camera runtime imports edge_resnet.data
    # for the preprocessing and must not need it.
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise DataError(
            "the built-in digits data set needs scikit-learn, which is not installed",
            "pip install scikit-learn",
        ) from exc
    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    # 0..16 -> 0..255 with round-half-up, replicated to 3 identical channels (a gray RGB image).
    gray = np.floor(pixels * (255.0 / 16.0) + 0.5).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=3)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, stratify=labels, random_state=_SEED, test_size=_TEST_SIZE
    )
    out = {"train": (x_train, y_train), "test": (x_test, y_test)}
    for arr in (x_train, x_test, y_train, y_test):
        arr.setflags(write=False)  # cached: callers get copies
    logger.debug("digits: %d train / %d test images", len(y_train), len(y_test))
    return out


def load_digits_split(split: Split | str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 8, 8, 3) RGB, labels int64 (N,)) of the stratified 70/30 split, seed 0.

    train: 1,257 images, test: 540. Class ``i`` is the digit ``i`` (see ``DIGITS_CLASS_NAMES``).
    """
    if split not in DIGITS_SPLITS:
        raise DataError(f"unknown digits split {split!r}", "use digits:train or digits:test")
    images, labels = _split()[split]
    return images.copy(), labels.copy()
