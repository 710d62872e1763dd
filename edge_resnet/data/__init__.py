"""Calibration and validation data: the shared preprocessing, data sources, the built-in digits set.

Nothing here imports torch: the camera runtime reuses the preprocessing with numpy + pillow only.
OpenCV (video sources) and scikit-learn (digits) are imported only when used.
"""

from edge_resnet.data.datasets import (
    ARRAY_EXTENSIONS,
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Batch,
    Dataset,
    ImageBatch,
    load_image,
    open_dataset,
    sample_indices,
)
from edge_resnet.data.digits import DIGITS_CLASS_NAMES, load_digits_split
from edge_resnet.data.preprocess import (
    ChannelOrder,
    DeepStreamNormalization,
    NormalizationAffine,
    PreprocessSpec,
    to_rgb,
)

__all__ = [
    "ARRAY_EXTENSIONS",
    "DIGITS_CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Batch",
    "ChannelOrder",
    "Dataset",
    "DeepStreamNormalization",
    "ImageBatch",
    "NormalizationAffine",
    "PreprocessSpec",
    "load_digits_split",
    "load_image",
    "open_dataset",
    "sample_indices",
    "to_rgb",
]
