"""``edge-resnet run``: classify a video, camera, network stream or image folder with a bundle.

Headless: progress goes to the terminal (one line a second, then a summary), per-frame results to
``--jsonl``, annotated frames to ``--save``. OpenCV is needed for videos, cameras, URLs and --save.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import click
import numpy as np

from edge_resnet.cli.options import ray_options
from edge_resnet.errors import DataError
from edge_resnet.outputs import check_distinct, check_output, temporary_sibling, writing

log = logging.getLogger(__name__)

PRINT_EVERY_SECONDS = 1.0  # live progress lines, at most one per this many seconds
FPS_WINDOW_SECONDS = 1.0  # the live frame rate is measured over this window
DEFAULT_SAVE_FPS = 25.0  # --save when the source reports no frame rate (image folders, some cameras)
LATENCY_SAMPLES = 2048  # the summary's latency percentiles are over the last this many frames
# --save file extension -> OpenCV FourCC
FOURCC: dict[str, str] = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


# ------------------------------------------------------------------------------------------------ meters


@dataclass
class Meter:
    """Frame rate (over the last FPS_WINDOW_SECONDS) and latency statistics; bounded memory."""

    start: float = field(default_factory=time.perf_counter)
    frames: int = 0
    _times: deque[float] = field(default_factory=deque)
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    _latency_sum: float = 0.0

    def tick(self, now: float, latency: float) -> None:
        self.frames += 1
        self._times.append(now)
        while self._times and now - self._times[0] > FPS_WINDOW_SECONDS:
            self._times.popleft()
        self._latencies.append(latency)
        self._latency_sum += latency

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def summary(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        lat = np.asarray(self._latencies) * 1e3 if self._latencies else np.zeros(1)
        return (f"{self.frames} frames in {elapsed:.1f} s: {self.frames / elapsed:.1f} fps; latency mean "
                f"{self._latency_sum / max(self.frames, 1) * 1e3:.1f} ms, p50 {np.percentile(lat, 50):.1f} ms, "
                f"p95 {np.percentile(lat, 95):.1f} ms")


@dataclass
class Ticker:
    """True at the first call and then at most once per ``every`` seconds (rate-limited printing)."""

    every: float
    _next: float = float("-inf")

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.every
        return True


# ------------------------------------------------------------------------------------------------- sinks


class JsonlSink:
    """One JSON object per frame: index, top-k labels/indices/scores, latency. Line-buffered, into a
    temporary file next to ``path`` that replaces it on close (when at least one line was written)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lines = 0
        self._tmp = temporary_sibling(Path(path)) if path else None
        self._file: IO[str] | None = None
        if self._tmp is not None:
            with writing(str(path)):
                self._tmp.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self._tmp, "w", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, result: Any) -> None:
        if self._file is None:
            return
        c = result.classification
        record = {"frame": result.index,
                  "top_k": [{"label": lb, "index": i, "score": round(s, 6)}
                            for lb, i, s in zip(c.labels, c.indices, c.scores, strict=True)],
                  "latency_ms": round(result.latency * 1e3, 3)}
        with writing(str(self.path)):
            self._file.write(json.dumps(record) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        _publish(self._tmp, self.path, self.lines)

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _to_bgr(cv2: Any, frame: np.ndarray, order: str) -> np.ndarray:
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    frame = frame[..., :3]
    return np.ascontiguousarray(frame[..., ::-1] if order == "rgb" else frame)  # a copy we may draw on


def _put_text(cv2: Any, image: np.ndarray, text: str, row: int) -> None:
    h = image.shape[0]
    scale = max(0.3, h / 720.0)
    thickness = max(1, round(scale * 2))
    y = int((row + 1) * 30 * scale) + 4
    for color, extra in (((0, 0, 0), 2), ((255, 255, 255), 0)):  # dark outline, then white: readable anywhere
        cv2.putText(image, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness + extra, cv2.LINE_AA)


def fourcc_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FOURCC:
        raise DataError(f"--save {path}: unknown video type {suffix or '(no extension)'!r}",
                        f"use one of {', '.join(FOURCC)} (e.g. out.mp4)")
    return FOURCC[suffix]


def _publish(tmp: Path | None, path: str | None, count: int) -> None:
    """Rename a finished temporary output over ``path`` (one with nothing in it is dropped instead)."""
    if tmp is None or path is None:
        return
    with writing(path):
        if count > 0 and tmp.exists():
            os.replace(tmp, path)
        else:
            tmp.unlink(missing_ok=True)


class VideoSink:
    """Annotated frames (top-1 label and score, live fps) to a video at the source's frame rate, written to
    a temporary file next to ``path`` that replaces it on close."""

    def __init__(self, path: str | None, fps: float | None) -> None:
        self.path = path
        self._tmp = temporary_sibling(Path(path)) if path else None
        self.frames = 0
        self.fps = fps or DEFAULT_SAVE_FPS
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        if path is None:
            return
        from edge_resnet.runtime.frame_sources import import_cv2

        self.fourcc = fourcc_for(path)
        self._cv2 = import_cv2()
        if fps is None:
            log.info("the source reports no frame rate: writing %s at %.0f fps", path, DEFAULT_SAVE_FPS)

    def _open(self, width: int, height: int) -> None:
        cv2 = self._cv2
        assert self._tmp is not None
        with writing(str(self.path)):
            self._tmp.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height))
        if not writer.isOpened():
            raise DataError(f"OpenCV cannot write {self.path} ({self.fourcc}, {width}x{height} at {self.fps:g} fps)",
                            "check that the folder is writable; try a .avi file (MJPG), which every OpenCV build writes")
        self._writer, self._size = writer, (width, height)

    def write(self, result: Any, fps: float) -> None:
        if self.path is None or result.frame is None:
            return
        cv2 = self._cv2
        image = _to_bgr(cv2, result.frame, result.order.value)
        if self._writer is None:
            self._open(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:  # image folders: every frame at the first one's size
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        c = result.classification
        _put_text(cv2, image, f"{c.label} {c.score:.2f}", 0)
        _put_text(cv2, image, f"{fps:.1f} fps", 1)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            _publish(self._tmp, self.path, self.frames)

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- command


def _progress(meter: Meter, result: Any) -> str:
    c = result.classification
    return (f"frame {result.index:>6}  {meter.fps:6.1f} fps  top-1 {c.label} ({c.score:.2f})  "
            f"latency {result.latency * 1e3:.1f} ms")


@click.command("run")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-s", "--source", required=True,
              help="A video file, camera:N, an rtsp:// or http(s):// URL (whatever OpenCV opens), or an image folder.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per frame in --jsonl.")
