"""A loaded bundle that takes camera frames: the bundle's preprocessing, its backend, postprocessing.

    model = edge_resnet.runtime.load("out/")      # OpenVINO, ONNX Runtime or TensorRT, from the bundle
    model.classify(frame)                          # [Classification(labels, indices, scores)]
    model.embed([frame1, frame2])                  # (2, D) L2-normalised float32
    for r in model.stream("clip.mp4"): ...         # pipelined (see edge_resnet.runtime.stream)

Frames are uint8 HxWx3 (OpenCV's BGR by default, ``order="rgb"`` for PIL/numpy RGB), PIL images,
lists of them, or an (N, H, W, 3) uint8 array; an NCHW float32 array is taken as already
preprocessed and passed through. Nothing here imports torch.

Where the backend can (OpenVINO, ONNX Runtime, TensorRT with its frame engine:
``Backend.frame_input_problem``), the engine takes the frames themselves: the host only resizes and crops, and the conversion to float, the channel swap,
the mean/std and HWC -> NCHW run inside the model (see backends.base.FrameInput). Float NCHW batches
go to the artifact's own float input, loaded the first time one is passed.

Thread safety: ``classify``/``embed``/``infer`` may be called from several threads at once. OpenVINO
and ONNX Runtime runners are thread-safe themselves (see their modules); other backends' calls are
serialized with a lock.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edge_resnet.backends.base import FrameInput
from edge_resnet.bundle import Bundle, load_bundle
from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
from edge_resnet.errors import BundleError, DataError
from edge_resnet.postprocess import (
    Classification,
    ModelKind,
    check_top_k,
    l2_normalize,
    model_kind,
    top_k_softmax,
)
from edge_resnet.runtime.frame_sources import parse_order
from edge_resnet.types import BackendName, Mode

if TYPE_CHECKING:
    from edge_resnet.backends.base import Runner, ThroughputConfig
    from edge_resnet.runtime.stream import Stream

log = logging.getLogger(__name__)

__all__ = ["Classification", "Frames", "Model", "ModelKind", "load"]

# a frame, a PIL image, a list of them, an (N, H, W, C) uint8 array, or an NCHW float32 batch
Frames = Any



# ---------------------------------------------------------------------------------------------- inputs


def check_frame(frame: Any, where: str = "frame") -> np.ndarray:
    """``frame`` as a uint8 image array, or DataError saying what is wrong with it."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if not isinstance(frame, np.ndarray):
        raise DataError(f"{where} is a {type(frame).__name__}, not an image",
                        "pass uint8 HxWx3 numpy arrays (OpenCV frames) or PIL images")
    if frame.dtype != np.uint8:
        raise DataError(f"{where} has dtype {frame.dtype}; frames must be uint8 (pixels 0..255)",
                        "convert with np.clip(x, 0, 255).astype(np.uint8); an already preprocessed input "
                        "must be one float32 NCHW batch")
    if frame.ndim not in (2, 3):
        raise DataError(f"{where} has {frame.ndim} dimensions {frame.shape}; expected HxWx3 (or HxW gray)",
                        "pass one image per frame in channels-last layout; a batch as a list of frames")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        raise DataError(f"{where} has {frame.shape[2]} channels {frame.shape}; expected 3 (or 1, 4)",
                        "pass HxWx3 colour frames (channels last; transpose CHW arrays with .transpose(1, 2, 0))")
    if frame.size == 0:
        raise DataError(f"{where} is empty {frame.shape}", "check the frame source (a failed capture gives empty frames)")
    return frame


def _as_frame_list(frames: Frames) -> list[Any]:
    if isinstance(frames, np.ndarray):
        return list(frames) if frames.ndim == 4 and frames.dtype == np.uint8 else [frames]
    if isinstance(frames, Image.Image):
        return [frames]
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise DataError("got an empty list of frames", "pass at least one frame")
        return list(frames)
    raise DataError(f"cannot classify a {type(frames).__name__}",
                    "pass a frame (uint8 HxWx3 array or PIL image), a list of frames, or an NCHW float32 batch")


# ----------------------------------------------------------------------------------------------- model


