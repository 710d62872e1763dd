"""Frame sources for the runtime: anything frames come from, opened by name.

    open_source(frames)             # any iterable of uint8 HxWx3 frames (order given by the caller)
    open_source("clip.mp4")         # a video file (OpenCV)
    open_source("camera:0")         # a camera (OpenCV)
    open_source("rtsp://host/path") # a network stream: whatever OpenCV's FFmpeg/GStreamer opens
    open_source("images/")          # an image folder, sorted by file name (PIL)
    open_source("photo.jpg")        # one image

OpenCV and PIL are imported when a source needs them. A source is opened (and its errors raised)
when ``open_source`` is called; frames are read by iterating it, from one thread at a time.
OpenCV sources give BGR frames, image files RGB ones.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from edge_resnet.data.datasets import IMAGE_EXTENSIONS, load_image, warn_truncated_video
from edge_resnet.data.preprocess import ChannelOrder
from edge_resnet.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["FrameSource", "SourceKind", "open_source", "parse_order"]

_CAMERA_RE = re.compile(r"^camera:(?P<index>\d+)$", re.IGNORECASE)
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_ACCEPTED = "a video file, camera:N, an rtsp:// or http(s):// URL, an image folder, an image file, or an iterable of frames"


class SourceKind(str, Enum):
    FRAMES = "frames"
    CAMERA = "camera"
    URL = "url"
    FOLDER = "folder"
    IMAGE = "image"
    VIDEO = "video"


def parse_order(order: ChannelOrder | str) -> ChannelOrder:
    try:
        return ChannelOrder(str(getattr(order, "value", order)).lower())
    except ValueError:
        raise DataError(f"unknown channel order {order!r}", "use 'bgr' (OpenCV frames) or 'rgb' (PIL/numpy)") from None


class FrameSource(ABC):
    """Frames as uint8 arrays in ``order``. ``fps``/``frame_count`` come from the container when known."""

    kind: SourceKind
    name: str
    order: ChannelOrder
    fps: float | None = None
    frame_count: int | None = None  # container header: an estimate for some formats, None for live sources

    @abstractmethod
    def __iter__(self) -> Iterator[np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.value} {self.name}, {self.order.value})"


# ---------------------------------------------------------------------------------------- iterables


class IterableSource(FrameSource):
    """The caller's frames (a list, a generator, ...); a generator is closed with the source."""

    kind = SourceKind.FRAMES

    def __init__(self, frames: Iterable[np.ndarray], order: ChannelOrder) -> None:
        self._frames = frames
        self.order = order
        self.name = type(frames).__name__
        self.frame_count = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._frames)

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if callable(close):
            close()


# ------------------------------------------------------------------------------------------- OpenCV


def import_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise DataError(f"reading videos, cameras and streams needs OpenCV, which is not installed ({exc})",
                        "pip install 'edge-resnet[video]' (opencv-python-headless)") from exc
    return cv2


def _backend_names(cv2: ModuleType, camera: bool) -> str:
    try:
        registry = cv2.videoio_registry
        ids = registry.getCameraBackends() if camera else registry.getStreamBackends()
        return ", ".join(registry.getBackendName(b) for b in ids) or "none"
    except Exception:  # old builds without videoio_registry
        return "unknown"


class CaptureSource(FrameSource):
    """A cv2.VideoCapture (file, camera, URL): BGR frames.

    The capture is released by the thread that reads it (when iteration ends), or by ``close``
    when nobody is reading: releasing a capture while another thread is inside ``read()`` is unsafe.
    """

    order = ChannelOrder.BGR

    def __init__(self, kind: SourceKind, name: str, target: str | int, fix: str) -> None:
        cv2 = import_cv2()
        self.kind, self.name = kind, name
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise DataError(
                f"cannot open {kind.value} source {name!r}: cv2.VideoCapture({target!r}) failed "
                f"(OpenCV {cv2.__version__}, tried its backends: {_backend_names(cv2, kind is SourceKind.CAMERA)})",
                fix,
            )
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None  # cameras and some streams report 0 or nonsense
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if kind is SourceKind.VIDEO and count > 0 else None
        self.backend = cap.getBackendName() if hasattr(cap, "getBackendName") else "?"
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        with self._lock:
            if self._closed:
                raise DataError(f"{self.kind.value} source {self.name!r} is closed", "open the source again")
            if self._reading:
                raise DataError(f"{self.kind.value} source {self.name!r} is already being read",
                                "read a source from one place at a time (open it twice for two readers)")
            self._reading = True
        return self._frames()

    def _frames(self) -> Iterator[np.ndarray]:
        read = 0
        try:
            while not self._closed:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    if self.kind is SourceKind.VIDEO and not self._closed:
                        warn_truncated_video(self.name, read, self.frame_count or 0)
                    return
                read += 1
                yield frame
        finally:
            with self._lock:
                self._reading = False
                self._closed = True
                self._cap.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a reading thread releases the capture after its current read
            if not self._reading:
                self._cap.release()