@click.option("--jsonl", type=click.Path(dir_okay=False), default=None, help="Write one JSON line per frame here.")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Write the frames, annotated with top-1 and fps, to this video (.mp4, .avi, ...).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after this many frames.")
@click.option("--order", type=click.Choice(["bgr", "rgb"]), default=None,
              help="Channel order of the source's frames [default: bgr for OpenCV sources, rgb for image files].")
@click.option("--mode", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True,
              help="throughput: one inference per core, waiting frames batched (most frames/s, for files and "
                   "busy streams); latency: one frame at a time on all cores (quickest result per frame).")
@ray_options
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="With --ray (batch mode): labels or embeddings of every image/frame, with its source and frame "
                   "index, in source order, to a .parquet or .jsonl file.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="With --ray: images/frames per batch an actor runs.")
def run(bundle: str, source: str, top_k: int, jsonl: str | None, save: str | None, max_frames: int | None,
        order: str | None, mode: str, ray_cluster: str | None = None, ray_actors: int | None = None,
        out: str | None = None, batch_size: int = 16) -> None:
    """Classify every frame of a video, camera, stream or image folder with BUNDLE.

    With --ray and --out: a batch run over a folder, a .txt list or videos on a Ray cluster.
    """
    if ray_cluster is not None or out is not None:
        _run_batch(bundle, source, top_k, jsonl, save, max_frames, order, ray_cluster, ray_actors, out, batch_size)
        return
    from edge_resnet.runtime import ModelKind, load

    if save:
        fourcc_for(save)  # before anything is opened or written
    check_distinct({"--jsonl": jsonl, "--save": save})
    for option, path in (("--jsonl", jsonl), ("--save", save)):
        check_output(path, option, inputs={"--source": source}, bundles={"BUNDLE": bundle})
    model = load(bundle)
    meter, ticker = Meter(), Ticker(PRINT_EVERY_SECONDS)
    try:
        model.require(ModelKind.CLASSIFIER)
        with model.stream(source, top_k=top_k, order=order, mode=mode, max_frames=max_frames,
                          keep_frames=save is not None) as results, \
                JsonlSink(jsonl) as lines, VideoSink(save, results.source.fps) as video:
            src = results.source
            click.echo(f"{model.bundle.path} ({model.backend.value}) on {src.kind.value} {src.name}"
                       + (f" at {src.fps:g} fps" if src.fps else ""))
            meter.start = time.perf_counter()
            try:
                for r in results:
                    now = time.perf_counter()
                    meter.tick(now, r.latency)
                    lines.write(r)
                    video.write(r, meter.fps)
                    if ticker.due(now):
                        click.echo(_progress(meter, r))
            except KeyboardInterrupt:
                click.echo(f"interrupted: {meter.summary(time.perf_counter())}")
                raise
    finally:
        model.close()
    if meter.frames == 0:
        raise DataError(f"no frames could be read from {source}",
                        "check that the source plays (e.g. ffplay) and is not empty")
    click.echo(meter.summary(time.perf_counter()))
    if jsonl:
        click.echo(f"wrote {jsonl} ({meter.frames} lines)")
    if save:
        click.echo(f"wrote {save} ({video.frames} frames at {video.fps:g} fps)")


def _run_batch(bundle: str, source: str, top_k: int, jsonl: str | None, save: str | None, max_frames: int | None,
               order: str | None, ray_cluster: str | None, ray_actors: int | None, out: str | None,
               batch_size: int) -> None:
    """The batch mode: ``run --ray ... --out results.parquet`` (see edge_resnet.distributed.batch_run)."""
    if ray_cluster is None or out is None:
        raise click.UsageError("--ray and --out go together (the batch mode); without --ray, use --jsonl")
    for name, value in (("--jsonl", jsonl), ("--save", save), ("--max-frames", max_frames), ("--order", order)):
        if value is not None:
            raise click.UsageError(f"{name} is for the live mode; the batch mode (--ray) writes every frame to --out")
    from edge_resnet.distributed.batch_run import run_batch
    from edge_resnet.distributed.cluster import check_ray

    ray = check_ray(ray_cluster, ray_actors)
    summary = run_batch(bundle, source, out, ray, top_k=top_k, batch_size=batch_size)
    click.echo(summary.describe())
    click.echo(f"wrote {summary.out} ({summary.items} rows)")
