"""Empirical bias correction: remove the mean shift quantization puts on each Conv/Gemm output.

References: NNCF's Fast Bias Correction (``nncf/quantization/algorithms/fast_bias_correction``:
per-channel mean of each layer's float output minus the mean of its quantized version, added to
the bias) and AIMET's empirical bias correction (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", 2019, sec. 4.2: ``E[y_q] - E[y] = E[eps x]``).

For a layer ``y = W * x + b``, the quantized layer computes ``Wq * Q(x) + b``. Its mean output
channel ``c`` is off by

    shift_c = sum (W - Wq)[c] . M  -  sum Wq[c] . D

with ``M[ci, kh, kw]`` the mean float input under kernel tap ``(kh, kw)`` (the window mean:
padding and stride make the taps see different parts of the image) and ``D[ci, kh, kw]`` the mean
of ``Q(x) - x`` there. Both are streamed from the calibration pass, no second inference:

* ``M``: per batch, the sums of the padded input over the strided slice each tap reads (exact).
* ``D``: rounding averages out; clipping does not (a ReLU output clipped at its threshold loses
  ``E[x - t; x > t]``). The scale is only known once the histograms are complete, so each input
  channel keeps a small signed histogram of its values (``ChannelHistogram``) from which
  ``E[clip(x, lo, hi) - x]`` is computed for the final ``(lo, hi)``. It is spread over the taps by
  the share of their positions inside the image (padding is exactly 0 in every format).

The corrected bias is ``b + shift``: a float initializer (S8S8) or, when the graph stores int32
bias behind a DequantizeLinear (U8S8), requantized at its existing scale. Like NNCF, a correction
is skipped when it would change a bias by more than ``MAX_RELATIVE_SHIFT`` times its size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from edge_resnet.errors import QuantizationError
from edge_resnet.quant.histogram import STATS_NUM_BINS, StreamingHistogram
from edge_resnet.quant.qdq import quantize_weights

log = logging.getLogger(__name__)

CHANNEL_BINS = 128  # per sign and channel; thresholds fall in the top 15/16 of the range
_CHUNK = 1 << 20  # values per binning step of ChannelHistogram
MAX_RELATIVE_SHIFT = 2.0  # as NNCF's FastBiasCorrection threshold (max |shift / bias|)
BIAS_IMAGES = 300
"""Bias correction's statistics come from the first this many calibration images: means settle long
before that, and the time stays flat in the set's size. NNCF's default (nncf.quantize subset_size=300,
which its FastBiasCorrection shares)."""


# ------------------------------------------------------------------------------------ statistics


class ChannelHistogram:
    """Per-channel histograms of x (negatives and positives apart) on one power-of-two grid.

    Same growth rule as ``StreamingHistogram``: the bin width is the smallest power of two with
    ``amax <= num_bins * width``, and when the range grows, adjacent bins are summed, so any
    split of the data into batches gives the same counts. ``counts[c, 0, k]`` counts the values
    of channel ``c`` with ``-(k+1) w <= x < -k w``, ``counts[c, 1, k]`` those with ``k w < x <=
    (k+1) w``; exact zeros are not counted (they quantize exactly).
    """

    def __init__(self, channels: int, num_bins: int = CHANNEL_BINS) -> None:
        self.channels, self.num_bins = channels, num_bins
        self.counts = np.zeros((channels, 2, num_bins), dtype=np.int64)
        self.values = np.zeros(channels, dtype=np.int64)
        self.exponent: int | None = None

    @property
    def width(self) -> float:
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    def update(self, x: npt.NDArray[np.float32]) -> None:
        """``x``: (N, C, ...) with C == channels."""
        n, c = x.shape[0], x.shape[1]
        per_image = x.reshape(n, c, -1)
        self.values += n * per_image.shape[2]
        amax = float(np.abs(per_image).max()) if per_image.size else 0.0
        if amax == 0.0:
            return
        e = math.frexp(amax / self.num_bins)[1]
        while amax > math.ldexp(self.num_bins, e):
            e += 1
        while amax <= math.ldexp(self.num_bins, e - 1):
            e -= 1
        if self.exponent is not None and e < self.exponent:
            e = self.exponent
        self._grow_to(e)
        inv = np.float32(math.ldexp(1.0, -e)) if -e <= 127 else np.float64(math.ldexp(1.0, -e))
        nb = self.num_bins
        # per channel 2 x (nb + 1) slots: [negatives: zeros slot, bins 1..nb | positives: the same]
        base = (np.arange(c, dtype=np.intp) * (2 * nb + 2))[None, :, None]
        total = np.zeros(c * (2 * nb + 2), dtype=np.int64)
        step = max(1, _CHUNK // max(per_image[0].size, 1))  # images per chunk: small index arrays
        for start in range(0, n, step):
            part = per_image[start:start + step]
            f = np.abs(part)
            f *= inv
            np.ceil(f, out=f)  # bin k (1-based) holds |x| in ((k-1) w, k w]; exact zeros give 0
            idx = f.astype(np.intp)
            idx += (part > 0) * (nb + 1)
            idx += base
            total += np.bincount(idx.reshape(-1), minlength=total.size)
        slots = total.reshape(c, 2, nb + 1)
        self.counts += slots[:, :, 1:]  # zeros (slot 0) quantize exactly: not counted

    def _grow_to(self, exponent: int) -> None:
        if self.exponent is None:
            self.exponent = exponent
            return
        d = exponent - self.exponent
        if d <= 0:
            return
        merged = np.zeros_like(self.counts)
        if d >= self.num_bins.bit_length():  # every old bin lands in bin 0
            merged[:, :, 0] = self.counts.sum(axis=2)
        else:
            factor = 1 << d
            summed = self.counts.reshape(self.channels, 2, -1, factor).sum(axis=3)
            merged[:, :, : summed.shape[2]] = summed
        self.counts, self.exponent = merged, exponent

    def density_near_zero(self) -> npt.NDArray[np.float64]:
        """Per channel, the share of its values in the first positive bin (a proxy of the density
        at 0+, which drives the mean rounding error of a ReLU output)."""
        return self.counts[:, 1, 0] / np.maximum(self.values, 1)

    def clip_error_mean(self, lo: float, hi: float) -> npt.NDArray[np.float64]:
        """Per channel, ``E[clip(x, lo, hi) - x]`` over all values (zeros included), values taken
        uniform inside their bin."""
        out = np.zeros(self.channels)
        if self.exponent is None:
            return out
        w = self.width
        left = np.arange(self.num_bins) * w  # |x| in (left, left + w]
        for sign, limit in ((1, hi), (0, -lo)):
            if limit < 0:
                continue
            # mean of (|x| - limit)+ over a bin, for |x| uniform in (left, left + w]
            a = np.clip(left - limit, 0.0, None)
            b = np.clip(left + w - limit, 0.0, None)
            excess = np.where(b > a, (b * b - a * a) / (2.0 * w), 0.0)
            lost = self.counts[:, sign, :] @ excess  # sum of (|x| - limit)+
            out += (-1.0 if sign == 1 else 1.0) * lost
        return out / np.maximum(self.values, 1)


@dataclass
class LayerGeometry:
    """Where each kernel tap of a Conv (or Gemm: one 1x1 tap) reads its input."""

    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, node: onnx.NodeProto, weight: np.ndarray) -> LayerGeometry | None:
        if node.op_type == "Gemm":
            return cls()
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("group", 1) != 1 or weight.ndim != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        kh, kw = weight.shape[2:]
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        return cls((kh, kw), tuple(attrs.get("strides", (1, 1))), pads, tuple(attrs.get("dilations", (1, 1))))  # type: ignore[arg-type]

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = self.kernel, self.strides, self.pads, self.dilations
        return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


@dataclass
class WindowMean:
    """Streamed sums of the input under each kernel tap: ``sums[ci, kh, kw]`` over (n, oh, ow), and
    the number of positions inside the image for each tap."""

    geometry: LayerGeometry
    sums: npt.NDArray[np.float64] | None = None
    inside: npt.NDArray[np.float64] | None = None
    positions: int = 0

    def update(self, x: npt.NDArray[np.float32]) -> None:
        g = self.geometry
        if x.ndim == 2:
            x = x[:, :, None, None]
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = g.kernel, g.strides, g.pads, g.dilations
        oh, ow = g.out_size(h, w)
        # sum over the batch first (one pass over the data); the taps then slice the small (C, H, W) sum
        total = x.sum(axis=0, dtype=np.float64)
        padded = np.pad(total, ((0, 0), (pt, pb), (pl, pr))) if any(g.pads) else total
        ones = np.pad(np.ones((h, w)), ((pt, pb), (pl, pr))) if any(g.pads) else np.ones((h, w))
        sums = np.empty((c, kh, kw))
        inside = np.empty((kh, kw))
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                sums[:, i, j] = padded[:, rows, cols].sum(axis=(1, 2))
                inside[i, j] = ones[rows, cols].sum()
        if self.sums is None:
            self.sums, self.inside = sums, inside * n
        else:
            self.sums += sums
            self.inside += inside * n  # type: ignore[operator]
        self.positions += n * oh * ow

    def mean(self) -> npt.NDArray[np.float64]:
        assert self.sums is not None
        return self.sums / max(self.positions, 1)

    def inside_share(self) -> npt.NDArray[np.float64]:
        assert self.inside is not None
        return self.inside / max(self.positions, 1)


@dataclass
class BiasStats:
    """The streamed statistics of bias correction for one float graph."""

    windows: dict[str, WindowMean]  # layer (node) name -> window means of its input
    inputs: dict[str, str]  # layer name -> its float input tensor
    channels: dict[str, ChannelHistogram] = field(default_factory=dict)  # input tensor -> histograms
    hists: dict[str, StreamingHistogram] = field(default_factory=dict)  # input tensor -> its fine histogram
    _own: set[str] = field(default_factory=set)  # tensors whose histogram is kept here, not by calibration

    @classmethod
    def plan(cls, model: onnx.ModelProto) -> BiasStats:
        """Statistics for every Conv/Gemm with a constant weight and a bias in ``model``."""
        inits = {i.name: i for i in model.graph.initializer}
        windows, inputs = {}, {}
        for node in model.graph.node:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[1] not in inits:
                continue
            if node.input[2] not in inits:
                continue
            if node.op_type == "Gemm":
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                if attrs.get("transA", 0):
                    continue
            geometry = LayerGeometry.of(node, numpy_helper.to_array(inits[node.input[1]]))
            if geometry is None:
                continue
            windows[node.name] = WindowMean(geometry)
            inputs[node.name] = node.input[0]
        return cls(windows, inputs)

    @property
    def tensors(self) -> list[str]:
        return list(dict.fromkeys(self.inputs.values()))

    def update(self, tensor: str, x: npt.NDArray[np.float32], hist: StreamingHistogram | None = None) -> None:
        """Absorb a batch of ``tensor``; ``hist``: its fine histogram, when calibration keeps one."""
        arr = x if x.ndim == 4 else x.reshape(x.shape[0], x.shape[1], 1, 1)
        if tensor not in self.channels:
            self.channels[tensor] = ChannelHistogram(arr.shape[1])
        if hist is not None:
            self.hists[tensor] = hist
        elif tensor not in self.hists:
            self.hists[tensor] = StreamingHistogram(STATS_NUM_BINS, name=tensor)
            self._own.add(tensor)
        if tensor in self._own:
            self.hists[tensor].update(arr)
        self.channels[tensor].update(arr)
        for layer, name in self.inputs.items():
            if name == tensor:
                self.windows[layer].update(arr)


# ------------------------------------------------------------------------------------ application


@dataclass
class BiasCorrectionRecord:
    corrected: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why
    max_relative_shift: float = 0.0
    shifts: dict[str, float] = field(default_factory=dict)  # layer -> max |shift|

    def to_dict(self) -> dict[str, Any]:
        return {"corrected": self.corrected, "skipped": len(self.skipped),
                "max_relative_shift": round(self.max_relative_shift, 6)}


def _input_quantizer(qmodel: onnx.ModelProto, conv: onnx.NodeProto) -> tuple[float, float] | None:
    """(lo, hi) clipping range of the activation quantizer feeding ``conv``, from its Q/DQ pair."""
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    dq = producers.get(conv.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    scale = float(inits[dq.input[1]]) if dq.input[1] in inits else None
    zp_arr = inits.get(dq.input[2]) if len(dq.input) > 2 else None
    if scale is None or zp_arr is None:
        return None
    info = np.iinfo(zp_arr.dtype)
    zp = int(zp_arr)
    return (info.min - zp) * scale, (info.max - zp) * scale  # QuantizeLinear saturates to the type's range


def _quantized_weight(node: onnx.NodeProto, w: np.ndarray) -> tuple[np.ndarray, int]:
    axis = 0
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = 0 if attrs.get("transB", 0) else 1
    q, scale = quantize_weights(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    return q.astype(np.float64) * scale.astype(np.float64).reshape(shape), axis


def correct_biases(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, stats: BiasStats) -> BiasCorrectionRecord:
    """Shift the bias of every quantized Conv/Gemm of ``qmodel`` (in place) by its measured mean error."""
    record = BiasCorrectionRecord()
    f_inits = {i.name: i for i in float_model.graph.initializer}
    f_nodes = {n.name: n for n in float_model.graph.node if n.name}
    q_inits = {i.name: i for i in qmodel.graph.initializer}
    q_producers = {o: n for n in qmodel.graph.node for o in n.output}
    for node in qmodel.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.name not in stats.windows:
            continue
        window = stats.windows[node.name]
        fnode = f_nodes.get(node.name)
        tensor = stats.inputs[node.name]
        if fnode is None or window.sums is None or tensor not in stats.channels:
            record.skipped[node.name] = "no statistics"
            continue
        wq_src = q_producers.get(node.input[1])
        if wq_src is None or wq_src.op_type != "DequantizeLinear":
            record.skipped[node.name] = "weights not quantized"
            continue
        clip = _input_quantizer(qmodel, node)
        if clip is None:
            record.skipped[node.name] = "input not quantized"
            continue
        w = numpy_helper.to_array(f_inits[fnode.input[1]]).astype(np.float64)
        wq, axis = _quantized_weight(fnode, w)
        if node.op_type == "Gemm":  # as (out, in, 1, 1)
            w, wq = (np.moveaxis(a, axis, 0)[:, :, None, None] for a in (w, wq))
        mean = window.mean()  # (ci, kh, kw)
        channels = stats.channels[tensor]
        per_channel = channels.clip_error_mean(*clip) + _rounding_error_mean(stats.hists.get(tensor), channels, clip)
        err = per_channel[:, None, None] * window.inside_share()[None]
        shift = np.einsum("oikl,ikl->o", w - wq, mean) - np.einsum("oikl,ikl->o", wq, err)
        if not _write_bias(node, shift, q_inits, q_producers, record):
            continue
        record.corrected += 1
        record.shifts[node.name] = float(np.abs(shift).max(initial=0.0))
    log.info("bias correction: %d layers corrected, %d skipped", record.corrected, len(record.skipped))
    return record


def _rounding_error_mean(hist: StreamingHistogram | None, channels: ChannelHistogram,
                         clip: tuple[float, float]) -> npt.NDArray[np.float64]:
    """Per channel, the mean rounding error ``E[rint(x/s) s - x]`` of a non-negative tensor.

    It is not 0: where the density falls (a ReLU output, most of it near 0), more values round
    down than up; for a smooth density it is about ``-f(0+) s**2 / 24``. The tensor's fine
    histogram gives its exact mean over the tensor (bin centres: 128 or more bins per step); it is
    shared out over the channels in proportion to each one's density near 0. Signed tensors (their
    two sides' rounding errors cancel to first order) and coarse histograms give 0.
    """
    out = np.zeros(channels.channels)
    if hist is None or hist.min < 0 or hist.amax == 0.0:
        return out
    lo, hi = clip
    levels = 255 if lo == 0 else 127
    step = hi / levels if lo == 0 else (hi - lo) / 255
    w = hist.bin_width
    if step < 16 * w:
        return out
    counts = hist.counts.astype(np.float64)
    left = np.arange(counts.size) * w
    centres = np.minimum(left + w / 2, hist.amax)
    inside = centres <= hi
    err = (np.rint(centres / step) * step - centres) * inside
    tensor_mean = float(counts @ err) / max(hist.count, 1)
    density = channels.density_near_zero()
    if density.mean() <= 0:
        return out + tensor_mean
    return tensor_mean * density / density.mean()


def _write_bias(node: onnx.NodeProto, shift: np.ndarray, inits: dict[str, onnx.TensorProto],
                producers: dict[str, onnx.NodeProto], record: BiasCorrectionRecord) -> bool:
    name = node.input[2]
    if name in inits:  # float bias
        b = numpy_helper.to_array(inits[name]).astype(np.float64)
        new = b + shift
        if not _acceptable(node.name, b, new, record):
            return False
        inits[name].CopyFrom(numpy_helper.from_array(new.astype(np.float32), name))
        return True
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        record.skipped[node.name] = "bias is neither an initializer nor a dequantized one"
        return False
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    b = q * scale
    new_q = np.rint((b + shift) / np.maximum(scale, 1e-30))
    if np.abs(new_q).max(initial=0) >= 2**31 - 1:
        record.skipped[node.name] = "corrected bias does not fit int32"
        return False
    if not _acceptable(node.name, b, new_q * scale, record):
        return False
    inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new_q.astype(np.int32), dq.input[0]))
    return True


def _acceptable(layer: str, old: np.ndarray, new: np.ndarray, record: BiasCorrectionRecord) -> bool:
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(new - old) / np.abs(old)
    magnitude = float(np.nanmax(np.where(old == 0, np.where(new == old, 0.0, np.inf), rel), initial=0.0))
    if not math.isfinite(magnitude) or magnitude >= MAX_RELATIVE_SHIFT:
        record.skipped[layer] = f"shift {magnitude:.3g}x the bias (limit {MAX_RELATIVE_SHIFT})"
        return False
    record.max_relative_shift = max(record.max_relative_shift, magnitude)
    return True


def require_stats(stats: BiasStats | None) -> BiasStats:
    if stats is None:
        raise QuantizationError("bias correction needs statistics collected with bias_correction=True",
                                "calibrate again with bias correction on, or pass --no-bias-correction")
    return stats
