"""The whole camera path, timed per stage on real frames, one frame at a time (batch 1):

    decode (next frame from the source) -> preprocess -> infer -> postprocess

"preprocess" is the host's part, as the runtime does it: resize + crop when the engine normalises the
frames itself (backends that take frames, see backends.base.FrameInput), else PreprocessSpec.apply.

Frames come from any source ``open_dataset`` reads (default: the raw digits:test images). For image
files and videos "decode" is the real decoding; for in-memory arrays (digits, .npy) it is only the copy
of the frame, and the result says so (``decoded: false``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_resnet.backends.base import FrameInput, Runner, get_backend
from edge_resnet.bench.latency import Clock, LatencyStats, Mode, Target
from edge_resnet.data import ChannelOrder, PreprocessSpec, open_dataset
from edge_resnet.errors import BundleError, DataError
from edge_resnet.postprocess import l2_normalize, top_k_softmax

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "infer", "postprocess")
DECODED_KINDS = frozenset({"folder", "list", "image", "video"})  # sources whose frames are decoded files
TOP_K = 5


def softmax_topk(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(top-k class indices, their probabilities) per row, best first: the runtime's own."""
    return top_k_softmax(logits, min(k, logits.shape[1]))


def _embedding(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((features.shape[0], 0), np.int64), l2_normalize(features.reshape(features.shape[0], -1))


# bundle output kind -> the postprocessing a camera application does
POSTPROCESS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "logits": softmax_topk,
    "features": _embedding,
}


@dataclass
class PipelineResult:
    stages_ms: dict[str, float]  # mean per frame
    stages_p50_ms: dict[str, float]
    frame_ms: LatencyStats  # end to end, per frame
    fps: float
    frames: int
    source: str
    source_kind: str
    decoded: bool
    top1: float | None  # accuracy of the top-1 class when the source has labels
    normalized_in_engine: bool = False

    def to_dict(self) -> dict[str, Any]:
        r4 = {k: round(v, 4) for k, v in self.stages_ms.items()}
        return {"stages_ms": r4, "stages_p50_ms": {k: round(v, 4) for k, v in self.stages_p50_ms.items()},
                "frame_ms": self.frame_ms.to_dict(), "fps": round(self.fps, 3), "frames": self.frames,
                "batch": 1, "source": self.source, "source_kind": self.source_kind, "decoded": self.decoded,
                "top1": self.top1, "normalized_in_engine": self.normalized_in_engine}


def _frames(source: str, spec: PreprocessSpec) -> tuple[Iterator[Any], str]:
    data = open_dataset(source, spec)
    if data.preprocessed:
        raise DataError(f"{source} holds preprocessed tensors, not camera frames",
                        "pass --frames with images, a video, a uint8 array or digits:test")
    return iter(data.images(1)), data.kind


def run_pipeline(runner: Runner, spec: PreprocessSpec, source: str = "digits:test", frames: int = 200,
                 warmup: int = 10, output_kind: str = "logits", clock: Clock = time.perf_counter,
                 normalized_in_engine: bool = False) -> PipelineResult:
    """Time ``warmup + frames`` frames through the four stages; warm-up frames are not counted.
    ``normalized_in_engine``: ``runner`` takes RGB uint8 frames (loaded with a FrameInput in RGB)."""
    prepare: Callable[[np.ndarray], np.ndarray] = (
        (lambda image: spec.crop(image, ChannelOrder.RGB, ChannelOrder.RGB)) if normalized_in_engine
        else (lambda image: spec.apply(image, ChannelOrder.RGB)))
    post = POSTPROCESS.get(output_kind)
    if post is None:
        raise DataError(f"no postprocessing for output kind {output_kind!r}", f"use one of {sorted(POSTPROCESS)}")
    it, kind = _frames(source, spec)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: list[float] = []
    correct = labelled = 0
    for n in range(warmup + frames):
        t0 = clock()
        item = next(it, None)
        if item is None:
            break
        t1 = clock()
        x = prepare(item.images[0])[None]
        t2 = clock()
        y = runner.infer(x)
        t3 = clock()
        top, _ = post(y)
        t4 = clock()
        if n < warmup:
            continue
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[stage].append(dt * 1e3)
        totals.append((t4 - t0) * 1e3)
        if item.y is not None and top.shape[1]:
            labelled += 1
            correct += int(top[0, 0] == item.y[0])
    if not totals:
        raise DataError(f"{source} gave no frames after {warmup} warm-up frames",
                        "use a longer source or a smaller --warmup")
    if len(totals) < frames:
        log.warning("%s has only %d frames after warm-up (asked for %d)", source, len(totals), frames)
    stats = {s: LatencyStats.from_samples(v) for s, v in times.items()}
    frame = LatencyStats.from_samples(totals)
    return PipelineResult({s: st.mean for s, st in stats.items()}, {s: st.p50 for s, st in stats.items()}, frame,
                          1e3 / frame.mean if frame.mean > 0 else math.inf, len(totals), source, kind,
                          kind in DECODED_KINDS, correct / labelled if labelled else None, normalized_in_engine)


def bundle_pipeline(source: str = "digits:test", frames: int = 200, warmup: int = 10,
                    threads: int | None = None) -> Callable[[Target], dict[str, Any]]:
    """The ``pipeline`` hook of ``benchmark()``: its own runner (LATENCY hint), the bundle's preprocessing."""

    def run(target: Target) -> dict[str, Any]:
        bundle = target.bundle
        if bundle is None:
            raise BundleError(f"--pipeline needs a bundle (its preprocessing and output kind); {target.path} is a bare file",
                              "benchmark the bundle directory")
        in_engine = get_backend(bundle.artifact.backend).frame_input_problem(bundle) is None  # as runtime.load
        options: dict[str, Any] = {"frame_input": FrameInput(bundle.spec, ChannelOrder.RGB)} if in_engine else {}
        with target.subject.load(threads=threads, hint=Mode.LATENCY.hint, **options) as runner:
            return run_pipeline(runner, bundle.spec, source, frames, warmup, bundle.output_kind,
                                normalized_in_engine=in_engine).to_dict()

    return run
