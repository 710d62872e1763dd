"""Loading user checkpoints into our models, with one clear error when they do not match.

Only ``torch.load(..., weights_only=True)``: a checkpoint is user input and is never unpickled.
Accepted layouts: a plain state_dict, one nested under ``state_dict`` or ``model`` (Lightning,
timm/train scripts), keys with a ``module.`` prefix (DataParallel/DDP).

Keras (``.keras``, ``.weights.h5``, legacy ``.h5``) and ``.safetensors`` files are told apart by
their first bytes and read by their own modules (:mod:`edge_resnet.models.formats`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge_resnet.errors import CheckpointError
from edge_resnet.models.formats import open_foreign
from edge_resnet.models.registry import DEPTHS

log = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOW = 5  # how many of each kind of mismatch to list


# what torch's weights_only unpickler (torch/_weights_only_unpickler.py) says when a file references Python
# classes or functions: "Unsupported global: GLOBAL x.y", "Trying to load unsupported GLOBAL posix.system",
# "Trying to call reduce for unrecognized function", "... classes allowlisted via `add_safe_globals`"; any
# UnpicklingError is also wrapped in "Weights only load failed", garbage bytes included
_PICKLE_REFUSALS = ("unsupported global", "unrecognized function", "add_safe_globals")
_TORCH_ADVICE = re.compile(r"weights_only|safe_globals|weights only load failed|trusted source|documentation of "
                           r"torch\.load", re.IGNORECASE)
# first bytes of checkpoint formats torch.load does not read -> what they are (readers plug in here)
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 / .weights.h5 model)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x08", "an ONNX model? (pass ONNX files with --onnx)"),
)


def _other_format(path: Path) -> str | None:
    """What ``path`` is when it is a checkpoint format torch.load does not read (None: torch's own)."""
    import json
    import struct
    import zipfile

    with open(path, "rb") as f:
        head = f.read(16)
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic) and (magic != b"\x08" or path.suffix.lower() == ".onnx"):
            return kind
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError):
            return None
        if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
            return "a Keras 3 .keras archive"
        return None
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 little-endian header length, JSON header
        n = struct.unpack("<Q", head[:8])[0]
        if 2 <= n <= min(path.stat().st_size - 8, 100 << 20):
            try:
                with open(path, "rb") as f:
                    f.seek(8)
                    json.loads(f.read(n))
                return "a safetensors file"
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def _torch_reason(exc: BaseException) -> str:
    """torch's message without its advice to load with weights_only=False (never to be followed here)."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n|\n\t", str(exc))]
    kept = [p for p in paragraphs if p and not _TORCH_ADVICE.search(p)]
    return (kept[0] if kept else type(exc).__name__)[:200]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state_dict of tensors."""
    import pickle

    from edge_resnet.limits import check_file_size, check_zip_sizes

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", "check the path given to --weights")
    foreign = open_foreign(path)  # Keras and safetensors files have their own readers
    if foreign is not None:
        return _flatten(foreign.state_dict, path)
    kind = _other_format(path)
    if kind is not None:
        raise CheckpointError(f"checkpoint {path} is {kind}, which this edge-resnet does not read as weights",
                              "save the weights with torch.save(model.state_dict(), 'ckpt.pth')")
    if zipfile_like(path):
        check_zip_sizes(path, "checkpoint", CheckpointError)
    else:  # the legacy (pre-zip) format: the file holds the storages, so its size bounds what is read
        check_file_size(path, "checkpoint", CheckpointError)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(exc).lower()  # an UnpicklingError alone may be garbage bytes ("invalid load key")
        if isinstance(exc, pickle.UnpicklingError) and any(s in text for s in _PICKLE_REFUSALS):
            found = re.search(r"GLOBAL\s+([\w.]+)", str(exc), re.IGNORECASE)
            what = f", e.g. {found.group(1)}" if found else ""
            raise CheckpointError(  # never repeat torch's hint to pass weights_only=False
                f"checkpoint {path} contains pickled Python objects (classes or functions{what}, not only tensors), "
                "which are never unpickled: unpickling runs code from the file",
                "save the weights alone: torch.save(model.state_dict(), 'ckpt.pth'), in the environment that "
                "trained the model",
            ) from None
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch file ({_torch_reason(exc)})",
            "pass a .pt/.pth file written by torch.save(model.state_dict(), ...); it may be truncated",
        ) from None
    return _flatten(obj, path)


