"""Calibrators: pure functions ``(hist, **params) -> amax``, the clipping threshold of symmetric INT8.

The scale of a tensor is ``amax / 127``. Every calibrator returns a positive float: a tensor that was
all zeros (or whose threshold rounds to 0) gets ``MIN_AMAX`` (1e-8), so a scale is never 0 and never
divides by 0 downstream; such a tensor quantizes to all zeros whatever its scale.

* ``minmax``: the largest |x| seen.
* ``percentile``: the |x| below which ``percentile`` % of the values fall, interpolated in the bin.
* ``entropy``: TensorRT's KL-divergence search (IInt8EntropyCalibrator2) exactly as NVIDIA's
  ModelOpt and pytorch-quantization implement it, vectorized over the candidates.
* ``mse``: the threshold with the least mean squared error of fake-quantization (clip and round).

Asymmetric ranges ``(lo, hi)`` (uint8 with a zero point, for signed tensors in U8S8), from the
histogram's two sides (``neg_counts``): ``minmax`` gives ``[min, max]``, ``mse`` the 255-step grid
with the least squared error (``mse_range``). Percentile and entropy stay symmetric.

An empty histogram (no values seen) raises ``QuantizationError``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from enum import Enum

import numpy as np
import numpy.typing as npt

from edge_resnet.errors import QuantizationError
from edge_resnet.quant.histogram import StreamingHistogram

logger = logging.getLogger(__name__)

MIN_AMAX = 1e-8
"""Smallest amax any calibrator returns (all-zero tensors): keeps the scale ``amax / 127`` positive."""

DEFAULT_PERCENTILE = 99.99

ENTROPY_NUM_BINS = 2048
"""Bins of the |x| histogram the entropy and mse searches work on, as TensorRT's calibrators."""

_MSE_BLOCK = 256


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


# -- parameter checks --------------------------------------------------------------------------------


def _label(hist: StreamingHistogram) -> str:
    return f"tensor {hist.name!r}" if hist.name else "the tensor"


def _require_data(hist: StreamingHistogram, method: str) -> None:
    if not isinstance(hist, StreamingHistogram):
        raise QuantizationError(
            f"{method} calibration needs a StreamingHistogram, got {type(hist).__name__}",
            "collect the tensor's statistics with StreamingHistogram.update()",
        )
    if hist.is_empty:
        raise QuantizationError(
            f"no values were collected for {_label(hist)}, so it cannot be calibrated",
            "run calibration on at least one non-empty batch that reaches this tensor",
        )


def _check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):  # type: ignore[operator]
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise QuantizationError(f"invalid calibration parameter {name}={value!r}", f"use an integer {bound}")
    return int(value)  # type: ignore[arg-type]


# -- calibrators -------------------------------------------------------------------------------------


def minmax(hist: StreamingHistogram) -> float:
    """``max(|min|, |max|)``: no clipping."""
    _require_data(hist, "minmax")
    return max(hist.amax, MIN_AMAX)


