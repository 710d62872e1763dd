"""Calibrators: pure functions ``(hist, **params) -> amax``, the clipping threshold of symmetric INT8.

The scale of a tensor is ``amax / 127``. Every calibrator returns a positive float: a tensor that was
all zeros (or whose threshold rounds to 0) gets ``MIN_AMAX`` (1e-8), so a scale is never 0 and never
divides by 0 downstream; such a tensor quantizes to all zeros whatever its scale.

* ``minmax``: the largest |x| seen.
* ``percentile``: the |x| below which ``percentile`` % of the values fall, interpolated in the bin.
* ``entropy``: TensorRT's KL-divergence search (IInt8EntropyCalibrator2; NVIDIA, "8-bit Inference
  with TensorRT", GTC 2017), vectorized over the candidates.
* ``mse``: the threshold with the least mean squared error of fake-quantization (clip and round).

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

# Smoothing of zero entries before KL(P||Q), in counts (not probabilities), as MXNet's and ONNX
# Runtime's `smooth_distribution`: zeros get eps, the non-zero entries give up the same total.
_KL_EPS = 1e-4
_ENTROPY_BLOCK = 128  # candidates per vectorized block: (block x num_bins) float64 temporaries
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


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise QuantizationError(f"invalid calibration parameter {name}={value!r}", "use True or False")
    return bool(value)


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


def entropy(
    hist: StreamingHistogram,
    num_bits: int = 8,
    start_bin: int | None = None,
    skip_zeros: bool = True,
) -> float:
    """TensorRT's entropy calibration: the threshold minimizing KL(P || Q).

    For each candidate ``i`` in ``[start_bin, last occupied bin + 1]``: P = the first ``i`` bins of
    the |x| histogram with the outliers (bins ``>= i``) added to bin ``i-1``; Q = bins ``[0, i)``
    (without outliers) merged into ``2**(num_bits-1)`` levels (bin ``j`` -> level
    ``floor(j * levels / i)``, as pytorch-quantization's ``np.digitize`` over ``linspace(0, i,
    levels + 1)``) and each level's mass spread evenly over the bins where P is non-zero. Both are
    smoothed (zeros -> 1e-4 counts) and normalized; the first ``i`` with the least KL gives
    ``amax = (i + 0.5) * bin_width`` (the GTC 2017 slides), capped at the largest |x| seen.

    Differences from the references, on purpose:

    * ``skip_zeros=True`` leaves exact zeros out of bin 0. They are exact at any scale, and a ReLU
      output's ~50 % zeros would be a spike in bin 0 that Q spreads over its whole level, which
      drags the threshold down. pytorch-quantization fights the same spike with ``bins[0] =
      bins[1]``. ``skip_zeros=False`` is the plain slide algorithm.
    * Candidates stop at the last occupied bin (plus one, i.e. no clipping) instead of always 2048:
      the histogram's width is a power of two, so between half and all of its bins are occupied,
      and candidates past the data would only re-test "no clipping" at a coarser merge.
    """
    _require_data(hist, "entropy")
    bits = _check_int(num_bits, "num_bits", 2, 16)
    levels = 1 << (bits - 1)
    first = levels if start_bin is None else _check_int(start_bin, "start_bin", levels)
    skip = _check_bool(skip_zeros, "skip_zeros")
    amax = hist.amax
    if amax == 0.0:
        return MIN_AMAX
    counts = hist.abs_histogram(include_zeros=not skip)
    occupied = int(np.flatnonzero(counts)[-1]) + 1  # amax > 0, so some bin is non-zero
    if occupied < first:
        logger.debug(
            "%s: only %d histogram bins are occupied (< start_bin=%d): entropy keeps the full range",
            _label(hist),
            occupied,
            first,
        )
        return max(amax, MIN_AMAX)
    candidates = np.arange(first, occupied + 1)
    divergences = _kl_divergences(counts[:occupied], candidates, levels)
    best = int(candidates[int(np.argmin(divergences))])
    amax_out = min((best + 0.5) * hist.bin_width, amax)
    logger.debug(
        "%s: entropy threshold bin %d of %d occupied -> amax %g (max |x| %g)",
        _label(hist),
        best,
        occupied,
        amax_out,
        amax,
    )
    return max(amax_out, MIN_AMAX)


def _kl_divergences(
    hist: npt.NDArray[np.int64], candidates: npt.NDArray[np.int64], levels: int
) -> npt.NDArray[np.float64]:
    """KL(P_i || Q_i) for every candidate ``i`` (see ``entropy``); inf where Q_i is undefined.

    Blocks of candidates are processed as (block, width) matrices masked to ``j < i``; the level
    sums and the non-zero counts per level come from prefix sums, so nothing loops over bins.
    """
    h = hist.astype(np.int64)
    prefix = np.concatenate(([0], np.cumsum(h)))  # prefix[x] = sum of h[:x], exact
    prefix_nz = np.concatenate(([0], np.cumsum(h > 0)))
    total = int(prefix[-1])
    hf = h.astype(np.float64)
    k = np.arange(levels + 1)
    out = np.empty(candidates.size, dtype=np.float64)
    for b0 in range(0, candidates.size, _ENTROPY_BLOCK):
        ib = candidates[b0 : b0 + _ENTROPY_BLOCK]
        rows = np.arange(ib.size)
        width = int(ib[-1])
        j = np.arange(width)
        valid = j[None, :] < ib[:, None]
        lengths = ib.astype(np.float64)

        # P: the first i bins, outliers added to the last one
        p = np.where(valid, hf[None, :width], 0.0)
        outliers = total - prefix[ib]
        p[rows, ib - 1] += outliers
        p_nonzero = p > 0

        # Q: level k holds bins [ceil(k*i/L), ceil((k+1)*i/L)) = {j : floor(j*L/i) == k}
        starts = (k[None, :] * ib[:, None] + levels - 1) // levels
        level_mass = (prefix[starts[:, 1:]] - prefix[starts[:, :-1]]).astype(np.float64)
        level_nz = prefix_nz[starts[:, 1:]] - prefix_nz[starts[:, :-1]]
        # the last bin of P is non-zero when it only holds outliers; it shares the last level's mass
        level_nz[:, -1] += (h[ib - 1] == 0) & (outliers > 0)
        per_bin = level_mass / np.maximum(level_nz, 1)
        level_of = np.minimum((j[None, :] * levels) // ib[:, None], levels - 1)
        q = np.where(p_nonzero, np.take_along_axis(per_bin, level_of, axis=1), 0.0)

        p_s, p_ok = _smooth(p, valid, lengths)
        q_s, q_ok = _smooth(q, valid, lengths)
        p_n = p_s / p_s.sum(axis=1, keepdims=True)
        q_n = q_s / q_s.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(valid, p_n * np.log(p_n / q_n), 0.0)
        kl = terms.sum(axis=1)
        kl[~(p_ok & q_ok) | ~np.isfinite(kl)] = np.inf
        out[b0 : b0 + ib.size] = kl
    return out


def _smooth(
    x: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], lengths: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per row: zeros (inside ``valid``) -> eps, non-zeros -> x - eps * n_zeros / n_nonzeros.

    The second array is False for rows that cannot be smoothed (all zero, or a value pushed <= 0).
    """
    nonzero = x > 0
    n_nonzero = nonzero.sum(axis=1)
    shift = _KL_EPS * (lengths - n_nonzero) / np.maximum(n_nonzero, 1)
    smoothed = np.where(nonzero, x - shift[:, None], np.where(valid, _KL_EPS, 0.0))
    ok = (n_nonzero > 0) & ~(nonzero & (smoothed <= 0)).any(axis=1)
    return smoothed, ok


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
