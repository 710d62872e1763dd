"""Pipelined inference over a frame source: decoding, preprocessing and inference overlap.

    with model.stream("clip.mp4", top_k=1) as results:
        for r in results:
            show(r.index, r.classification.label, r.latency)

One thread decodes frames. ``workers`` threads each take the frames waiting for them (up to
``batch``), preprocess them and run one inference on them; with one worker the decoding thread
preprocesses too. The consumer's thread puts results back in frame order and postprocesses them.
Throughput streams run one worker more than the parallel inferences of the backend's throughput
configuration (``Backend.throughput_config``): on 2 cores, two single-threaded inferences at a time
while the third worker resizes its next batch and the decoder decodes (PIL, OpenCV and the backends
release the GIL). The frames/s against a sequential loop, and the worker count that gives them, are
in benchmarks/README.md (runtime_overhead.py).

OpenVINO inference runs as synchronous requests on the worker threads, one InferRequest each: the
parallelism of an AsyncInferQueue without its Python callback. With a callback, OpenVINO now
and then aborted ("terminate called without an active exception") or hung the interpreter at exit
(an executor thread waiting for the GIL while the CompiledModel is destroyed).

Memory is bounded: the decoding thread takes a ticket for every frame and the consumer gives it
back when it has the frame's result, so at most ``max_in_flight = buffer + workers * batch`` frames
are alive at once and a slow consumer stalls decoding. The threads share a small state object,
never the :class:`Stream`, so ``close()``, leaving a ``with`` block, closing a generator that
iterates the stream, an exception or Ctrl-C in the consumer, and dropping the last reference all
stop them and release the source (a thread blocked inside a source's read, e.g. a dead network
stream, exits when that read returns; it is a daemon thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_resnet.data.preprocess import ChannelOrder
from edge_resnet.errors import DataError
from edge_resnet.postprocess import Classification, ModelKind, check_top_k
from edge_resnet.runtime.frame_sources import FrameSource, open_source
from edge_resnet.types import Mode

if TYPE_CHECKING:
    from edge_resnet.runtime.model import Model

log = logging.getLogger(__name__)

__all__ = ["FrameResult", "Mode", "Stream"]

POLL_SECONDS = 0.05  # how often blocked threads look at the stop flag
JOIN_SECONDS = 5.0  # how long close() waits for the threads


@dataclass
class FrameResult:
    """The result for frame ``index`` of a stream: a classification or an embedding (by bundle kind).

    ``latency``: seconds from the frame leaving the source to its result being ready (includes
    time spent waiting in the pipeline). ``frame``: the decoded frame (in ``order``) when the stream
    was opened with ``keep_frames=True``.
    """

    index: int
    classification: Classification | None
    embedding: np.ndarray | None
    latency: float
    frame: np.ndarray | None = None
    order: ChannelOrder = ChannelOrder.BGR


# ------------------------------------------------------------------------------------------ plumbing


@dataclass
class _Item:
    index: int
    t0: float  # when the frame left the source
    frame: np.ndarray | None  # until it is preprocessed, or for the result with keep_frames
    tensor: np.ndarray | None = None  # CHW float32
    output: np.ndarray | None = None


@dataclass
class _Failure:
    error: BaseException


class _End:
    """The source is exhausted (or the stream is stopping)."""


_END = _End()
_Payload = _Item | _Failure | _End


class _Pipe:
    """What the stream's threads share: the stop flag, the queues, the tickets, the threads."""

    def __init__(self, tickets: int) -> None:
        self.stop = threading.Event()
        self.tickets = threading.Semaphore(tickets)
        self.queues: list[queue.Queue[Any]] = []
        self.threads: list[threading.Thread] = []

    def queue(self, size: int = 0) -> queue.Queue[Any]:
        q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self.queues.append(q)
        return q

    def put(self, q: queue.Queue[Any], item: object) -> bool:
        """Blocking put that gives up (False) when the stream stops."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue[Any], block: bool = True) -> Any:
        """Blocking get; _END when the stream stops; None when not ``block`` and nothing is ready."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_SECONDS) if block else q.get_nowait()
            except queue.Empty:
                if not block:
                    return None
        return _END

    def take_ticket(self) -> bool:
        """Wait for room for one more frame in the pipeline; False when the stream stops."""
        while not self.stop.is_set():
            if self.tickets.acquire(timeout=POLL_SECONDS):
                return True
        return False

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        for q in self.queues:  # puts and gets poll the stop flag; this frees the frames now
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.warning("stream threads still running after %.0f s (blocked in the source?): %s; they exit when "
                        "the source returns", timeout, ", ".join(stuck))


