"""Calibration and validation data from every source spelling the CLI accepts (``--calib``, ``--data``).

    open_dataset("images/")            # flat folder (no labels) or one sub-folder per class
    open_dataset("list.txt")           # image paths, one per line, optional integer label
    open_dataset("x.npy" / "xy.npz")   # uint8 images, or float32 NCHW already preprocessed
    open_dataset("clip.mp4", stride=10)  # every 10th frame (needs the [video] extra)
    open_dataset("digits:test")        # scikit-learn's digits, built in

A :class:`Dataset` streams: files are decoded batch by batch, arrays are memory-mapped, videos are
read frame by frame, so memory does not grow with the number of images.

Unreadable files are skipped and counted (``Dataset.skipped``). Files are checked cheaply when the
data set is opened (PIL reads the header), so ``len()`` is right for missing, empty or non-image
files; a file whose header is fine but whose pixel data is corrupt (e.g. truncated) is only found
when it is decoded: it is skipped then, counted, and ``len()`` drops by one from then on.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge_resnet.data.digits import DIGITS_CLASS_NAMES, DIGITS_SPLITS, load_digits_split
from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.errors import DataError
from edge_resnet.limits import check_zip_sizes, image_too_large

logger = logging.getLogger(__name__)

__all__ = [
    "ARRAY_EXTENSIONS",
    "Batch",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "LIST_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "load_image",
    "open_dataset",
    "sample_indices",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
ARRAY_EXTENSIONS = (".npy", ".npz")
LIST_EXTENSIONS = (".txt",)

_DIGITS_RE = re.compile(r"^digits(?::(?P<split>[^:]*))?$", re.IGNORECASE)
_ACCEPTED = (
    "a folder of images (flat, or one sub-folder per class), a .txt list of image paths, "
    "a .npy/.npz array, a video file (" + ", ".join(VIDEO_EXTENSIONS) + "), or digits:train / digits:test"
)
_EXAMPLES = 3  # unreadable files named in the warning
_MAX_LABEL = 2**31 - 1
# PIL warns about images past 89 megapixels when it opens them; edge_resnet.limits refuses those past its own
# (lower, configurable) limit with a reason, so the warning would only repeat it (a filter, not catch_warnings:
# headers are checked on several threads)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # class indices; larger ones are typos (and overflow int64 arrays past 2**63)
_CHECK_THREADS = 8  # header checks are I/O bound


# ---------------------------------------------------------------------------------------------
# public records


@dataclass
class Batch:
    """One batch of model inputs: ``x`` float32 NCHW, labels ``y`` (or None), ``ids`` per image."""

    x: np.ndarray
    y: np.ndarray | None
    ids: list[str]


@dataclass
class ImageBatch:
    """One batch of raw images: uint8 HxWx3 RGB, before any resizing or normalization."""

    images: list[np.ndarray]
    y: np.ndarray | None
    ids: list[str]


# ---------------------------------------------------------------------------------------------
# image files


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 HxWx3 RGB. Alpha is dropped (not composited); 16-bit is scaled to 8."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.floor(a / 257.0 + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")  # palette transparency otherwise warns on convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    """(uint8 HxWx3 RGB, "") or (None, why the file cannot be read). Images declaring more pixels than
    the limit (edge_resnet.limits) are not decoded."""
    try:
        with Image.open(path) as img:
            too_large = image_too_large(*img.size)
            if too_large:
                return None, too_large
            img.load()
            arr = _pil_to_rgb(img)
    except FileNotFoundError:
        return None, "file not found"
    except Exception as exc:  # PIL raises many types on corrupt input; all mean "unreadable"
        return None, _reason(exc)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        return None, f"empty image {arr.shape}"
    return arr, ""


def load_image(path: str | Path) -> np.ndarray:
    """Decode one image file into uint8 HxWx3 RGB (grayscale, palette, RGBA and CMYK converted).

    Raises DataError when the file cannot be read or decoded.
    """
    arr, reason = _decode(Path(path))
    if arr is None:
        raise DataError(
            f"cannot read image {path}: {reason}", "check that the file is an image that opens in a viewer"
        )
    return arr


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):  # its message repeats the whole path
        return "not a recognized image format"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]


def _check_image_header(path: Path) -> str | None:
    """None when PIL recognizes the file and it has a non-zero size, else the reason (cheap: header only)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # unidentified format, permission denied, broken header, ...
        return _reason(exc)
    if w <= 0 or h <= 0:
        return f"empty image ({w}x{h})"
    return image_too_large(w, h)


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# readers: one per kind of source. Indices are positions in the full listing of the source.


