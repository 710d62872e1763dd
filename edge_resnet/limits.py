"""Size limits checked before user files are read: a small file must not make us allocate gigabytes.

A zip (a torch ``.pth``, an ``.npz``) declares the size of every member in its directory: the total is
checked against ``EDGE_RESNET_MAX_UNPACKED_BYTES`` (default 4 GiB) and, past 64 MiB, the compression
ratio against ``EDGE_RESNET_MAX_COMPRESSION_RATIO`` (default 100; torch.save stores members
uncompressed, real images deflate a few times, a bomb of zeros a thousand times). Images are bounded by
their declared pixel count (``EDGE_RESNET_MAX_IMAGE_PIXELS``, default 64 megapixels) before decoding.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from edge_resnet.errors import EdgeResnetError

UNPACKED_BYTES_ENV = "EDGE_RESNET_MAX_UNPACKED_BYTES"
RATIO_ENV = "EDGE_RESNET_MAX_COMPRESSION_RATIO"
IMAGE_PIXELS_ENV = "EDGE_RESNET_MAX_IMAGE_PIXELS"
DEFAULT_UNPACKED_BYTES = 4 << 30
DEFAULT_RATIO = 100.0
RATIO_APPLIES_ABOVE = 64 << 20  # small archives may compress well without harm
DEFAULT_IMAGE_PIXELS = 64_000_000


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise EdgeResnetError(f"{name}={text!r} is not a number", f"set {name} to a positive number, or unset it") from None
    if not value > 0:
        raise EdgeResnetError(f"{name}={text!r} must be positive", f"set {name} to a positive number, or unset it")
    return value


def max_unpacked_bytes() -> int:
    return int(_env_number(UNPACKED_BYTES_ENV, DEFAULT_UNPACKED_BYTES))


def max_compression_ratio() -> float:
    return _env_number(RATIO_ENV, DEFAULT_RATIO)


def max_image_pixels() -> int:
    return int(_env_number(IMAGE_PIXELS_ENV, DEFAULT_IMAGE_PIXELS))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_zip_sizes(path: Path, what: str, error: Callable[[str, str], EdgeResnetError]) -> None:
    """Refuse a zip whose members declare more than the limits; ``error(problem, fix)`` makes the exception.
    Reads the zip's directory only."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a readable zip: the reader says so itself
    total = sum(m.file_size for m in members)
    biggest = max(members, key=lambda m: m.file_size, default=None)
    limit = max_unpacked_bytes()
    fix = (f"if the file is genuine, raise the limit with {UNPACKED_BYTES_ENV} (bytes) or {RATIO_ENV}; otherwise "
           "do not use this file")
    name = f" ({biggest.filename}: {_gib(biggest.file_size)})" if biggest is not None else ""
    if total > limit:
        raise error(f"{what} {path} declares {_gib(total)} of contents{name}, over the {_gib(limit)} limit, in a "
                    f"{_gib(size)} file: it is not read", fix)
    ratio = total / max(size, 1)
    if total > RATIO_APPLIES_ABOVE and ratio > max_compression_ratio():
        raise error(f"{what} {path} declares {_gib(total)} of contents{name} in a {_gib(size)} file ({ratio:.0f}x "
                    f"compression, over the limit of {max_compression_ratio():.0f}x): a decompression bomb, not read",
                    fix)


def check_file_size(path: Path, what: str, error: Callable[[str, str], EdgeResnetError]) -> None:
    """Refuse a file larger than the unpacked-size limit (formats whose reader allocates what they hold)."""
    size = Path(path).stat().st_size
    limit = max_unpacked_bytes()
    if size > limit:
        raise error(f"{what} {path} is {_gib(size)}, over the {_gib(limit)} limit",
                    f"if the file is genuine, raise the limit with {UNPACKED_BYTES_ENV} (bytes)")


def image_too_large(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` is not decoded (None: it is within the limit)."""
    limit = max_image_pixels()
    if width * height > limit:
        return (f"{width}x{height} pixels, over the {limit / 1e6:.0f}-megapixel limit (a decompression bomb?); "
                f"raise it with {IMAGE_PIXELS_ENV} if the image is genuine")
    return None