@dataclass(frozen=True)
class _Work:
    """What the threads need to turn frames into outputs."""

    source: FrameSource
    prepare: Callable[..., np.ndarray]  # (frame, order, where) -> what the engine takes per frame
    infer: Callable[[np.ndarray], np.ndarray]  # a batch of prepared frames -> outputs
    workers: int
    batch: int
    keep_frames: bool
    max_frames: int | None

    def prepare_item(self, item: _Item) -> None:
        if item.frame is None:  # what a failed capture gives (ok, frame = cap.read() -> False, None)
            raise DataError(f"frame {item.index} of {self.source.name} is None, not an image",
                            "leave out the frames a capture failed to read (when ok is False), or stop the source there")
        item.tensor = self.prepare(item.frame, self.source.order, f"frame {item.index} ({self.source.name})")
        if not self.keep_frames:
            item.frame = None


# ------------------------------------------------------------------------------------------- threads


def _read_frames(pipe: _Pipe, work: _Work, frames: queue.Queue[Any], out: queue.Queue[Any]) -> None:
    """Decode (and, with a single worker, preprocess); the reader owns the source and closes it.

    The end of the source, or its failure, goes straight to the consumer under the index of the
    frame that was not read, so it arrives after the results of all frames before it.
    """
    source, index, it = work.source, 0, None
    try:
        it = iter(source)
        while work.max_frames is None or index < work.max_frames:
            if not pipe.take_ticket():
                return
            frame = next(it, _END)
            if frame is _END:
                break
            item = _Item(index, time.perf_counter(), frame)
            if work.workers == 1:
                try:
                    work.prepare_item(item)
                except Exception as exc:  # a bad frame: its error arrives in its place
                    pipe.put(out, (index, _Failure(exc)))
                    return
            if not pipe.put(frames, item):
                return
            index += 1
        pipe.put(out, (index, _END))
    except BaseException as exc:
        pipe.put(out, (index, _Failure(exc)))
    finally:
        for _ in range(work.workers):  # each worker stops at one _END
            pipe.put(frames, _END)
        close = getattr(it, "close", None)
        if callable(close):
            close()
        source.close()


def _gather(pipe: _Pipe, frames: queue.Queue[Any], limit: int) -> tuple[list[_Item], bool]:
    """The next frame and the frames already waiting behind it, up to ``limit``; and whether the end was met.

    Dynamic batching: frames are batched only when they are already queued (inference is the
    bottleneck), so an idle pipeline still runs every frame at once, alone.
    """
    first = pipe.get(frames)
    if not isinstance(first, _Item):
        return [], True
    group = [first]
    while len(group) < limit:
        got = pipe.get(frames, block=False)
        if got is None:
            break
        if not isinstance(got, _Item):
            return group, True
        group.append(got)
    return group, False


def _infer_frames(pipe: _Pipe, work: _Work, frames: queue.Queue[Any], out: queue.Queue[Any]) -> None:
    """A worker: batches of waiting frames -> preprocessed -> one inference -> results, until the end."""
    while True:
        group, ended = _gather(pipe, frames, work.batch)
        if not group:
            return
        first = group[0].index
        failure: tuple[int, _Failure] | None = None
        try:
            for i, item in enumerate(group):
                if item.tensor is None:
                    try:
                        work.prepare_item(item)
                    except Exception as exc:  # a bad frame: the frames before it still get results
                        failure, group = (item.index, _Failure(exc)), group[:i]
                        break
            if group:
                batch = group[0].tensor[None] if len(group) == 1 else np.stack([item.tensor for item in group])
                for item, output in zip(group, work.infer(batch), strict=True):
                    item.output, item.tensor = output, None
                    pipe.put(out, (item.index, item))
        except BaseException as exc:
            failure = (first, _Failure(exc))
        if failure is not None:
            pipe.put(out, failure)
            return
        if ended or pipe.stop.is_set():
            return


def _shutdown(pipe: _Pipe) -> None:
    pipe.stop.set()
    pipe.join(JOIN_SECONDS)


# -------------------------------------------------------------------------------------------- stream


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _mode(value: Mode | str) -> Mode:
    try:
        return Mode(getattr(value, "value", value))
    except ValueError:
        raise DataError(f"unknown stream mode {value!r}", f"use one of {[m.value for m in Mode]}") from None