class _Reader(ABC):
    kind: str
    path: str
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    preprocessed = False  # True: read_preprocessed() gives model inputs, no raw images
    checks = False  # True: check() finds unreadable items cheaply before reading

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def item_id(self, index: int) -> str: ...

    def check(self, index: int) -> str | None:
        return None

    @abstractmethod
    def read(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray | None, str]]:
        """Yield ``(index, uint8 HxWx3 RGB image or None, reason when None)`` in index order."""

    def read_preprocessed(self, indices: np.ndarray) -> np.ndarray:  # pragma: no cover - only arrays
        raise NotImplementedError


class _FileReader(_Reader):
    checks = True

    def __init__(
        self,
        kind: str,
        path: Path,
        base: Path,
        ids: list[str],
        labels: np.ndarray | None,
        class_names: list[str] | None,
    ) -> None:
        # Only the ids are kept (file = base / id; an absolute id stays as it is): the listing of a
        # large folder is the one thing here that grows with the number of images.
        self.kind, self.path = kind, str(path)
        self._base, self.ids = base, ids
        self.labels, self.class_names = labels, class_names

    def __len__(self) -> int:
        return len(self.ids)

    def item_id(self, index: int) -> str:
        return self.ids[index]

    def file(self, index: int) -> Path:
        return self._base / self.ids[index]

    def check(self, index: int) -> str | None:
        return _check_image_header(self.file(index))

    def read(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray | None, str]]:
        for i in indices:
            image, reason = _decode(self.file(int(i)))
            yield int(i), image, reason


class _ArrayReader(_Reader):
    """uint8 images (NHWC, NCHW, NHW) or float32 NCHW model inputs; ``array`` may be a memmap."""

    _CHUNK = 64  # rows copied out of the (memory-mapped) array at a time

    def __init__(
        self,
        kind: str,
        path: str,
        array: np.ndarray,
        layout: str,
        labels: np.ndarray | None,
        class_names: list[str] | None,
    ) -> None:
        self.kind, self.path = kind, path
        self.array, self.layout = array, layout
        self.labels, self.class_names = labels, class_names
        self.preprocessed = layout == "preprocessed"

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def item_id(self, index: int) -> str:
        return str(index)

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        if len(indices) and indices[-1] - indices[0] + 1 == len(indices):  # contiguous: a slice
            return np.array(self.array[int(indices[0]) : int(indices[-1]) + 1])
        return np.array(self.array[indices])

    def read(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray | None, str]]:
        for s in range(0, len(indices), self._CHUNK):
            chunk = indices[s : s + self._CHUNK]
            rows = self._rows(chunk)
            if self.layout == "nchw":
                rows = rows.transpose(0, 2, 3, 1)
            elif self.layout == "nhw":
                rows = rows[..., None]
            for i, row in zip(chunk, rows, strict=True):
                img = row
                if img.shape[2] == 1:
                    img = np.repeat(img, 3, axis=2)
                elif img.shape[2] == 4:
                    img = img[..., :3]
                yield int(i), np.ascontiguousarray(img), ""

    def read_preprocessed(self, indices: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._rows(indices), dtype=np.float32)


