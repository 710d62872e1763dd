"""Batch inference's inputs: image files and video frames, listed on the driver, decoded on workers.

Images are decoded as the runtime's folder source does (PIL, RGB); videos as its video source does
(OpenCV, BGR, every frame). A span of a video is read by seeking to its first frame; when OpenCV
cannot seek exactly (the position it reports differs) the frames are counted from the start instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_resnet.data import IMAGE_EXTENSIONS, LIST_EXTENSIONS, VIDEO_EXTENSIONS, load_image
from edge_resnet.distributed.spans import FrameTable
from edge_resnet.errors import DataError


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def list_sources(source: str) -> list[Path]:
    """The image and video files of ``source``: a folder (sorted by name, not recursive), a ``.txt``
    list (one path a line, relative to the list; ``#`` comments), or one video or image file."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and (p.suffix.lower() in IMAGE_EXTENSIONS or is_video(p)))
        if not files:
            raise DataError(f"{path} has no images or videos (not recursive)",
                            "point --source at a folder of image or video files, a .txt list or a video")
        return files
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        files = [(path.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln)
                 for ln in lines if ln and not ln.startswith("#")]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path} lists {len(missing)} file(s) that do not exist (e.g. {missing[0]})",
                            "fix the list: one image or video path per line, relative to the list")
        if not files:
            raise DataError(f"{path} lists no files", "one image or video path per line")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"--source {source} does not exist", "pass an image/video folder, a .txt list or a video file")


def count_frames(path: str) -> int:
    """Frames of a video, counted by grabbing each (container headers only estimate them)."""
    from edge_resnet.runtime.frame_sources import import_cv2

    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"OpenCV cannot open video {path}", "check that the file plays (e.g. with ffplay)")
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def _video_frames(path: str, first: int, count: int) -> list[np.ndarray]:
    from edge_resnet.runtime.frame_sources import import_cv2

    cv2 = import_cv2()
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise DataError(f"OpenCV cannot open video {path} on this worker", "give every node the same files")
        if first and not (cap.set(cv2.CAP_PROP_POS_FRAMES, first) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == first):
            cap.release()
            cap = cv2.VideoCapture(path)
            for _ in range(first):
                if not cap.grab():
                    break
        frames = []
        for _ in range(count):
            ok, frame = cap.read()
            if not ok or frame is None:
                raise DataError(f"{path}: frame {first + len(frames)} could not be read on this worker",
                                "check that the video plays to its end")
            frames.append(frame)
        return frames
    finally:
        cap.release()


def read_span(table: FrameTable, start: int, stop: int) -> tuple[list[np.ndarray], str]:
    """The frames of items ``start..stop-1`` and their channel order (one video, or images only)."""
    video = table.is_video[int(table.file_index[start])]
    if video:
        return _video_frames(table.path_of(start), int(table.frame[start]), stop - start), "bgr"
    return [load_image(table.path_of(i)) for i in range(start, stop)], "rgb"