def _open_camera(text: str) -> FrameSource:
    m = _CAMERA_RE.match(text)
    assert m is not None
    index = int(m.group("index"))
    return CaptureSource(SourceKind.CAMERA, text, index,
                         f"check that camera {index} exists (ls /dev/video*) and is not used by another program")


def _open_url(text: str) -> FrameSource:
    return CaptureSource(SourceKind.URL, text, text,
                         "check the URL plays (e.g. ffplay URL), the host is reachable and credentials are right")


def _open_video(text: str) -> FrameSource:
    return CaptureSource(SourceKind.VIDEO, text, text,
                         "check that the file is a video that plays (e.g. with ffplay) and that OpenCV has its codec")


# ------------------------------------------------------------------------------------------- images


class FolderSource(FrameSource):
    """The images of a folder (not recursive), sorted by name, decoded with PIL: RGB frames.

    Unreadable files are skipped with a warning, like a camera dropping a frame.
    """

    order = ChannelOrder.RGB

    def __init__(self, name: str, files: list[Path], kind: SourceKind = SourceKind.FOLDER) -> None:
        self.kind, self.name, self.files = kind, name, files
        self.frame_count = len(files)
        self.skipped = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.files:
            try:
                yield load_image(path)
            except DataError as exc:
                self.skipped += 1
                log.warning("skipping %s", exc.problem)


def _open_folder(text: str) -> FrameSource:
    path = Path(text).expanduser()
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"image folder {path} has no images ({', '.join(IMAGE_EXTENSIONS)}; not recursive)",
                        "point the source at a folder of image files, or at a video")
    return FolderSource(text, files)


def _open_image(text: str) -> FrameSource:
    return FolderSource(text, [Path(text).expanduser()], SourceKind.IMAGE)


# ----------------------------------------------------------------------------------------- registry


def _is_file(text: str) -> bool:
    return Path(text).expanduser().is_file()


# kind -> does this string name such a source; checked in this order
_DETECT: list[tuple[SourceKind, Callable[[str], bool]]] = [
    (SourceKind.CAMERA, lambda s: bool(_CAMERA_RE.match(s))),
    (SourceKind.URL, lambda s: bool(_URL_RE.match(s))),
    (SourceKind.FOLDER, lambda s: Path(s).expanduser().is_dir()),
    (SourceKind.IMAGE, lambda s: _is_file(s) and Path(s).suffix.lower() in IMAGE_EXTENSIONS),
    (SourceKind.VIDEO, _is_file),  # any other file: let OpenCV try
]
_OPENERS: dict[SourceKind, Callable[[str], FrameSource]] = {
    SourceKind.CAMERA: _open_camera,
    SourceKind.URL: _open_url,
    SourceKind.FOLDER: _open_folder,
    SourceKind.IMAGE: _open_image,
    SourceKind.VIDEO: _open_video,
}


def source_kind(text: str) -> SourceKind:
    for kind, matches in _DETECT:
        if matches(text):
            return kind
    raise DataError(f"frame source {text!r} does not exist (not a file, folder, camera:N or URL)", f"pass {_ACCEPTED}")


def open_source(source: Any, order: ChannelOrder | str | None = None) -> FrameSource:
    """Open ``source`` (see the module docstring). ``order`` is the channel order of its frames:
    for iterables it defaults to BGR (OpenCV frames); for named sources it overrides their own."""
    if isinstance(source, FrameSource):
        if order is not None:
            source.order = parse_order(order)
        return source
    if isinstance(source, bool):
        raise DataError(f"invalid frame source {source!r}", f"pass {_ACCEPTED}")
    if isinstance(source, int):
        source = f"camera:{source}"
    if isinstance(source, (str, Path)):
        text = str(source).strip()
        if not text:
            raise DataError("no frame source given", f"pass {_ACCEPTED}")
        opened = _OPENERS[source_kind(text)](text)
        if order is not None:
            opened.order = parse_order(order)
        return opened
    if isinstance(source, np.ndarray):
        raise DataError(f"a numpy array of shape {source.shape} is not a frame source",
                        "classify single frames or batches with model.classify(); pass a list of frames to stream()")
    if isinstance(source, Iterable):
        return IterableSource(source, parse_order(order or ChannelOrder.BGR))
    raise DataError(f"cannot read frames from a {type(source).__name__}", f"pass {_ACCEPTED}")