class _VideoReader(_Reader):
    """Every ``stride``-th frame of a video. Index ``i`` is frame ``i * stride``."""

    def __init__(self, path: Path, stride: int, cv2: Any) -> None:
        self.kind, self.path = "video", str(path)
        self._file, self.stride, self._cv2 = path, stride, cv2
        # Frame counts in container headers are estimates for many formats (mkv, webm, VFR mp4):
        # count by grabbing every frame once, so len() is exact.
        cap = self._open()
        try:
            width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            too_large = image_too_large(width, height)
            if too_large:
                raise DataError(f"the frames of video {path} are {too_large}", "use a video of a smaller resolution")
            declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            total = 0
            while cap.grab():
                total += 1
        finally:
            cap.release()
        warn_truncated_video(str(path), total, declared)
        if total == 0:
            raise DataError(
                f"no frames could be read from video {path}",
                "check that the file plays (e.g. with ffplay) and that OpenCV was built with its codec",
            )
        self.total_frames = total

    def _open(self) -> Any:
        cap = self._cv2.VideoCapture(str(self._file))
        if not cap.isOpened():
            cap.release()
            raise DataError(
                f"OpenCV cannot open video {self._file}",
                "check that the file is a video and that OpenCV was built with its codec (FFmpeg)",
            )
        return cap

    def __len__(self) -> int:
        return (self.total_frames + self.stride - 1) // self.stride

    def item_id(self, index: int) -> str:
        return str(index * self.stride)

    def read(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray | None, str]]:
        if len(indices) == 0:
            return
        wanted = {int(i) * self.stride: int(i) for i in indices}
        last = max(wanted)
        cap = self._open()
        try:
            frame_no = 0
            while frame_no <= last:
                if not cap.grab():
                    for f in sorted(f for f in wanted if f >= frame_no):
                        yield wanted[f], None, "video ended early"
                    return
                if frame_no in wanted:
                    ok, frame = cap.retrieve()
                    if not ok or frame is None or frame.size == 0:
                        yield wanted[frame_no], None, "frame could not be decoded"
                    elif frame.ndim == 2:
                        yield wanted[frame_no], np.repeat(frame[..., None], 3, axis=2), ""
                    else:  # OpenCV frames are BGR
                        yield wanted[frame_no], np.ascontiguousarray(frame[..., 2::-1]), ""
                frame_no += 1
        finally:
            cap.release()


# ---------------------------------------------------------------------------------------------
# opening each kind of source


def _list_folder(root: Path) -> _FileReader:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(
            f"cannot list folder {root}: {_reason(exc)}", "check the path and its permissions"
        ) from None
    top_files = [e.name for e in entries if e.is_file() and _is_image_file(e.name)]
    class_dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    per_class: list[list[str]] = []
    for name in class_dirs:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root)
            found.extend((rel / f).as_posix() for f in filenames if _is_image_file(f))
        per_class.append(sorted(found))
    if any(per_class):
        if top_files:
            raise DataError(
                f"folder {root} has {len(top_files)} images at its top level (e.g. {top_files[0]}) "
                f"and class sub-folders ({', '.join(class_dirs[:5])}{', ...' if len(class_dirs) > 5 else ''})",
                "put every image in its class sub-folder, or point at a folder with images only at its top level",
            )
        empty = [name for name, found in zip(class_dirs, per_class, strict=True) if not found]
        if empty:
            logger.warning(
                "%d class folder(s) in %s hold no images (%s); they keep their label numbers",
                len(empty),
                root,
                ", ".join(empty[:_EXAMPLES]),
            )
        ids = [f for found in per_class for f in found]
        labels = np.concatenate([np.full(len(found), c, dtype=np.int64) for c, found in enumerate(per_class)])
        return _FileReader("folder", root, root, ids, labels, list(class_dirs))
    if not top_files:
        raise DataError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, at the top level "
            "and in class sub-folders)",
            "point at a folder of images, or at a folder with one sub-folder of images per class",
        )
    return _FileReader("folder", root, root, top_files, None, None)


