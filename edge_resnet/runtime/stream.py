"""Pipelined inference over a frame source: decoding, preprocessing and inference overlap.

    with model.stream("clip.mp4", top_k=1) as results:
        for r in results:
            show(r.index, r.classification.label, r.latency)

One thread decodes and preprocesses frames. Inference then runs on OpenVINO's asynchronous
requests (a few in flight, started and collected in the consumer's thread) for OpenVINO bundles,
and on one inference thread for the other backends. Postprocessing runs in the consumer's thread.
Results come in frame order.

Every queue is bounded, so a slow consumer stalls decoding instead of growing memory: at most
about ``2 * buffer + requests * batch + 2`` frames are alive at once. The threads share a small state
object, never the :class:`Stream`, so ``close()``, leaving a ``with`` block, closing a generator
that iterates the stream, an exception or Ctrl-C in the consumer, and dropping the last reference
all stop them and release the source (a thread blocked inside a source's read, e.g. a dead network
stream, exits when that read returns; it is a daemon thread).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_resnet.data.preprocess import ChannelOrder
from edge_resnet.errors import BackendError, DataError
from edge_resnet.runtime.model import Classification, ModelKind, check_top_k
from edge_resnet.runtime.sources import FrameSource, open_source
from edge_resnet.types import BackendName

if TYPE_CHECKING:
    from edge_resnet.runtime.model import Model

log = logging.getLogger(__name__)

__all__ = ["FrameResult", "Stream"]

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
    tensor: np.ndarray  # CHW float32
    t0: float
    frame: np.ndarray | None
    output: np.ndarray | None = None


@dataclass
class _Failure:
    error: BaseException


class _End:
    """The source is exhausted (or the stream is stopping)."""


_END = _End()
_Message = _Item | _Failure | _End


class _Pipe:
    """What the stream's threads share: the stop flag, the queues, the threads."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.queues: list[queue.Queue[Any]] = []
        self.threads: list[threading.Thread] = []

    def queue(self, size: int) -> queue.Queue[Any]:
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

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> None:
        for q in self.queues:  # unblock nothing in particular (puts poll the flag), but free the frames now
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


def _read_frames(pipe: _Pipe, source: FrameSource, prepare: Callable[..., np.ndarray], out: queue.Queue[Any],
                 max_frames: int | None, keep_frames: bool) -> None:
    """Decode and preprocess; the reader owns the source and closes it when it stops."""
    frames: Iterator[Any] | None = None
    try:
        frames = iter(source)
        index = 0
        while (max_frames is None or index < max_frames) and not pipe.stop.is_set():
            frame = next(frames, _END)
            if frame is _END:
                break
            t0 = time.perf_counter()
            item = _Item(index, prepare(frame, source.order, f"frame {index} ({source.name})"), t0,
                         frame if keep_frames else None)
            if not pipe.put(out, item):
                return
            index += 1
        pipe.put(out, _END)
    except BaseException as exc:  # reaches the consumer after the frames before it
        pipe.put(out, _Failure(exc))
    finally:
        close = getattr(frames, "close", None)
        if callable(close):
            close()
        source.close()


# ------------------------------------------------------------------------------------------- engines


def _gather(pipe: _Pipe, frames: queue.Queue[Any], first: Any, limit: int) -> tuple[list[_Item], _Failure | _End | None]:
    """``first`` and the frames already waiting behind it, up to ``limit``; plus the end/failure met, if any.

    Dynamic batching: frames are only batched when they are already queued (inference is the
    bottleneck), so an idle pipeline still runs every frame at once, alone.
    """
    if not isinstance(first, _Item):
        return [], first
    group = [first]
    while len(group) < limit:
        got = pipe.get(frames, block=False)
        if got is None:
            break
        if not isinstance(got, _Item):
            return group, got
        group.append(got)
    return group, None


def _stack(group: list[_Item]) -> np.ndarray:
    return group[0].tensor[None] if len(group) == 1 else np.stack([item.tensor for item in group])