class Model:
    """A bundle's artifact with its preprocessing and postprocessing. Make one with :func:`load`."""

    def __init__(self, bundle: Bundle, runner: Runner | None, order: ChannelOrder | str = ChannelOrder.BGR,
                 runner_options: dict[str, Any] | None = None, frame_runner: Runner | None = None) -> None:
        if runner is None and frame_runner is None:
            raise ValueError("a Model needs a runner, a frame runner or both")
        self.bundle = bundle
        self._runner = runner  # float32 NCHW input; loaded on first use when only frame_runner was given
        self._runner_lock = threading.Lock()
        self.frame_runner = frame_runner  # uint8 frames in, normalisation inside (FrameInput), or None
        self.runner_options = dict(runner_options or {})  # what load() passed to the backend
        self._throughput: Runner | None = None  # loaded by the first throughput stream
        self._throughput_lock = threading.Lock()
        self._closed = False
        self.order = parse_order(order)
        self.spec: PreprocessSpec = bundle.spec  # frozen: threads share it
        self.backend = BackendName(bundle.manifest["artifact"]["backend"])
        self.kind = model_kind(bundle.manifest["model"])
        self.labels: list[str] | None = bundle.labels
        self.input_shape = (3, self.spec.input_size, self.spec.input_size)
        primary = frame_runner if frame_runner is not None else runner
        assert primary is not None
        self._lock: AbstractContextManager[Any] = (
            nullcontext() if primary.thread_safe else threading.Lock())  # declared by the backend's Runner
        self._names: list[str] = list(self.labels or [])
        self._names_lock = threading.Lock()
        classes = bundle.manifest["model"].get("num_classes")
        if self.kind is ModelKind.CLASSIFIER and self.labels is not None and classes and len(self.labels) != classes:
            log.warning("%s has %d labels for %d classes: classes without a label are named by their index",
                        bundle.path, len(self.labels), classes)

    def __repr__(self) -> str:
        where = ", normalised in the engine" if self.frame_runner is not None else ""
        return f"Model({self.bundle.path}, {self.backend.value}, {self.kind.value}, input {self.input_shape}{where})"

    @property
    def runner(self) -> Runner:
        """The artifact's float32 NCHW runner (already preprocessed batches)."""
        if self._runner is None:
            with self._runner_lock:
                if self._closed:
                    raise BundleError(f"the model of {self.bundle.path} is closed", "load the bundle again")
                if self._runner is None:
                    self._runner = self.bundle.load_runner(**self.runner_options)
        return self._runner

    @property
    def frame_input(self) -> FrameInput | None:
        """What the engine's frame input takes, when it has one."""
        return None if self.frame_runner is None else FrameInput(self.spec, self.order)

    # ---- inputs

    def preprocess(self, frames: Frames, order: ChannelOrder | str | None = None) -> np.ndarray:
        """Frames -> the NCHW float32 batch the artifact takes (an NCHW float32 batch is passed through)."""
        if isinstance(frames, np.ndarray) and frames.dtype == np.float32 and frames.ndim == 4:
            return self._check_preprocessed(frames)
        items = _as_frame_list(frames)
        order = self.order if order is None else parse_order(order)
        if len(items) == 1:
            # no batch array to copy into: allocating 0.6 MB before PIL's buffers made glibc hand those back
            # to the OS after every call, and the page faults cost more than the copy (benchmarks/README.md)
            return self.prepare(items[0], order)[None]
        out = np.empty((len(items), *self.input_shape), dtype=np.float32)
        for i, frame in enumerate(items):
            self.prepare(frame, order, f"frame {i} of {len(items)}", out=out[i])
        return out

    def prepare(self, frame: Any, order: ChannelOrder, where: str = "frame", out: np.ndarray | None = None) -> np.ndarray:
        """One frame -> CHW float32 (PIL images are RGB whatever ``order`` says), into ``out`` if given."""
        if isinstance(frame, Image.Image):
            order = ChannelOrder.RGB
        return self.spec.apply(check_frame(frame, where), order, out=out)

    def prepare_for_engine(self, frame: Any, order: ChannelOrder, where: str = "frame") -> np.ndarray:
        """One frame -> what the engine takes per frame: the resized, cropped uint8 S x S x 3 frame in
        the engine's channel order when it normalises itself, else :meth:`prepare`'s CHW float32."""
        if self.frame_runner is None:
            return self.prepare(frame, order, where)
        if isinstance(frame, Image.Image):
            order = ChannelOrder.RGB
        return self.spec.crop(check_frame(frame, where), order, self.order)

    def engine_batch(self, frames: Frames, order: ChannelOrder | str | None = None) -> np.ndarray:
        """Frames -> the batch :meth:`run_batch` takes (uint8 frames when the engine normalises, else NCHW
        float32); an NCHW float32 batch is passed through."""
        if self.frame_runner is None or (isinstance(frames, np.ndarray) and frames.dtype == np.float32
                                         and frames.ndim == 4):
            return self.preprocess(frames, order)
        items = _as_frame_list(frames)
        order = self.order if order is None else parse_order(order)
        if len(items) == 1:
            return self.prepare_for_engine(items[0], order)[None]
        return np.stack([self.prepare_for_engine(frame, order, f"frame {i} of {len(items)}")
                         for i, frame in enumerate(items)])

    def _check_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1:] != self.input_shape or batch.shape[0] == 0:
            raise DataError(f"preprocessed batch has shape {batch.shape}; this model takes N x "
                            f"{' x '.join(map(str, self.input_shape))} float32 (N >= 1)",
                            "pass raw uint8 frames to let the model preprocess them, or fix the batch's shape")
        return batch

    # ---- inference

    def infer(self, frames: Frames, order: ChannelOrder | str | None = None) -> np.ndarray:
        """The artifact's raw output (logits or features) for ``frames``."""
        return self.run_batch(self.engine_batch(frames, order))

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """A batch of :meth:`engine_batch` (uint8 frames, or float32 NCHW) -> the artifact's output."""
        runner = self.frame_runner if self.frame_runner is not None and batch.dtype == np.uint8 else self.runner
        with self._lock:
            return runner.infer(batch)

    def classify(self, frames: Frames, top_k: int = 5, order: ChannelOrder | str | None = None) -> list[Classification]:
        """One :class:`Classification` per frame (a list also for a single frame)."""
        self.require(ModelKind.CLASSIFIER)
        k = check_top_k(top_k)
        return self.classifications(self.infer(frames, order), k)

    def embed(self, frames: Frames, order: ChannelOrder | str | None = None) -> np.ndarray:
        """(N, D) L2-normalised float32 embeddings, one row per frame."""
        self.require(ModelKind.EMBEDDING)
        return self.embeddings(self.infer(frames, order))

    # ---- postprocessing (also used by streams)

    def classifications(self, logits: np.ndarray, k: int) -> list[Classification]:
        if logits.ndim == 2 and logits.shape[1] < 2:
            raise BundleError(f"{self.bundle.path} outputs {logits.shape[1:]} per frame: the softmax of a single "
                              "logit is always 1.0, so it cannot rank classes",
                              "use model.infer(frames) for the raw score (e.g. a sigmoid for a binary classifier), or "
                              "compile a model with one output per class")
        idx, scores = top_k_softmax(logits, min(k, logits.shape[1]))
        names = self._label_names(logits.shape[1])
        return [Classification(tuple(i), tuple([names[j] for j in i]), tuple(s))
                for i, s in zip(idx.tolist(), scores.tolist(), strict=True)]

    def embeddings(self, features: np.ndarray) -> np.ndarray:
        if features.ndim != 2:
            raise BundleError(f"{self.bundle.path} outputs {features.shape[1:]} feature maps, not embedding vectors",
                              "compile an embedding bundle with --no-top --pooling avg (or max)")
        return l2_normalize(features)

    def _label_names(self, n: int) -> list[str]:
        names = self._names
        if len(names) < n:
            with self._names_lock:
                names = self._names = self._names + [str(i) for i in range(len(self._names), n)]
        return names

    def require(self, kind: ModelKind) -> None:
        """BundleError when the bundle is not a ``kind`` model (e.g. classify on an embedding bundle)."""
        if self.kind is kind:
            return
        raise BundleError(f"{self.bundle.path} is {_WHAT[self.kind]}, so it cannot {_WHY[kind]}", _FIX[(self.kind, kind)])

    # ---- streams

    def stream(self, source: Any, top_k: int = 1, order: ChannelOrder | str | None = None, *,
               mode: Mode | str = Mode.THROUGHPUT, max_frames: int | None = None,
               keep_frames: bool = False, buffer: int | None = None, batch: int | None = None,
               workers: int | None = None) -> Stream:
        """Results for every frame of ``source`` in frame order, pipelined (see edge_resnet.runtime.stream).

        ``mode="throughput"`` (default): one inference per core on the backend's throughput
        configuration (loaded once, on the first such stream; see Backend.throughput_config), frames
        batched up to ``batch`` when they are already waiting. ``mode="latency"``: this model's runner,
        one frame at a time, for the shortest time from frame to result on an idle machine.
        """
        from edge_resnet.runtime.stream import Stream

        return Stream(self, source, top_k=top_k, order=order, mode=mode, max_frames=max_frames,
                      keep_frames=keep_frames, buffer=buffer, batch=batch, workers=workers)

    def throughput_runner(self) -> tuple[Runner, ThroughputConfig] | None:
        """The runner and configuration of throughput streams; None when the backend has none.

        The model's own runner when it was loaded that way already, else the bundle loaded a second
        time with the configuration's options (kept for later streams, closed with the model).
        """
        from edge_resnet.backends.base import get_backend

        plan = get_backend(self.backend).throughput_config()
        if plan is None:
            return None
        primary = self.frame_runner if self.frame_runner is not None else self.runner
        if primary.throughput_configured():
            return primary, plan
        with self._throughput_lock:
            if self._closed:
                raise BundleError(f"the model of {self.bundle.path} is closed", "load the bundle again")
            if self._throughput is None:
                options = {**self.runner_options, **plan.load_options}
                if self.frame_runner is not None:
                    options["frame_input"] = self.frame_input
                log.info("loading %s for throughput streams (%s)", self.bundle.path,
                         ", ".join(f"{k}={v}" for k, v in plan.load_options.items()))
                self._throughput = self.bundle.load_runner(**options)
            return self._throughput, plan

    # ---- lifetime

    def close(self) -> None:
        for runner in (self._runner, self.frame_runner):
            if runner is not None:
                runner.close()
        with self._throughput_lock:
            self._closed = True
            if self._throughput is not None:
                self._throughput.close()
                self._throughput = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_WHAT: dict[ModelKind, str] = {
    ModelKind.CLASSIFIER: "a classifier bundle (output: logits)",
    ModelKind.EMBEDDING: "an embedding bundle (output: features, built with --no-top): it has no classes",
    ModelKind.FEATURE_MAP: "a feature-map bundle (output: features, --no-top --pooling none)",
}
_WHY: dict[ModelKind, str] = {ModelKind.CLASSIFIER: "classify", ModelKind.EMBEDDING: "embed"}
_FIX: dict[tuple[ModelKind, ModelKind], str] = {
    (ModelKind.EMBEDDING, ModelKind.CLASSIFIER): "use model.embed(frames), or compile a classifier bundle (without --no-top)",
    (ModelKind.FEATURE_MAP, ModelKind.CLASSIFIER): "use model.infer(frames) for the raw feature maps, or compile "
                                                   "a classifier bundle (without --no-top)",
    (ModelKind.CLASSIFIER, ModelKind.EMBEDDING): "use model.classify(frames), or compile an embedding bundle with "
                                                 "--no-top --pooling avg",
    (ModelKind.FEATURE_MAP, ModelKind.EMBEDDING): "use model.infer(frames) for the raw feature maps, or compile with "
                                                  "--no-top --pooling avg for embeddings",
}


