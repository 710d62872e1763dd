"""Which reader a checkpoint file needs, told by its first bytes (and its suffix when those are damaged).

- a zip with ``config.json`` (+ ``metadata.json`` / ``model.weights.h5``): a Keras 3 ``.keras`` archive;
- the HDF5 signature ``\\x89HDF\\r\\n\\x1a\\n``: Keras ``.weights.h5`` or legacy ``.h5``;
- an 8-byte little-endian header length followed by ``{``: safetensors;
- anything else (a torch zip or a legacy pickle stream): torch, read by :mod:`checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from edge_resnet.models.keras_h5 import HDF5_MAGIC
from edge_resnet.models.safetensors_file import header_length

if TYPE_CHECKING:
    import torch

    from edge_resnet.models.keras_checkpoint import KerasCheckpoint
    from edge_resnet.models.keras_names import KerasResNet


class CheckpointFormat(str, Enum):
    TORCH = "torch"
    SAFETENSORS = "safetensors"
    KERAS_ARCHIVE = "keras"
    KERAS_H5 = "keras-h5"


_BY_SUFFIX = {".safetensors": CheckpointFormat.SAFETENSORS, ".keras": CheckpointFormat.KERAS_ARCHIVE,
              ".h5": CheckpointFormat.KERAS_H5, ".hdf5": CheckpointFormat.KERAS_H5}


def sniff(path: str | Path) -> CheckpointFormat:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(HDF5_MAGIC):
        return CheckpointFormat.KERAS_H5
    if head.startswith(b"PK"):
        from edge_resnet.models.keras_archive import is_keras_archive

        if is_keras_archive(path):
            return CheckpointFormat.KERAS_ARCHIVE
    if header_length(head, path.stat().st_size) is not None:
        return CheckpointFormat.SAFETENSORS
    # a damaged file: the reader its suffix names gives the clearest message
    return _BY_SUFFIX.get(path.suffix.lower(), CheckpointFormat.TORCH)


@dataclass
class ForeignCheckpoint:
    """A checkpoint that is not a torch file, as a state_dict (plus what a Keras file says about itself)."""

    format: CheckpointFormat
    state_dict: dict[str, torch.Tensor]
    keras: KerasCheckpoint | None = None


def open_foreign(path: str | Path) -> ForeignCheckpoint | None:
    """Read a Keras or safetensors checkpoint; None for a torch file (or a path that is not a file)."""
    path = Path(path)
    if not path.is_file():
        return None
    fmt = sniff(path)
    if fmt is CheckpointFormat.TORCH:
        return None
    if fmt is CheckpointFormat.SAFETENSORS:
        from edge_resnet.models.safetensors_file import read_safetensors

        return ForeignCheckpoint(fmt, read_safetensors(path))
    from edge_resnet.models.keras_checkpoint import read_keras

    ckpt = read_keras(path, archive=fmt is CheckpointFormat.KERAS_ARCHIVE)
    return ForeignCheckpoint(fmt, ckpt.state_dict, ckpt)


def keras_architecture(path: str | Path) -> KerasResNet | None:
    """The Keras ResNet a file holds (names and shapes only: cheap); None when it is not a Keras file."""
    path = Path(path)
    if not path.is_file():
        return None
    fmt = sniff(path)
    if fmt not in (CheckpointFormat.KERAS_ARCHIVE, CheckpointFormat.KERAS_H5):
        return None
    from edge_resnet.models.keras_checkpoint import inspect_keras

    return inspect_keras(path, archive=fmt is CheckpointFormat.KERAS_ARCHIVE)