@dataclass
class EngineOptions:
    buffer: int  # frames per queue
    batch: int  # most frames per inference call


class _ThreadEngine:
    """Inference on one thread (backends without an async API): preprocessed -> outputs, in order."""

    def __init__(self, pipe: _Pipe, model: Model, frames: queue.Queue[Any], options: EngineOptions) -> None:
        self._pipe = pipe
        self._out = pipe.queue(options.buffer)
        pipe.spawn("edge-resnet-infer", _infer_loop, pipe, model.run_batch, frames, self._out, options.batch)

    def next(self) -> _Message:
        return self._pipe.get(self._out)

    def close(self) -> None:
        pass


def _infer_loop(pipe: _Pipe, run_batch: Callable[[np.ndarray], np.ndarray], frames: queue.Queue[Any],
                out: queue.Queue[Any], batch: int) -> None:
    while True:
        group, tail = _gather(pipe, frames, pipe.get(frames), batch)
        if group:
            try:
                outputs = run_batch(_stack(group))
            except BaseException as exc:
                pipe.put(out, _Failure(exc))
                return
            for item, output in zip(group, outputs, strict=True):
                item.output = output
                if not pipe.put(out, item):
                    return
        if tail is not None:
            pipe.put(out, tail)
            return


class _AsyncInferEngine:
    """OpenVINO: up to ``jobs`` asynchronous InferRequests in flight, collected oldest first.

    Requests are started (``start_async``) and collected (``wait_for``) in the consumer's thread;
    OpenVINO runs them on its own threads, so inference overlaps decoding (the reader thread) and
    the consumer's work. No Python callback is involved: with an AsyncInferQueue and a Python
    callback, OpenVINO 2026.4 now and then aborted ("terminate called without an active exception")
    or hung the interpreter at exit (an executor thread waiting for the GIL while the CompiledModel
    is destroyed; also seen without edge_resnet), so the engine keeps its own ring of requests.
    """

    def __init__(self, pipe: _Pipe, model: Model, frames: queue.Queue[Any], options: EngineOptions) -> None:
        runner = model.runner
        self._pipe, self._frames = pipe, frames
        self.jobs = max(2, int(runner.optimal_requests()))  # at least one running and one queued behind it
        self.batch = min(options.batch, runner.max_batch or options.batch)
        self._idle: deque[Any] = deque(runner.compiled.create_infer_request() for _ in range(self.jobs))
        self._pending: deque[tuple[list[_Item], Any]] = deque()
        self._ready: deque[_Item] = deque()
        self._ended: _Failure | _End | None = None

    @classmethod
    def create(cls, pipe: _Pipe, model: Model, frames: queue.Queue[Any], options: EngineOptions) -> _Engine:
        runner = model.runner
        if not hasattr(runner, "compiled") or getattr(runner, "min_batch", 1) != 1:
            # not an OpenVINORunner (a wrapper, a fake), or a static-batch IR (NPU) that runner.infer pads
            return _ThreadEngine(pipe, model, frames, options)
        return cls(pipe, model, frames, options)

    def _fill(self, block: bool) -> None:
        while self._idle and self._ended is None:
            first = self._pipe.get(self._frames, block=block and not self._pending)
            if first is None:  # nothing decoded yet: collect what is in flight meanwhile
                return
            group, self._ended = _gather(self._pipe, self._frames, first, self.batch)
            if not group:
                return
            request = self._idle.popleft()
            try:
                request.start_async({0: _stack(group)})  # copies the input into the request's tensor
            except RuntimeError as exc:
                raise BackendError(f"OpenVINO could not start inference of frame {group[0].index}: {exc}") from exc
            self._pending.append((group, request))

    def _collect(self) -> _Failure | _End | None:
        group, request = self._pending[0]
        while True:
            try:
                if request.wait_for(int(POLL_SECONDS * 1000)):
                    break
            except RuntimeError as exc:
                return _Failure(BackendError(
                    f"OpenVINO inference of frames {group[0].index}..{group[-1].index} failed: {exc}"))
            if self._pipe.stop.is_set():
                return _END
        self._pending.popleft()
        outputs = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        self._idle.append(request)
        for item, output in zip(group, outputs, strict=True):
            item.output = output
            self._ready.append(item)
        return None

    def next(self) -> _Message:
        self._fill(block=not self._ready)
        if not self._ready and self._pending:
            stopped = self._collect()
            if stopped is not None:
                return stopped
        if self._ready:
            return self._ready.popleft()
        return self._ended or _END

    def close(self) -> None:
        for _, request in self._pending:  # let in-flight requests finish before they are dropped
            try:
                request.wait()
            except RuntimeError as exc:
                log.debug("OpenVINO request at close: %s", exc)
        self._pending.clear()
        self._ready.clear()
        self._idle.clear()