def percentile(hist: StreamingHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The |x| below which ``percentile`` % of the values (zeros included) fall.

    Values are taken as uniform inside their bin (the top bin ends at amax), so the result is within
    one bin width of the exact sample percentile.
    """
    _require_data(hist, "percentile")
    if isinstance(percentile, bool) or not isinstance(percentile, int | float | np.number):
        raise QuantizationError(f"invalid calibration parameter percentile={percentile!r}", "use a number")
    p = float(percentile)
    if not 0.0 < p <= 100.0:
        raise QuantizationError(
            f"invalid calibration parameter percentile={percentile!r}",
            f"use a value in (0, 100], e.g. {DEFAULT_PERCENTILE}",
        )
    amax = hist.amax
    target = p / 100.0 * hist.count
    if amax == 0.0 or target <= hist.zero_count:
        return MIN_AMAX
    counts = hist.counts
    cumulative = hist.zero_count + np.cumsum(counts)  # exact int64
    k = min(int(np.searchsorted(cumulative, target, side="left")), counts.size - 1)
    w = hist.bin_width
    lower = k * w
    upper = min((k + 1) * w, amax)
    before = int(cumulative[k]) - int(counts[k])
    value = lower + (target - before) / int(counts[k]) * (upper - lower)
    return max(min(value, amax), MIN_AMAX)


def entropy(hist: StreamingHistogram, num_bits: int = 8, start_bin: int = 128, stride: int = 1) -> float:
    """TensorRT's entropy calibration (IInt8EntropyCalibrator2), as NVIDIA's own Python code does it.

    References, followed step by step: ``_compute_amax_entropy`` in NVIDIA/Model-Optimizer
    ``modelopt/torch/quantization/calib/histogram.py`` and the same function in NVIDIA/TensorRT
    ``tools/pytorch-quantization/pytorch_quantization/calib/histogram.py``:

    * the histogram of |x| in 2048 equal bins over ``[0, amax]`` (``torch.histc(x.abs(), 2048, 0,
      amax)``); a signed and an unsigned tensor with the same |x| get the same threshold. Ours is
      ``hist.resampled(2048)`` of the finer streamed histogram;
    * ``bins[0] = bins[1]``: the spike of exact zeros (half of a ReLU output) is flattened;
    * candidates ``i = start_bin, start_bin + stride, ..., 2048``; for each, P = ``bins[:i]`` with
      the outliers ``sum(bins[i:])`` added to ``P[i-1]``, and Q = ``bins[:i]`` merged into
      ``2**(num_bits-1)`` levels (bin ``j`` -> level ``floor(j * levels / i)``, i.e. ``np.digitize``
      over ``linspace(0, i, levels + 1)``), each level's mass spread evenly over its non-empty bins
      and empty bins left at 0 (this is the "expansion");
    * KL(P||Q) as ``scipy.stats.entropy`` (both normalized, ``0 log 0 = 0``, ``p > 0 = q`` gives
      inf, which happens when the last bin is empty but outliers land in it). No smoothing: the
      epsilon smoothing of MXNet's and ONNX Runtime's KL search is not in NVIDIA's code;
    * the *last* candidate with the least KL wins and ``amax = bin_edges[i] = i * amax / 2048``.

    The one deviation: a candidate whose Q is empty (all the mass beyond it) counts as inf, where
    the reference's 0/0 gives NaN and ``np.argmin`` then picks it.
    """
    _require_data(hist, "entropy")
    bits = _check_int(num_bits, "num_bits", 2, 16)
    levels = 1 << (bits - 1)
    first = _check_int(start_bin, "start_bin", 1)
    step = _check_int(stride, "stride", 1)
    if hist.amax == 0.0:
        return MIN_AMAX
    bins, width = hist.resampled(ENTROPY_NUM_BINS)
    if first > bins.size:
        raise QuantizationError(f"invalid calibration parameter start_bin={start_bin!r}",
                                f"use an integer <= {bins.size}, the number of histogram bins")
    bins[0] = bins[1]
    candidates = np.arange(first, bins.size + 1, step)
    divergences = _kl_divergences(bins, candidates, levels)
    best = int(candidates[candidates.size - 1 - int(np.argmin(divergences[::-1]))])
    amax = best * width
    logger.debug("%s: entropy threshold bin %d of %d -> amax %g (max |x| %g)", _label(hist), best, bins.size,
                 amax, hist.amax)
    return max(amax, MIN_AMAX)


def _kl_divergences(h: npt.NDArray[np.float64], candidates: npt.NDArray[np.int64], levels: int) -> npt.NDArray[np.float64]:
    """KL(P_i || Q_i) of ``entropy`` for every candidate ``i``, from prefix sums (no loop over bins).

    With p = P / T (T = total), q = Q / S (S = sum of bins[:i], Q's total) and O = T - S outliers:
    ``T * KL = sum P log P - sum P log Q + T log(S / T)``, where ``sum P log P`` is a prefix sum of
    ``h log h`` plus the last bin's ``(h[i-1] + O) log(h[i-1] + O)``, and ``sum P log Q`` is, per
    level, ``mass * log(mass / non-empty bins)``, plus ``O log Q[i-1]``. Counts are scaled by 1/T
    first so that nothing large cancels.
    """
    total = float(h.sum())
    p = h / total
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    prefix = np.concatenate(([0.0], np.cumsum(p)))
    prefix_plogp = np.concatenate(([0.0], np.cumsum(plogp)))
    prefix_nz = np.concatenate(([0], np.cumsum(p > 0)))
    i = candidates.astype(np.int64)
    k = np.arange(levels + 1, dtype=np.int64)
    # level k holds bins [ceil(k*i/L), ceil((k+1)*i/L)) = {j < i : floor(j*L/i) == k}
    edges = -((-k[None, :] * i[:, None]) // levels)
    mass = prefix[edges[:, 1:]] - prefix[edges[:, :-1]]
    nonempty = prefix_nz[edges[:, 1:]] - prefix_nz[edges[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        level_q = np.where(nonempty > 0, mass / np.maximum(nonempty, 1), 1.0)
        sum_plogq = np.where(mass > 0, mass * np.log(np.where(mass > 0, level_q, 1.0)), 0.0).sum(axis=1)
        inside = prefix[i]
        outliers = np.maximum(1.0 - inside, 0.0)
        last = p[i - 1]
        last_p = last + outliers
        sum_plogp = prefix_plogp[i - 1] + np.where(last_p > 0, last_p * np.log(np.where(last_p > 0, last_p, 1.0)), 0.0)
        # the outliers sit in the last bin, whose Q is its level's mean (0 if the bin is empty)
        sum_plogq = sum_plogq + np.where(outliers > 0, outliers * np.log(np.where(last > 0, level_q[:, -1], 1.0)), 0.0)
        kl = sum_plogp - sum_plogq + np.log(inside)
    kl[(outliers > 0) & (last <= 0)] = np.inf  # P > 0 where Q = 0
    kl[~(inside > 0) | ~np.isfinite(kl)] = np.inf
    return np.maximum(kl, 0.0)


def mse(hist: StreamingHistogram, num_bits: int = 8, start_bin: int = 128) -> float:
    """The threshold minimizing the mean squared error of symmetric fake-quantization.

    Error of ``t``: sum over bins of ``count * (clip(round(c / s), -qmax, qmax) * s - c)**2`` with
    ``s = t / qmax``, ``qmax = 2**(num_bits-1) - 1`` and ``c`` the bin centre (the top bin's
    centre is taken over ``(edge, amax]``); exact zeros add no error. Candidates: the bin edges
    ``k * bin_width`` for ``k >= start_bin`` below the largest |x|, and the largest |x| itself.
    ``start_bin`` (default 128, as pytorch-quantization) keeps the step ``t / qmax`` at least one
    bin wide, where a bin's centre is a fair stand-in for its values.
    """
    _require_data(hist, "mse")
    bits = _check_int(num_bits, "num_bits", 2, 16)
    first = _check_int(start_bin, "start_bin", 1)
    qmax = (1 << (bits - 1)) - 1
    amax = hist.amax
    if amax == 0.0:
        return MIN_AMAX
    hist = _at_most(hist, ENTROPY_NUM_BINS)
    counts = hist.counts
    w = hist.bin_width
    nz = np.flatnonzero(counts)
    lower = nz * w
    centres = (lower + np.minimum(lower + w, amax)) / 2.0
    weights = counts[nz].astype(np.float64)
    occupied = int(nz[-1]) + 1
    candidates = np.append(np.arange(first, occupied, dtype=np.float64) * w, amax)
    errors = np.empty(candidates.size, dtype=np.float64)
    for b0 in range(0, candidates.size, _MSE_BLOCK):
        step = candidates[b0 : b0 + _MSE_BLOCK, None] / qmax
        fake = np.minimum(np.rint(centres[None, :] / step), qmax) * step
        errors[b0 : b0 + step.shape[0]] = np.square(fake - centres[None, :]) @ weights
    best = float(candidates[int(np.argmin(errors))])
    logger.debug("%s: mse threshold %g (max |x| %g)", _label(hist), best, amax)
    return max(best, MIN_AMAX)


def _at_most(hist: StreamingHistogram, num_bins: int) -> StreamingHistogram:
    """``hist`` coarsened (exactly) to ``num_bins`` bins when it is finer by a power of two."""
    factor = hist.num_bins // num_bins
    if factor > 1 and factor * num_bins == hist.num_bins and not factor & (factor - 1):
        return hist.coarsened(num_bins)
    return hist


# -- asymmetric ranges (uint8 with a zero point) -------------------------------------------------------

_RANGE_LEVELS = 255
_RANGE_CANDIDATES = 64  # step sizes per pass; each pass narrows to the best one's neighbours
_RANGE_PASSES = 3


def minmax_range(hist: StreamingHistogram) -> tuple[float, float]:
    """``[min(min, 0), max(max, 0)]``: ONNX Runtime's MinMax range (0 must be representable)."""
    _require_data(hist, "minmax")
    return min(hist.min, 0.0), max(hist.max, 0.0)


def _side_error(centres: np.ndarray, weights: np.ndarray, steps: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Squared error of one side (values ``centres`` >= 0 with ``weights``) for each step ``steps[i]`` and
    clip limit ``limits[i, j]``: rounding to the step's grid below the limit, clipping to it above."""
    rounded = np.rint(centres[None, :] / steps[:, None]) * steps[:, None]
    err = weights[None, :] * np.square(rounded - centres[None, :])
    below = np.concatenate([np.zeros((steps.size, 1)), np.cumsum(err, axis=1)], axis=1)  # error of bins [0, k)
    s0 = np.concatenate([np.cumsum(weights[::-1])[::-1], [0.0]])  # suffix sums over bins [k, n)
    s1 = np.concatenate([np.cumsum((weights * centres)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((weights * centres**2)[::-1])[::-1], [0.0]])
    k = np.searchsorted(centres, limits, side="right")  # bins whose centre is within the limit
    rows = np.arange(steps.size)[:, None]
    return below[rows, k] + s2[k] - 2 * limits * s1[k] + limits**2 * s0[k]


def mse_range(hist: StreamingHistogram, start_bin: int = 128) -> tuple[float, float]:
    """The uint8 range ``(-z s, (255 - z) s)`` with the least mean squared fake-quantization error.

    For a step ``s`` every zero point ``z`` puts the same grid under the data (0 is a grid point), so
    the error splits into the negative side clipped at ``z s`` and the positive side clipped at
    ``(255 - z) s``: both are prefix/suffix sums over the bins, and all 256 zero points are tried at
    once. Steps: ``_RANGE_CANDIDATES`` evenly spaced ranges from ``start_bin`` bins to ``max - min``,
    then as many between the best one's neighbours, ``_RANGE_PASSES`` times. Bins stand for their centres, as in ``mse``; exact
    zeros add no error.
    """
    _require_data(hist, "mse")
    first = _check_int(start_bin, "start_bin", 1)
    neg = hist.neg_counts
    if neg is None:
        raise QuantizationError(f"the statistics of {_label(hist)} do not tell its negative values apart",
                                "calibrate again with this edge-resnet (saved statistics of format 1)")
    lo, hi = minmax_range(hist)
    if hi - lo == 0.0:
        return lo, hi
    h = _at_most(hist, ENTROPY_NUM_BINS)
    counts, neg = h.counts.astype(np.float64), h.neg_counts.astype(np.float64)  # type: ignore[union-attr]
    w = h.bin_width
    lower = np.arange(counts.size) * w
    sides = []
    for weights, top in ((neg, -lo), (counts - neg, hi)):
        nz = np.flatnonzero(weights)
        centres = (lower[nz] + np.minimum(lower[nz] + w, top)) / 2.0
        sides.append((centres, weights[nz]))
    z = np.arange(_RANGE_LEVELS + 1, dtype=np.float64)

    def best_of(ranges: np.ndarray) -> tuple[float, float, int, int]:
        steps = ranges / _RANGE_LEVELS
        errors = (_side_error(*sides[0], steps, steps[:, None] * z[None, :])
                  + _side_error(*sides[1], steps, steps[:, None] * (_RANGE_LEVELS - z)[None, :]))
        i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
        return float(errors[i, j]), float(steps[i]), int(j), int(i)

    full = hi - lo
    ranges = np.linspace(min(first * w, full), full, _RANGE_CANDIDATES)
    best = (math.inf, 0.0, 0)
    for _ in range(_RANGE_PASSES):
        err, step, zp, i = best_of(ranges)
        best = min(best, (err, step, zp))
        ranges = np.linspace(ranges[max(i - 1, 0)], ranges[min(i + 1, ranges.size - 1)], _RANGE_CANDIDATES)
    _, step, zp = best
    logger.debug("%s: mse range [%g, %g] (min %g, max %g)", _label(hist), -zp * step, (_RANGE_LEVELS - zp) * step, lo, hi)
    return -zp * step, (_RANGE_LEVELS - zp) * step


RANGE_CALIBRATORS: dict[CalibrationMethod, Callable[..., tuple[float, float]]] = {
    CalibrationMethod.MINMAX: minmax_range,
    CalibrationMethod.MSE: mse_range,
}
"""Methods that give asymmetric ranges; the others quantize every tensor symmetrically."""


# -- registry ----------------------------------------------------------------------------------------

Calibrator = Callable[..., float]

CALIBRATORS: dict[CalibrationMethod, Calibrator] = {
    CalibrationMethod.MINMAX: minmax,
    CalibrationMethod.PERCENTILE: percentile,
    CalibrationMethod.ENTROPY: entropy,
    CalibrationMethod.MSE: mse,
}


def calibrator_params(method: CalibrationMethod | str) -> dict[str, object]:
    """The parameters a method takes, with their defaults."""
    fn = CALIBRATORS[_parse_method(method)]
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop `hist`
    return {p.name: p.default for p in params}


def _parse_method(method: CalibrationMethod | str) -> CalibrationMethod:
    if isinstance(method, CalibrationMethod):
        return method
    valid = ", ".join(m.value for m in CalibrationMethod)
    if isinstance(method, str):
        try:
            return CalibrationMethod(method.strip().lower())
        except ValueError:
            pass
    raise QuantizationError(f"unknown calibration method {method!r}", f"use one of: {valid}")


def compute_amax(hist: StreamingHistogram, method: CalibrationMethod | str, **params: object) -> float:
    """amax of ``hist`` by ``method`` (a CalibrationMethod or its name), with that method's params."""
    m = _parse_method(method)
    accepted = calibrator_params(m)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no parameters"
        raise QuantizationError(
            f"unknown parameter(s) {', '.join(unknown)} for calibration method {m.value!r}",
            f"{m.value} takes: {takes}",
        )
    amax = CALIBRATORS[m](hist, **params)
    if not (math.isfinite(amax) and amax > 0.0):  # every calibrator guarantees this; keep it loud
        raise QuantizationError(f"{m.value} calibration of {_label(hist)} gave amax={amax}")
    return amax
