"""``.safetensors`` state dicts (timm, Hugging Face), read with the safetensors library: no pickle.

timm's ResNet keys (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``, ``fc``) are
torchvision's, so a timm checkpoint maps onto our models exactly as a torchvision one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edge_resnet.errors import CheckpointError

MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit on the JSON header


def header_length(head: bytes, file_size: int) -> int | None:
    """The JSON header length when ``head`` (the first bytes) starts a safetensors file, else None."""
    if len(head) < 9:
        return None
    n = int.from_bytes(head[:8], "little")
    if 2 <= n <= min(MAX_HEADER_BYTES, file_size - 8) and head[8:9] == b"{":
        return n
    return None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (its header length field says {n} bytes)",
                                  "the file is truncated or not a .safetensors state dict")
        try:
            header = json.loads(f.read(n).decode("utf8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path} has a damaged safetensors header ({exc})", "save it again") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a damaged safetensors header", "save it again")
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read as a safetensors file ({msg})",
                              "the file is truncated or corrupt: save it again with safetensors.torch.save_file") from exc
    if not sd:
        raise CheckpointError(f"{path} holds no tensors", "save the model's state_dict with safetensors.torch.save_file")
    return sd