class Stream(Iterator[FrameResult]):
    """An iterator of :class:`FrameResult` over a frame source; make one with ``Model.stream``.

    ``mode``: ``throughput`` (default) or ``latency`` (see ``Model.stream``). ``workers``: threads
    that preprocess and infer (default: in throughput mode, one more than the inferences the
    backend's plan runs at once, so that one worker preprocesses while the others infer; 1 in
    latency mode). ``batch``: the most frames one inference takes; frames are batched only when they
    are already waiting (default: the plan's, 4, in throughput mode; 1 otherwise). ``buffer``:
    decoded frames waiting for a worker (default: ``workers * batch``). ``max_frames``: stop after
    that many. ``keep_frames``: attach each decoded frame to its result (for drawing on it).
    ``max_in_flight``: the most frames alive in the pipeline at once.
    """

    def __init__(self, model: Model, source: Any, *, top_k: int = 1, order: ChannelOrder | str | None = None,
                 mode: Mode | str = Mode.THROUGHPUT, max_frames: int | None = None,
                 keep_frames: bool = False, buffer: int | None = None, batch: int | None = None,
                 workers: int | None = None) -> None:
        if model.kind is ModelKind.FEATURE_MAP:
            model.require(ModelKind.EMBEDDING)  # the clear error
        self.model = model
        self.top_k = check_top_k(top_k)
        self.mode = _mode(mode)
        max_frames = None if max_frames is None else _positive("max_frames", max_frames)
        plan = model.throughput_runner() if self.mode is Mode.THROUGHPUT else None
        if plan is not None:
            runner, how = plan
            infer: Callable[[np.ndarray], np.ndarray] = runner.infer  # thread-safe runners
            # one worker more than the inferences the backend runs at once: one preprocesses meanwhile
            self.workers = _positive("workers", workers) if workers is not None else runner.parallel_requests() + 1
            self.batch = _positive("batch", batch) if batch is not None else how.batch
        else:
            infer = model.run_batch  # takes the model's lock on backends that need one
            self.workers = _positive("workers", workers) if workers is not None else 1
            self.batch = _positive("batch", batch) if batch is not None else 1
        # decoded frames kept ready: a batch for every worker, so none waits for the decoder
        buffer = _positive("buffer", buffer) if buffer is not None else self.workers * self.batch
        self.max_in_flight = buffer + self.workers * self.batch
        named = isinstance(source, (str, Path, int, FrameSource))
        self.source = open_source(source, order if order is not None or named else model.order)
        self.count = 0  # results delivered
        pipe = _Pipe(self.max_in_flight)
        work = _Work(self.source, model.prepare_for_engine, infer, self.workers, self.batch, keep_frames, max_frames)
        self._pipe, self._out = pipe, pipe.queue()  # unbounded: the tickets bound it
        self._stash: dict[int, _Payload] = {}  # results that arrived before the one due
        try:
            frames = pipe.queue(buffer)
            for i in range(self.workers):
                pipe.spawn(f"edge-resnet-infer-{i}", _infer_frames, pipe, work, frames, self._out)
            pipe.spawn("edge-resnet-decode", _read_frames, pipe, work, frames, self._out)
        except BaseException:
            _shutdown(pipe)
            self.source.close()
            raise
        self._classify = model.kind is ModelKind.CLASSIFIER
        # runs on close(), or when the stream is garbage-collected; never references self
        self._finalizer = weakref.finalize(self, _shutdown, pipe)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __iter__(self) -> Stream:
        return self

    def _next_payload(self) -> _Payload:
        """The payload of frame ``self.count``, waiting for it; _END when the stream stops."""
        while self.count not in self._stash:
            got = self._pipe.get(self._out)
            if got is _END:
                return _END
            index, payload = got
            self._stash[index] = payload
        return self._stash.pop(self.count)

    def __next__(self) -> FrameResult:
        if self.closed:
            raise StopIteration
        try:
            got = self._next_payload()
            if isinstance(got, _Item):
                result = self._result(got)
                self.count += 1
                self._pipe.tickets.release()
                return result
        except BaseException:  # includes KeyboardInterrupt and GeneratorExit: stop the threads first
            self.close()
            raise
        self.close()
        if isinstance(got, _Failure):
            raise got.error
        raise StopIteration

    def _result(self, item: _Item) -> FrameResult:
        assert item.output is not None
        out = item.output[None]
        if self._classify:
            return FrameResult(item.index, self.model.classifications(out, self.top_k)[0], None,
                               time.perf_counter() - item.t0, item.frame, self.source.order)
        return FrameResult(item.index, None, self.model.embeddings(out)[0], time.perf_counter() - item.t0,
                           item.frame, self.source.order)

    def close(self) -> None:
        """Stop the threads and release the source (idempotent). Call it from the consuming thread."""
        self._finalizer()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"Stream({self.source!r}, {self.mode.value}, {self.workers} workers x batch {self.batch}, "
                f"{self.count} results, {state})")