def load(path: str | Path, *, order: ChannelOrder | str = ChannelOrder.BGR, verify: bool = True,
         normalize_in_engine: bool | None = None, **runner_options: Any) -> Model:
    """Open the bundle at ``path`` and load its artifact with the backend it was compiled for.

    ``order``: the default channel order of frames given to the model ("bgr" for OpenCV frames, "rgb"
    for PIL/numpy). ``verify``: check the bundle's file hashes. ``normalize_in_engine``: frames go to
    the engine as uint8 and it normalises them (default: when the backend can); False keeps the
    normalisation on the host. ``runner_options`` go to the backend's ``load`` (e.g. ``threads=2``,
    ``hint="throughput"`` for OpenVINO).
    """
    return model_of(load_bundle(path, verify=verify), order=order, normalize_in_engine=normalize_in_engine,
                    **runner_options)


def model_of(bundle: Bundle, *, order: ChannelOrder | str = ChannelOrder.BGR, normalize_in_engine: bool | None = None,
             **runner_options: Any) -> Model:
    """:func:`load` for a bundle already opened (and checked)."""
    from edge_resnet.backends.base import get_backend

    order = parse_order(order)
    problem = get_backend(bundle.artifact.backend).frame_input_problem(bundle)
    if normalize_in_engine and problem is not None:
        raise problem
    if problem is not None and normalize_in_engine is None:
        log.info("%s: the host normalises frames (%s; to normalise in the engine: %s)", bundle.path, problem.problem,
                 problem.fix)
    if problem is None and normalize_in_engine is not False:
        frame_runner = bundle.load_runner(**runner_options, frame_input=FrameInput(bundle.spec, order))
        return Model(bundle, None, order, runner_options, frame_runner=frame_runner)
    return Model(bundle, bundle.load_runner(**runner_options), order, runner_options)
