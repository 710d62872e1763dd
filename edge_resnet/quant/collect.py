"""Run the float graph in ONNX Runtime and fold each batch into streaming histograms.

Only the tensors the Q/DQ placement needs are exposed as outputs, and each batch's activations
are folded into a fixed-size histogram and dropped before the next batch runs: peak memory is
one batch of activations plus the histograms, whatever the size of the calibration set (ONNX
Runtime's own histogram calibrators keep every batch and run out of memory on large sets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from edge_resnet.errors import DataError, QuantizationError
from edge_resnet.quant.bias_correction import BIAS_IMAGES, BiasStats
from edge_resnet.quant.calibrators import CalibrationMethod, compute_amax
from edge_resnet.quant.histogram import STATS_NUM_BINS, StreamingHistogram

log = logging.getLogger(__name__)


@dataclass
class ActivationStats:
    """Per-tensor histograms of one calibration run, in graph order."""

    hists: dict[str, StreamingHistogram]
    images: int = 0
    seconds: float = field(default=0.0, compare=False)
    bias: BiasStats | None = field(default=None, compare=False)  # for bias correction (not saved)

    def amax(self, method: CalibrationMethod | str, **params: float) -> dict[str, float]:
        return {name: compute_amax(h, method, **params) for name, h in self.hists.items()}

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"__names__": np.array(list(self.hists)), "__images__": np.array(self.images)}
        for i, h in enumerate(self.hists.values()):
            for k, v in h.to_arrays().items():
                arrays[f"{i}/{k}"] = v
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> ActivationStats:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in z["__names__"]]
            hists = {}
            for i, name in enumerate(names):
                prefix = f"{i}/"
                hists[name] = StreamingHistogram.from_arrays(
                    {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}, name=name)
            return cls(hists, int(z["__images__"]))


def _session(model: onnx.ModelProto, tensors: list[str], threads: int | None):

    from edge_resnet.ort_session import cpu_session

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    del aug.graph.output[:]
    for t in tensors:
        aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    # ENABLE_ALL (NCHWc layouts, fused kernels) runs calibration faster than EXTENDED; exposed tensors
    # are graph outputs, which ORT never fuses away, so the values are exact
    return cpu_session(aug, optimization="ORT_ENABLE_ALL", threads=threads)


def collect_statistics(model: onnx.ModelProto, tensors: list[str], batches: Iterable[np.ndarray], *,
                       total_images: int | None = None, threads: int | None = None,
                       num_bins: int = STATS_NUM_BINS, progress: bool = True,
                       bias_correction: bool = False) -> ActivationStats:
    """Histograms of ``tensors`` over all ``batches`` (float32 NCHW, preprocessed); with
    ``bias_correction`` also the statistics of ``bias_correction.BiasStats`` in the same pass."""
    if not tensors:
        raise QuantizationError("nothing to calibrate: the graph has no quantizable layer",
                                "check the model and the --exclude list")
    bias = BiasStats.plan(model) if bias_correction else None
    exposed = list(dict.fromkeys(tensors + (bias.tensors if bias else [])))
    sess = _session(model, exposed, threads)
    input_name = sess.get_inputs()[0].name
    hists = {t: StreamingHistogram(num_bins, name=t) for t in tensors}
    bias_left = BIAS_IMAGES if bias else 0
    images = 0
    start = time.perf_counter()
    bar = tqdm(total=total_images, unit="img", desc="calibrating", disable=not progress, leave=False)
    try:
        for batch in _checked(batches):
            outputs = sess.run(exposed, {input_name: batch})
            for name, out in zip(exposed, outputs, strict=True):
                if name in hists:
                    hists[name].update(out)
            if bias_left > 0:
                bias_left -= _absorb_bias(bias, exposed, outputs, bias_left, hists)  # type: ignore[arg-type]
            del outputs
            images += batch.shape[0]
            bar.update(batch.shape[0])
    finally:
        bar.close()
    if images == 0:
        raise DataError("the calibration set is empty", "pass a folder, list, array or video with images to --calib")
    stats = ActivationStats(hists, images, time.perf_counter() - start, bias)
    log.info("calibration statistics: %d tensors over %d images in %.1f s", len(tensors), images, stats.seconds)
    return stats


def _absorb_bias(bias: BiasStats, exposed: list[str], outputs: list[np.ndarray], left: int,
                 hists: dict[str, StreamingHistogram]) -> int:
    """One batch into ``bias``, at most ``left`` images of it; returns how many it took."""
    inputs = set(bias.tensors)
    take = 0
    for name, out in zip(exposed, outputs, strict=True):
        if name in inputs:
            take = min(left, out.shape[0])
            bias.update(name, out[:take], hists.get(name))
    return take


def collect_bias_statistics(model: onnx.ModelProto, tensors: list[str], batches: Iterable[np.ndarray],
                            hists: dict[str, StreamingHistogram], *, threads: int | None = None) -> BiasStats:
    """Bias correction's statistics alone, for histograms of ``tensors`` gathered elsewhere (on Ray):
    the first ``BIAS_IMAGES`` images of ``batches`` through the session ``collect_statistics`` uses (the
    same exposed tensors, so the same values), hence the same statistics as its own pass."""
    bias = BiasStats.plan(model)
    exposed = list(dict.fromkeys(tensors + bias.tensors))
    sess = _session(model, exposed, threads)
    input_name = sess.get_inputs()[0].name
    left = BIAS_IMAGES
    for batch in _checked(batches):
        if left <= 0:
            break
        left -= _absorb_bias(bias, exposed, sess.run(exposed, {input_name: batch}), left, hists)
    return bias


def _checked(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for b in batches:
        if b.dtype != np.float32 or b.ndim != 4:
            raise DataError(f"calibration batches must be float32 NCHW, got {b.dtype} {b.shape}")
        yield np.ascontiguousarray(b)