def zipfile_like(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _flatten(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # unwrap {"state_dict": {"model": ...}} style nesting
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            nested = next((obj[k] for k in _NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise CheckpointError(
            f"checkpoint {path} holds no state_dict (looked at the top level and under {list(_NESTED_KEYS)})",
            "save it with torch.save(model.state_dict(), path)",
        )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= len(obj) / 2


@dataclass
class Mismatch:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, ckpt, model

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def compare(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> Mismatch:
    own = model.state_dict()
    # num_batches_tracked is a training counter: absent from many exported checkpoints, harmless
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    return Mismatch(
        missing=[k for k in own if k not in sd and k not in optional],
        unexpected=[k for k in sd if k not in own],
        shapes=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)],
    )


def guess_architecture(sd: Mapping[str, torch.Tensor]) -> str | None:
    """What the checkpoint looks like, e.g. 'resnet50 v2 with num_classes=10', when inferable."""
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if len(blocks) != 4:
        return None
    counts = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    bottleneck = any(k.startswith("layer1.0.conv3") for k in sd)
    depth = next((d for d, (b, c) in DEPTHS.items() if c == counts and b == bottleneck), None)
    if depth is None:
        return None
    preact = "post_bn.weight" in sd or (
        "layer1.1.bn1.weight" in sd and bottleneck and sd["layer1.1.bn1.weight"].shape[0] == 256
    )
    parts = [f"resnet{depth}", "v2" if preact else "v1/v1.5"]
    if "fc.weight" in sd:
        parts.append(f"with num_classes={sd['fc.weight'].shape[0]}")
    else:
        parts.append("without the classifier head (include_top=False)")
    return " ".join(parts)


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load ``path`` into ``model`` (strictly), returning the file's sha256 for the manifest.

    A headless model (include_top=False) takes a full checkpoint and leaves its classifier out,
    as Keras does with ``include_top=False`` weights.
    """
    path = Path(path)
    foreign = open_foreign(path)
    sd = _flatten(foreign.state_dict, path) if foreign is not None else read_state_dict(path)
    if foreign is not None and foreign.keras is not None:
        foreign.keras.prepare(model)  # the file's network and BN epsilon
    if not hasattr(model, "fc") and any(k.startswith("fc.") for k in sd):
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        log.info("the model has no classifier head: ignoring the checkpoint's fc weights")
    mm = compare(model, sd)
    if mm:
        raise CheckpointError(_describe(path, mm, sd), _hint(sd))
    check_finite_weights(sd, path)
    model.load_state_dict(sd, strict=False)  # strict except num_batches_tracked, checked above
    log.info("loaded %d tensors from %s", len(sd), path)
    from edge_resnet.bundle import sha256_file

    return sha256_file(path)


def check_finite_weights(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """CheckpointError when floating tensors of ``sd`` hold NaN or +-inf: refused here, before a model is
    built and exported from them (the exported graph is checked again, for --onnx inputs too)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
        raise CheckpointError(f"checkpoint {path} has NaN or infinite weights in {len(bad)} tensor(s): "
                              f"{', '.join(bad[:_SHOW])}{more}",
                              "fix the checkpoint (a diverged training run, or BatchNorm statistics saved as NaN) "
                              "or save it again from good weights")


def _describe(path: Path, mm: Mismatch, sd: Mapping[str, torch.Tensor]) -> str:
    lines = [f"checkpoint {path} does not match the model:"]
    for label, items in (("missing keys", mm.missing), ("unexpected keys", mm.unexpected)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:_SHOW])}{more}")
    if mm.shapes:
        shown = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mm.shapes[:_SHOW])
        more = f" (+{len(mm.shapes) - _SHOW} more)" if len(mm.shapes) > _SHOW else ""
        lines.append(f"  shape mismatches ({len(mm.shapes)}): {shown}{more}")
    guess = guess_architecture(sd)
    if guess:
        lines.append(f"  the checkpoint looks like {guess}")
    return "\n".join(lines)


def _hint(sd: Mapping[str, torch.Tensor]) -> str:
    guess = guess_architecture(sd)
    if guess is None:
        return "use the model, --variant and --num-classes the checkpoint was trained with"
    name, variant, *rest = guess.split(" ")
    opts = [f"--model {name}"]
    if variant == "v2":
        opts.append("--variant v2")
    if "fc.weight" in sd:
        opts.append(f"--num-classes {sd['fc.weight'].shape[0]}")
    else:
        opts.append("--no-top")
    return "try " + " ".join(opts)