def _read_list(path: Path) -> _FileReader:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not a UTF-8 text file", "a .txt source lists one image path per line"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_reason(exc)}") from None
    base = path.parent
    ids: list[str] = []
    labels: list[int | None] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, label = line, None
        parts = line.rsplit(None, 1)
        if len(parts) == 2:
            try:
                label = int(parts[1])
                name = parts[0]
            except ValueError:
                pass
        if label is not None and label < 0:
            raise DataError(
                f"{path}:{lineno}: negative label {label}", "labels are class indices 0, 1, 2, ..."
            )
        if label is not None and label > _MAX_LABEL:
            raise DataError(
                f"{path}:{lineno}: label {parts[1][:30]} is out of range (at most {_MAX_LABEL})",
                "labels are class indices 0, 1, 2, ... (one per class of the model)",
            )
        ids.append(name)
        labels.append(label)
    if not ids:
        raise DataError(
            f"{path} lists no images", "write one image path per line (optionally followed by a label)"
        )
    with_label = [lab is not None for lab in labels]
    if any(with_label) and not all(with_label):
        first = with_label.index(not with_label[0])
        raise DataError(
            f"{path}: some lines have a label and some do not (e.g. {ids[0]!r} and {ids[first]!r})",
            "give every line a label (`path label`) or none",
        )
    y = np.asarray(labels, dtype=np.int64) if all(with_label) else None
    return _FileReader("list", path, base, ids, y, None)


def _array_layout(x: np.ndarray, spec: PreprocessSpec, path: Path) -> str:
    s = spec.input_size
    accepted = (
        f"float32 (N, 3, {s}, {s}) already preprocessed for this spec (input_size {s}), "
        "or uint8 images (N, H, W, 3), (N, 3, H, W), (N, H, W) [also 1 or 4 channels]"
    )
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(
            f"array in {path} is empty (shape {x.shape})", f"save at least one image; accepted: {accepted}"
        )
    if x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (3, s, s):
        return "preprocessed"
    if x.dtype == np.uint8 and min(x.shape[1:], default=0) > 0:
        if x.ndim == 3:
            return "nhw"
        if x.ndim == 4:
            if x.shape[3] in (1, 3, 4):
                return "nhwc"
            if x.shape[1] in (1, 3, 4):
                return "nchw"
    raise DataError(
        f"array in {path} has shape {x.shape} and dtype {x.dtype}; accepted: {accepted}",
        "save uint8 images (they are preprocessed with the model's spec), or float32 inputs "
        f"preprocessed at input_size {s} in NCHW",
    )


def _open_array(path: Path, spec: PreprocessSpec) -> _ArrayReader:
    y: np.ndarray | None = None
    class_names: list[str] | None = None
    is_npy = path.suffix.lower() == ".npy"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {_reason(exc)}") from None
    if magic[: 6 if is_npy else 4] != (b"\x93NUMPY" if is_npy else b"PK\x03\x04"):
        # np.load would otherwise try to unpickle it and report "pickled data"
        raise DataError(
            f"cannot read {path}: not a {'.npy' if is_npy else '.npz'} file",
            "save arrays with np.save (.npy) or np.savez (.npz, with x and optional y)",
        )
    if not is_npy:  # npz members are decompressed into memory: check what they declare first
        check_zip_sizes(path, "array file", DataError)
    try:
        if is_npy:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            # npz members cannot be memory-mapped: x is read into memory (use .npy for large sets).
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz.files:
                    raise DataError(
                        f"{path} has no array named 'x' (it has {sorted(npz.files)})",
                        "save with np.savez(path, x=images, y=labels)",
                    )
                x = npz["x"]
                y = npz["y"] if "y" in npz.files else None
                if "class_names" in npz.files:
                    class_names = [str(c) for c in npz["class_names"].reshape(-1)]
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise DataError(
                f"{path} holds Python objects (pickled), which are not loaded for safety",
                "save plain numeric arrays (uint8 images or float32 inputs)",
            ) from None
        raise DataError(f"cannot read {path}: {_reason(exc)}", "save it with np.save / np.savez") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError on truncated or foreign files
        raise DataError(f"cannot read {path}: {_reason(exc)}", "save it with np.save / np.savez") from None
    layout = _array_layout(x, spec, path)
    if layout != "preprocessed":
        h, w = (x.shape[2], x.shape[3]) if layout == "nchw" else (x.shape[1], x.shape[2])
        too_large = image_too_large(int(w), int(h))
        if too_large:
            raise DataError(f"the images in {path} are {too_large}", "save smaller images")
    n = int(x.shape[0])
    if y is not None:
        if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"labels 'y' in {path} have shape {y.shape} and dtype {y.dtype}; expected {n} integer labels ({n},)",
                "save y as a 1-D integer array with one class index per image",
            )
        y = y.astype(np.int64)
        if (y < 0).any():
            raise DataError(
                f"labels 'y' in {path} contain negative values", "labels are class indices 0, 1, 2, ..."
            )
    if class_names is not None and y is None:
        class_names = None
    return _ArrayReader("array", str(path), x, layout, y, class_names)