_Engine = _ThreadEngine | _AsyncInferEngine
# backend -> how its stream runs inference; the rest use _ThreadEngine
_ENGINES: dict[BackendName, Callable[[_Pipe, Any, queue.Queue[Any], EngineOptions], _Engine]] = {
    BackendName.OPENVINO: _AsyncInferEngine.create,
}


def _shutdown(pipe: _Pipe, engine: _Engine | None) -> None:
    pipe.stop.set()
    if engine is not None:
        engine.close()
    pipe.join(JOIN_SECONDS)


# -------------------------------------------------------------------------------------------- stream


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Stream(Iterator[FrameResult]):
    """An iterator of :class:`FrameResult` over a frame source; make one with ``Model.stream``.

    ``buffer``: frames each queue holds. ``batch``: the most frames one inference call takes; above 1,
    frames are batched only when they are already waiting (inference is the bottleneck). On a shared
    2-core CPU, batch=4 gave ResNet-50 INT8 about 1.1-1.3x the frames/s of batch=1 (OpenVINO and ONNX
    Runtime, benchmarks/runtime_overhead.py). The default stays 1: every result is then exactly what
    ``classify`` gives, also on backends whose numerics depend on the batch size (TensorRT).
    ``max_frames``: stop after that many. ``keep_frames``: attach each decoded frame to its result
    (for drawing on it).
    """

    def __init__(self, model: Model, source: Any, *, top_k: int = 1, order: ChannelOrder | str | None = None,
                 max_frames: int | None = None, keep_frames: bool = False, buffer: int = 4,
                 batch: int = 1) -> None:
        if model.kind is ModelKind.FEATURE_MAP:
            model.require(ModelKind.EMBEDDING)  # the clear error
        self.model = model
        self.top_k = check_top_k(top_k)
        self.max_frames = None if max_frames is None else _positive("max_frames", max_frames)
        options = EngineOptions(_positive("buffer", buffer), _positive("batch", batch))
        named = isinstance(source, (str, Path, int, FrameSource))
        self.source = open_source(source, order if order is not None or named else model.order)
        self.count = 0  # results delivered
        pipe = _Pipe()
        engine: _Engine | None = None
        try:
            frames = pipe.queue(options.buffer)
            engine = _ENGINES.get(model.backend, _ThreadEngine)(pipe, model, frames, options)
            pipe.spawn("edge-resnet-decode", _read_frames, pipe, self.source, model.prepare, frames,
                       self.max_frames, keep_frames)
        except BaseException:
            _shutdown(pipe, engine)
            self.source.close()
            raise
        self._engine = engine
        self._classify = model.kind is ModelKind.CLASSIFIER
        # runs on close(), or when the stream is garbage-collected; never references self
        self._finalizer = weakref.finalize(self, _shutdown, pipe, engine)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> FrameResult:
        if self.closed:
            raise StopIteration
        try:
            got = self._engine.next()
            if isinstance(got, _Item):
                result = self._result(got)
                self.count += 1
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
        return f"Stream({self.source!r}, {self.count} results, {state})"