def warn_truncated_video(name: str, read: int, declared: int) -> None:
    """Warn when a video ends well before the frame count its header declares (a truncated file)."""
    if declared > 0 and read < declared - max(2, declared // 100):  # headers are estimates: allow 1%
        logger.warning("video %s ended after %d frames, but its header declares %d: the file is probably truncated "
                       "(only the frames that could be read are used)", name, read, declared)


def _open_video(path: Path, stride: int) -> _VideoReader:
    try:
        import cv2  # optional extra, imported only for video sources
    except ImportError:
        raise DataError(
            f"reading video {path} needs OpenCV, which is not installed",
            "pip install edge-resnet[video]",
        ) from None
    return _VideoReader(path, stride, cv2)


def _open_digits(split: str) -> _ArrayReader:
    images, labels = load_digits_split(split)
    return _ArrayReader("digits", f"digits:{split}", images, "nhwc", labels, list(DIGITS_CLASS_NAMES))


def _open_reader(src: str | Path, spec: PreprocessSpec, stride: int) -> _Reader:
    text = str(src).strip()
    if not text:
        raise DataError("no data source given", f"pass {_ACCEPTED}")
    m = _DIGITS_RE.match(text) if isinstance(src, str) else None
    if m:
        split = (m.group("split") or "train").lower()
        if split not in DIGITS_SPLITS:
            raise DataError(f"unknown digits split {m.group('split')!r}", "use digits:train or digits:test")
        if Path(text).exists():
            logger.warning(
                "%r names the built-in digits set; write ./%s for the path of that name", text, text
            )
        return _open_digits(split)
    if text.lower() == "random" or text.lower().startswith("random:"):
        raise DataError(
            f"{text!r} is not a data source: calibration and validation need real images",
            f"pass {_ACCEPTED}",
        )
    path = Path(src).expanduser()
    if not path.exists():
        raise DataError(f"data source {path} does not exist", f"pass {_ACCEPTED}")
    if path.is_dir():
        return _list_folder(path)
    suffix = path.suffix.lower()
    if suffix in LIST_EXTENSIONS:
        return _read_list(path)
    if suffix in ARRAY_EXTENSIONS:
        return _open_array(path, spec)
    if suffix in VIDEO_EXTENSIONS:
        return _open_video(path, stride)
    if suffix in IMAGE_EXTENSIONS:  # one image: a set of one
        return _FileReader("image", path, path.parent, [path.name], None, None)
    raise DataError(
        f"unknown kind of data source {path} (extension {suffix or 'none'!r})",
        f"pass {_ACCEPTED}",
    )


# ---------------------------------------------------------------------------------------------
# deterministic sampling


def _quotas(sizes: np.ndarray, count: int) -> np.ndarray:
    """Per-class counts summing to ``count``: proportional (largest remainder), each class >= 1 if possible."""
    total = int(sizes.sum())
    if count >= total:
        return sizes.copy()
    k = len(sizes)
    if count < k:  # not every class can have one: the largest classes do (ties: lower label)
        q = np.zeros(k, dtype=np.int64)
        q[np.argsort(-sizes, kind="stable")[:count]] = 1
        return q
    exact = count * sizes / total
    q = np.minimum(np.maximum(1, np.floor(exact)).astype(np.int64), sizes)
    while q.sum() > count:  # only from the >= 1 bumps: take back where q exceeds its share most
        cand = np.flatnonzero(q > 1)
        q[cand[np.argmax((q - exact)[cand])]] -= 1
    while q.sum() < count:  # largest remainders first
        cand = np.flatnonzero(q < sizes)
        q[cand[np.argmax((exact - q)[cand])]] += 1
    return q


def _select(
    n: int,
    labels: np.ndarray | None,
    count: int | None,
    seed: int,
    check: Callable[[int], str | None] | None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Indices (sorted) of the selected readable items, and the unreadable items met on the way.

    With ``count``: per class (or overall without labels) a seeded permutation is walked and its
    first readable items are taken, so only about ``count`` files are checked. The per-class quotas
    are computed from the listed files, unreadable ones included (they are not known in advance).
    """
    bad: dict[int, str] = {}
    pool = ThreadPoolExecutor(max_workers=_CHECK_THREADS) if check is not None else None

    def take(candidates: np.ndarray, k: int) -> list[int]:
        if check is None or pool is None:
            return [int(i) for i in candidates[:k]]
        got: list[int] = []
        pos = 0
        while len(got) < k and pos < len(candidates):
            # check only as many as still needed (bounded, so a huge folder is not one giant map)
            chunk = [int(i) for i in candidates[pos : pos + min(k - len(got), 256)]]
            pos += len(chunk)
            for i, reason in zip(chunk, pool.map(check, chunk), strict=True):
                if reason is None:
                    got.append(i)
                else:
                    bad[i] = reason
        return got

    try:
        chosen = _choose(n, labels, count, seed, take)
    finally:
        if pool is not None:
            pool.shutdown()
    if count is not None and len(chosen) < min(count, n) and check is not None:
        logger.warning("asked for %d images but only %d readable ones were found", count, len(chosen))
    return np.asarray(sorted(chosen), dtype=np.int64), bad


def _choose(
    n: int,
    labels: np.ndarray | None,
    count: int | None,
    seed: int,
    take: Callable[[np.ndarray, int], list[int]],
) -> list[int]:
    if count is None or count >= n:
        if count is not None and count > n:
            logger.warning("asked for %d images but the source has %d: using all of them", count, n)
        return take(np.arange(n), n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return take(rng.permutation(n), count)
    chosen: list[int] = []
    classes, inverse = np.unique(labels, return_inverse=True)
    quotas = _quotas(np.bincount(inverse, minlength=len(classes)), count)
    for c in range(len(classes)):
        # a permutation is drawn for every class, so one class's pick does not depend on the others' quotas
        perm = rng.permutation(np.flatnonzero(inverse == c))
        if quotas[c]:
            chosen += take(perm, int(quotas[c]))
    return chosen


def sample_indices(
    n: int, count: int | None, *, labels: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Sorted indices of a deterministic sample of ``count`` out of ``n`` items.

    Stratified when ``labels`` are given (proportional, each class at least one when ``count``
    allows), else a seeded random subset. ``count`` None or >= ``n``: all items.
    """
    if labels is not None and len(labels) != n:
        raise DataError(f"sample_indices: {len(labels)} labels for {n} items")
    return _select(n, labels, _check_count(count), seed, None)[0]


def _check_count(count: int | None) -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise DataError(
            f"invalid image count {count!r}", "use a positive integer, or no count for all images"
        )
    return int(count)


# ---------------------------------------------------------------------------------------------
# the data set


class Dataset:
    """A selected, streaming set of images (or preprocessed inputs) with optional labels.

    Use :func:`open_dataset` to make one.
    """

    def __init__(
        self,
        reader: _Reader,
        spec: PreprocessSpec,
        selected: np.ndarray,
        skipped: dict[int, str],
        info: dict[str, Any],
    ) -> None:
        self._reader = reader
        self.spec = spec
        self._selected = selected
        self._bad: dict[int, str] = dict(skipped)
        self._info = info

    # -- what the set is ------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(len(self._selected))

    @property
    def kind(self) -> str:
        """One of: folder, list, image (a single file), array, video, digits."""
        return self._reader.kind

    @property
    def labels(self) -> np.ndarray | None:
        """int64 labels of the selected items, in iteration order (None when the source has none)."""
        if self._reader.labels is None:
            return None
        return self._reader.labels[self._selected]

    @property
    def class_names(self) -> list[str] | None:
        return list(self._reader.class_names) if self._reader.class_names is not None else None

    @property
    def ids(self) -> list[str]:
        """File names (relative to the folder or as listed), array indices, or video frame numbers."""
        return [self._reader.item_id(int(i)) for i in self._selected]

    @property
    def positions(self) -> np.ndarray:
        """Positions of the selected items in the source's full listing, in iteration order."""
        return self._selected.copy()

    def subset(self, positions: np.ndarray) -> Dataset:
        """The items at ``positions`` of the source's listing (as :attr:`positions` gives them), same reader."""
        return Dataset(self._reader, self.spec, np.asarray(positions, dtype=np.int64), {}, dict(self._info))

    @property
    def skipped(self) -> int:
        """Unreadable items met so far (when opening, and while decoding)."""
        return len(self._bad)

    @property
    def preprocessed(self) -> bool:
        """True for float32 arrays taken as model inputs: no raw images, ``images()`` is an error."""
        return self._reader.preprocessed

    @property
    def info(self) -> dict[str, Any]:
        """JSON-safe summary for manifests: kind, path, count, total, sampling, skipped."""
        return {**self._info, "count": len(self), "skipped": self.skipped}

    @property
    def description(self) -> str:
        i = self.info
        text = f"{i['kind']} {i['path']}: {i['count']} images"
        if i.get("classes"):
            text += f", {i['classes']} classes"
        if i.get("requested") is not None and i["requested"] < i["total"]:
            how = "stratified" if i.get("classes") else "random"
            text += f" ({how} sample of {i['total']}, seed {i['seed']})"
        if i["kind"] == "video":
            text += f" from {i['frames']} frames, stride {i['stride']}"
        if i["skipped"]:
            text += f", {i['skipped']} unreadable skipped"
        if i.get("preprocessed"):
            text += ", already preprocessed"
        return text

    def __repr__(self) -> str:
        return f"Dataset({self.description})"

    # -- iteration ------------------------------------------------------------------------------

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Model inputs in batches of ``batch_size`` (the last one may be smaller), decoded lazily."""
        _check_batch_size(batch_size)
        if self._reader.preprocessed:
            for s in range(0, len(self._selected), batch_size):
                chunk = self._selected[s : s + batch_size]
                yield Batch(
                    self._reader.read_preprocessed(chunk), self._labels_of(chunk), self._ids_of(chunk)
                )
            return
        for images, chunk in self._raw(batch_size):
            x = self.spec.apply_batch(images, ChannelOrder.RGB)
            yield Batch(x, self._labels_of(chunk), self._ids_of(chunk))

    def images(self, batch_size: int) -> Iterator[ImageBatch]:
        """Raw uint8 HxWx3 RGB images (not resized, not normalized) in batches, decoded lazily."""
        _check_batch_size(batch_size)
        if self._reader.preprocessed:
            raise DataError(
                f"{self._info['path']} holds preprocessed float32 inputs, not images",
                "use batches(), or save the raw images as a uint8 array / image files",
            )
        for images, chunk in self._raw(batch_size):
            yield ImageBatch(images, self._labels_of(chunk), self._ids_of(chunk))

    def _labels_of(self, chunk: np.ndarray) -> np.ndarray | None:
        return None if self._reader.labels is None else self._reader.labels[chunk]

    def _ids_of(self, chunk: np.ndarray) -> list[str]:
        return [self._reader.item_id(int(i)) for i in chunk]

    def _raw(self, batch_size: int) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        images: list[np.ndarray] = []
        idx: list[int] = []
        new_bad: dict[int, str] = {}
        produced = 0
        for i, image, reason in self._reader.read(self._selected):
            if image is None:
                new_bad[i] = reason
                continue
            images.append(image)
            idx.append(i)
            if len(images) == batch_size:
                produced += len(images)
                yield images, np.asarray(idx, dtype=np.int64)
                images, idx = [], []
        if images:
            produced += len(images)
            yield images, np.asarray(idx, dtype=np.int64)
        if new_bad:
            self._bad.update(new_bad)
            self._selected = self._selected[~np.isin(self._selected, list(new_bad))]
            _warn_skipped(new_bad, self._reader, self._info["path"], when="while decoding")
        if produced == 0:
            raise DataError(
                f"none of the images in {self._info['path']} could be decoded ({len(new_bad)} failed, "
                f"e.g. {_examples(new_bad, self._reader)})",
                "check that the files open in an image viewer",
            )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"invalid batch size {batch_size!r}", "use a positive integer")


def _examples(bad: dict[int, str], reader: _Reader) -> str:
    items = sorted(bad.items())[:_EXAMPLES]
    return ", ".join(f"{reader.item_id(i)} ({reason})" for i, reason in items)


def _warn_skipped(bad: dict[int, str], reader: _Reader, path: str, when: str) -> None:
    more = "" if len(bad) <= _EXAMPLES else ", ..."
    logger.warning(
        "skipped %d unreadable item(s) in %s %s: %s%s", len(bad), path, when, _examples(bad, reader), more
    )


def open_dataset(
    src: str | Path,
    spec: PreprocessSpec,
    *,
    count: int | None = None,
    seed: int = 0,
    stride: int = 10,
) -> Dataset:
    """Open any data source the CLI accepts (see the module docstring) as a streaming :class:`Dataset`.

    ``count``: take a deterministic sample (seeded; stratified per class when there are labels;
    sorted by original index). ``stride``: for videos, keep every ``stride``-th frame.
    """
    if not isinstance(spec, PreprocessSpec):
        raise DataError(f"open_dataset needs a PreprocessSpec, got {type(spec).__name__}")
    count = _check_count(count)
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise DataError(f"invalid video stride {stride!r}", "use a positive integer (1 = every frame)")
    reader = _open_reader(src, spec, int(stride))
    n = len(reader)
    selected, bad = _select(n, reader.labels, count, seed, reader.check if reader.checks else None)
    if bad:
        _warn_skipped(bad, reader, reader.path, when="(not images, or unreadable)")
    if len(selected) == 0:
        raise DataError(
            f"no readable images in {reader.path}: all {len(bad)} checked files failed (e.g. {_examples(bad, reader)})",
            "check that the files are images that open in an image viewer",
        )
    info: dict[str, Any] = {
        "kind": reader.kind,
        "path": reader.path,
        "total": n,
        "requested": count,
        "seed": seed,
        "classes": len(reader.class_names)
        if reader.class_names is not None
        else (int(len(np.unique(reader.labels))) if reader.labels is not None else None),
        "labelled": reader.labels is not None,
    }
    if reader.kind == "video":
        info["stride"] = int(stride)
        info["frames"] = reader.total_frames  # type: ignore[attr-defined]
    if reader.preprocessed:
        info["preprocessed"] = True
    ds = Dataset(reader, spec, selected, bad, info)
    logger.info("data: %s", ds.description)
    return ds


def open_listing(src: str | Path, spec: PreprocessSpec, *, stride: int = 10) -> Dataset:
    """Every item of a source, neither checked nor sampled: a worker's view of a source the driver
    opened with :func:`open_dataset` (pick the driver's items with :meth:`Dataset.subset`)."""
    reader = _open_reader(src, spec, int(stride))
    info = {"kind": reader.kind, "path": reader.path, "total": len(reader)}
    return Dataset(reader, spec, np.arange(len(reader), dtype=np.int64), {}, info)
