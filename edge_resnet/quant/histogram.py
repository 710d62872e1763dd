"""Streaming histogram of |x| for symmetric calibration, with memory independent of the batch count.

Design (why it is exact and deterministic):

* Bins are right-closed: bin ``k`` counts the values with ``k*w < |x| <= (k+1)*w``. Exact zeros are
  counted apart (``zero_count``): they quantize exactly at any scale, and a ReLU output is often half
  zeros, a spike the entropy calibrator should be able to leave out.
* The bin width ``w`` is always a power of two: the smallest ``2**e`` with ``amax <= num_bins * w``,
  where ``amax`` is the largest |x| seen so far. So the histogram spans more than half of its bins
  (``amax > num_bins * w / 2``), and ``|x| / w`` is a multiplication by a power of two, exact in
  float32: the bin of a value never depends on rounding.
* The negative values' share of each bin is kept too (``neg_counts``), so a tensor's two sides can
  be told apart for asymmetric (uint8, zero point != 128) quantizers; it costs a second binning of
  the negative values only, in batches that have any.
* When a batch exceeds the range, the width doubles (as often as needed) by summing adjacent bin
  pairs; the old edges are a subset of the new ones, so old counts stay exact. Because the width is
  a function of the running ``amax`` only, any split of the same data into batches, in any order,
  and any merge of partial histograms give identical arrays to a single pass over all the data.

Cost: one min/max pass over the batch, then a cache-sized chunked loop of abs, scale, ceil, cast to
an index and ``np.bincount``; faster than ONNX Runtime's HistogramCollector (figures in
benchmarks/README.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_resnet.errors import QuantizationError

logger = logging.getLogger(__name__)

DEFAULT_NUM_BINS = 2048  # as TensorRT's entropy calibrator
MIN_NUM_BINS = 16
# Calibration collects 8x finer than the 2048 bins the searches work on: the analysis histogram over
# [0, amax] (``resampled``) then splits at most one fine bin, 1/8 to 1/4 of an analysis bin, at each
# of its edges (see ``resampled``).
STATS_NUM_BINS = 8 * DEFAULT_NUM_BINS
FORMAT_VERSION = 2  # of to_arrays(); bump when the layout changes (2: neg_counts)
_READS_VERSIONS = (1, 2)  # version 1 has no neg_counts: its histograms cannot give asymmetric ranges

# Values per chunk of the binning loop: the float and index buffers (64 Ki x (4 + 8) bytes) stay in
# the L2 cache, which is faster than whole-array temporaries on large activations (benchmarks/README.md).
_CHUNK = 1 << 16

# The scale 2**-e must be a finite float32: -e <= 127. Below that (amax < ~2**-116) we scale in
# float64 instead.
_MAX_FLOAT32_SCALE_EXPONENT = 127


def _exponent_for(amax: float, num_bins: int) -> int:
    """Smallest ``e`` with ``amax <= num_bins * 2**e`` (``amax > 0``), computed exactly."""
    e = math.frexp(amax / num_bins)[1]
    while amax > math.ldexp(num_bins, e):
        e += 1
    while amax <= math.ldexp(num_bins, e - 1):
        e -= 1
    return e


def _check_bins(num_bins: object) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise QuantizationError(f"invalid histogram size num_bins={num_bins!r}", "use a positive integer")
    return int(num_bins)


def _coarsen(counts: npt.NDArray[np.int64], doublings: int) -> npt.NDArray[np.int64]:
    """Re-bin ``counts`` to a width ``2**doublings`` times larger: old bin k goes to new bin k >> d."""
    if doublings <= 0:
        return counts
    n = counts.size
    out = np.zeros(n, dtype=np.int64)
    if doublings >= n.bit_length():  # 2**d > n: every old bin lands in new bin 0
        out[0] = counts.sum()
        return out
    factor = 1 << doublings
    padded = np.zeros(-(-n // factor) * factor, dtype=np.int64)
    padded[:n] = counts
    merged = padded.reshape(-1, factor).sum(axis=1)
    out[: merged.size] = merged
    return out


class StreamingHistogram:
    """Histogram of |x| over ``[0, num_bins * bin_width]`` plus exact signed min, max and counts.

    ``update()`` absorbs one batch; ``merge()`` adds another histogram (from another worker);
    ``to_arrays()``/``from_arrays()`` round-trip through plain numpy arrays (``np.savez``).
    Values are binned in float32 (float64 and integer inputs are converted first).
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, name: str | None = None) -> None:
        if (
            isinstance(num_bins, bool)
            or not isinstance(num_bins, int | np.integer)
            or num_bins < MIN_NUM_BINS
        ):
            raise QuantizationError(
                f"invalid histogram size num_bins={num_bins!r}",
                f"use an integer >= {MIN_NUM_BINS} (TensorRT uses {DEFAULT_NUM_BINS})",
            )
        self._num_bins = int(num_bins)
        self.name = name
        self._counts = np.zeros(self._num_bins, dtype=np.int64)
        # the negative values' share of each bin of |x|: the positive side is counts - neg_counts (None: not
        # known, a histogram saved by format version 1)
        self._neg_counts: npt.NDArray[np.int64] | None = np.zeros(self._num_bins, dtype=np.int64)
        self._zero_count = 0
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._exponent: int | None = None  # bin_width = 2**exponent; None until a non-zero value is seen

    # -- read-only state -------------------------------------------------------------------------

    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """A copy: ``counts[k]`` = number of values with ``k*w < |x| <= (k+1)*w`` (zeros apart)."""
        return self._counts.copy()

    @property
    def neg_counts(self) -> npt.NDArray[np.int64] | None:
        """A copy: of ``counts[k]``, the values that were negative (None when not recorded)."""
        return None if self._neg_counts is None else self._neg_counts.copy()

    @property
    def zero_count(self) -> int:
        """Number of values that were exactly 0 (not included in ``counts``)."""
        return self._zero_count

    @property
    def count(self) -> int:
        """Number of values seen: ``zero_count + counts.sum()``."""
        return self._count

    @property
    def min(self) -> float:
        """Smallest signed value seen (``inf`` while empty)."""
        return self._min

    @property
    def max(self) -> float:
        """Largest signed value seen (``-inf`` while empty)."""
        return self._max

    @property
    def amax(self) -> float:
        """Largest |x| seen (0.0 while empty)."""
        return max(-self._min, self._max, 0.0)

    @property
    def bin_width(self) -> float:
        """A power of two; 0.0 until a non-zero value has been seen."""
        return 0.0 if self._exponent is None else math.ldexp(1.0, self._exponent)

    @property
    def is_empty(self) -> bool:
        return self._count == 0

    def edges(self) -> npt.NDArray[np.float64]:
        """The ``num_bins + 1`` bin edges ``k * bin_width`` (all 0 before the range is set)."""
        return np.arange(self._num_bins + 1, dtype=np.float64) * self.bin_width

    def abs_histogram(self, include_zeros: bool = True) -> npt.NDArray[np.int64]:
        """Counts per bin of |x|, with the exact zeros folded into bin 0 unless ``include_zeros=False``."""
        out = self._counts.copy()
        if include_zeros:
            out[0] += self._zero_count
        return out

    def coarsened(self, num_bins: int) -> StreamingHistogram:
        """This histogram with ``num_bins`` bins (``num_bins`` divides ``self.num_bins`` by a power of
        two), each summing adjacent bins: exact, the same as collecting at ``num_bins`` directly."""
        factor = self._num_bins // num_bins if num_bins > 0 else 0
        if factor < 1 or factor * num_bins != self._num_bins or factor & (factor - 1):
            raise QuantizationError(
                f"cannot coarsen a histogram of {self._num_bins} bins to {num_bins}",
                "use a bin count that divides it by a power of two",
            )
        out = StreamingHistogram(num_bins, name=self.name)
        out._counts = self._counts.reshape(num_bins, factor).sum(axis=1)
        out._neg_counts = None if self._neg_counts is None else self._neg_counts.reshape(num_bins, factor).sum(axis=1)
        out._zero_count, out._count, out._min, out._max = self._zero_count, self._count, self._min, self._max
        if self._exponent is not None:
            out._exponent = self._exponent + factor.bit_length() - 1
        return out

    def resampled(self, num_bins: int = DEFAULT_NUM_BINS) -> tuple[npt.NDArray[np.int64], float]:
        """Counts of |x| in ``num_bins`` equal bins over ``[0, amax]``, zeros in bin 0, and their width.

        This is the histogram TensorRT's and ModelOpt's calibrators build (``torch.histc(|x|, 2048,
        0, amax)``), re-cut from the stored bins: a stored bin inside a new one goes to it whole; one
        that straddles a new edge (at most one edge: stored bins are narrower) is split in proportion
        to the overlap, rounded to whole values, its values taken uniform over the bin (the top one
        ending at amax). So a count is off by at most the part of the two straddling bins at its
        edges that lies on the wrong side (with ``STATS_NUM_BINS`` a stored bin is 1/8 to 1/4 of a
        new one), there is no aliasing comb from the two grids, and a lone value stays in one bin:
        the sparse tail, where the entropy search is decided, keeps its empty bins. An all-zero
        histogram gives every count in bin 0 and width 0.
        """
        n = _check_bins(num_bins)
        out = np.zeros(n, dtype=np.int64)
        amax = self.amax
        if amax == 0.0:
            out[0] = self._count
            return out, 0.0
        w = self.bin_width
        k = np.flatnonzero(self._counts)
        counts = self._counts[k]
        scale = n / amax
        lo_edge, hi_edge = k * w * scale, np.minimum((k + 1) * w, amax) * scale  # in units of new bins
        first = np.minimum(np.floor(lo_edge).astype(np.int64), n - 1)
        share = np.clip((np.minimum(hi_edge, first + 1) - lo_edge) / (hi_edge - lo_edge), 0.0, 1.0)
        in_first = np.rint(counts * share).astype(np.int64)
        np.add.at(out, first, in_first)
        np.add.at(out, np.minimum(first + 1, n - 1), counts - in_first)
        out[0] += self._zero_count
        return out, amax / n

    def _label(self) -> str:
        return f"tensor {self.name!r}" if self.name else "the tensor"

    # -- streaming -------------------------------------------------------------------------------

    def update(self, x: npt.ArrayLike) -> None:
        """Add every element of ``x`` (any shape). Empty arrays are ignored; NaN/inf raise."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise QuantizationError(
                f"{self._label()} has dtype {arr.dtype}, which cannot be calibrated",
                "pass a real-valued (float) activation array",
            )
        if arr.size == 0:
            logger.debug("%s: ignoring an empty batch", self._label())
            return
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        flat = arr.reshape(-1)

        lo = float(flat.min())  # min/max propagate NaN, so they double as the finiteness check
        hi = float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise QuantizationError(
                f"{self._label()} contains NaN or infinite values (batch min={lo}, max={hi})",
                "check the model and the calibration inputs (preprocessing, fp16 overflow) for this tensor",
            )
        batch_amax = max(-lo, hi)
        if batch_amax == 0.0:
            zeros, binned = flat.size, None
        else:
            exponent = _exponent_for(batch_amax, self._num_bins)
            if self._exponent is not None:
                exponent = max(exponent, self._exponent)
            signed = lo < 0 and self._neg_counts is not None
            binned = self._bin(flat, exponent, signed)
            n = self._num_bins
            zeros = int(binned[n] if signed else binned[0])
            self._grow_to(exponent)
            if signed:
                negative = binned[n - 1::-1]  # bin n - k holds the negative values of |x| bin k (k = 1..n)
                self._counts += binned[n + 1:] + negative
                self._neg_counts += negative  # type: ignore[operator]
            else:
                self._counts += binned[1:]
        # state changes only once the batch is binned: an exception above leaves the histogram as it was
        self._zero_count += zeros
        self._count += flat.size
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)

    def _grow_to(self, exponent: int) -> None:
        """Set the bin width to ``2**exponent`` (never smaller than now), merging bins as needed."""
        if self._exponent is None:
            self._exponent = exponent
        elif exponent > self._exponent:
            logger.debug(
                "%s: range grows from %g to %g (%d doublings)",
                self._label(),
                self._num_bins * self.bin_width,
                math.ldexp(self._num_bins, exponent),
                exponent - self._exponent,
            )
            self._counts = _coarsen(self._counts, exponent - self._exponent)
            if self._neg_counts is not None:
                self._neg_counts = _coarsen(self._neg_counts, exponent - self._exponent)
            self._exponent = exponent

    def _bin(self, flat: npt.NDArray[np.float32], exponent: int, signed: bool = False) -> npt.NDArray[np.int64]:
        """Counts of ``ceil(|x| / 2**exponent)`` in ``0..num_bins`` (index 0 = exact zeros); with
        ``signed``, of the signed index ``n + copysign(ceil(|x| / 2**exponent), x)`` in ``0..2n`` (n =
        ``num_bins``; index n = exact zeros, n - k = the negative values of bin k): both sides in one
        bincount, two more operations per value.

        The scaling is exact (power of two), so the index is exact, except that with ``w > 1`` a
        subnormal |x| can underflow to 0; those chunks count their true zeros to put it back.
        """
        n = self._num_bins
        dtype = np.float32 if -exponent <= _MAX_FLOAT32_SCALE_EXPONENT else np.float64
        may_underflow = exponent > 0  # |x| * 2**-e >= |x| > 0 when e <= 0
        inv_width = dtype(math.ldexp(1.0, -exponent))
        size = min(_CHUNK, flat.size)
        fbuf = np.empty(size, dtype=dtype)
        ibuf = np.empty(size, dtype=np.intp)
        nbins, zero = (2 * n + 1, n) if signed else (n + 1, 0)
        total = np.zeros(nbins, dtype=np.int64)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start : start + _CHUNK]
            f = fbuf[: chunk.size]
            idx = ibuf[: chunk.size]
            np.abs(chunk, out=f)
            np.multiply(f, inv_width, out=f)
            np.ceil(f, out=f)
            if signed:
                np.copysign(f, chunk, out=f)  # an underflowed negative value gives -0.0: index n, fixed below
                np.add(f, dtype(n), out=f)
            np.copyto(idx, f, casting="unsafe")
            binc = np.bincount(idx, minlength=nbins)
            if binc.size != nbins:  # cannot happen while amax <= n * w; guard against silent loss
                raise RuntimeError(f"histogram index out of range ({binc.size - 1 - zero} > {n})")
            if may_underflow and binc[zero]:
                zeros = chunk.size - np.count_nonzero(chunk)
                lost = int(binc[zero]) - zeros  # non-zero values that underflowed to index `zero`
                if signed and lost:
                    negative = int(np.count_nonzero((chunk < 0) & (np.abs(chunk) * inv_width == 0)))
                    binc[zero - 1] += negative
                    lost -= negative
                binc[zero + 1] += lost
                binc[zero] = zeros
            total += binc
        return total

    # -- combining and saving --------------------------------------------------------------------

    def merge(self, other: StreamingHistogram) -> StreamingHistogram:
        """Add ``other``'s data into this histogram (in place) and return ``self``.

        The result is identical to one histogram that saw both streams.
        """
        if not isinstance(other, StreamingHistogram):
            raise QuantizationError(
                f"cannot merge {type(other).__name__} into the histogram of {self._label()}",
                "merge two StreamingHistogram objects",
            )
        if other._num_bins != self._num_bins:
            raise QuantizationError(
                f"cannot merge histograms of {self._label()} with {self._num_bins} and {other._num_bins} bins",
                "collect every partial histogram of a tensor with the same num_bins",
            )
        if other._exponent is not None:
            self._grow_to(other._exponent)
            assert self._exponent is not None
            self._counts = self._counts + _coarsen(other._counts, self._exponent - other._exponent)
            if self._neg_counts is not None and other._neg_counts is not None:
                self._neg_counts = self._neg_counts + _coarsen(other._neg_counts, self._exponent - other._exponent)
        if other._neg_counts is None:
            self._neg_counts = None
        self._zero_count += other._zero_count
        self._count += other._count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        return self

    def copy(self) -> StreamingHistogram:
        return StreamingHistogram.from_arrays(self.to_arrays())

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Plain numpy arrays (``np.savez(path, **hist.to_arrays())``); see ``from_arrays``."""
        return {
            "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
            "name": np.array("" if self.name is None else self.name, dtype=np.str_),
            "counts": self._counts.copy(),
            **({} if self._neg_counts is None else {"neg_counts": self._neg_counts.copy()}),
            "zero_count": np.array(self._zero_count, dtype=np.int64),
            "count": np.array(self._count, dtype=np.int64),
            "min": np.array(self._min, dtype=np.float64),
            "max": np.array(self._max, dtype=np.float64),
            "bin_width": np.array(self.bin_width, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike], name: str | None = None) -> StreamingHistogram:
        """Rebuild a histogram saved by ``to_arrays`` (e.g. an ``np.load``-ed .npz); checks consistency.

        ``name`` overrides the saved name.
        """

        def bad(what: str) -> QuantizationError:
            label = name or str(np.asarray(arrays.get("name", ""))) or "a tensor"
            return QuantizationError(
                f"saved histogram of {label!r} is invalid: {what}",
                "delete the saved calibration statistics and run calibration again",
            )

        required = ("format_version", "counts", "zero_count", "count", "min", "max", "bin_width")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        version = int(np.asarray(arrays["format_version"]))
        if version not in _READS_VERSIONS:
            raise bad(f"format version {version}, this edge-resnet reads versions "
                      f"{', '.join(map(str, _READS_VERSIONS))}")
        counts = np.asarray(arrays["counts"])
        if counts.ndim != 1 or counts.size < MIN_NUM_BINS or counts.dtype.kind not in "iu":
            raise bad(f"counts must be a 1-D integer array of >= {MIN_NUM_BINS} bins")
        if (counts < 0).any():
            raise bad("negative counts")
        zero_count = int(np.asarray(arrays["zero_count"]))
        count = int(np.asarray(arrays["count"]))
        lo = float(np.asarray(arrays["min"]))
        hi = float(np.asarray(arrays["max"]))
        width = float(np.asarray(arrays["bin_width"]))
        if zero_count < 0 or count != zero_count + int(counts.sum()):
            raise bad("count does not equal zero_count + counts.sum()")
        if math.isnan(lo) or math.isnan(hi):
            raise bad("NaN min or max")

        saved_name = str(np.asarray(arrays.get("name", "")))
        hist = cls(counts.size, name=name if name is not None else (saved_name or None))
        hist._counts = counts.astype(np.int64, copy=True)
        hist._neg_counts = None
        if "neg_counts" in arrays:
            neg = np.asarray(arrays["neg_counts"])
            if neg.shape != counts.shape or neg.dtype.kind not in "iu" or (neg < 0).any() or (neg > counts).any():
                raise bad("neg_counts must be integers between 0 and counts, one per bin")
            if lo >= 0 and neg.any():
                raise bad("negative values counted, but min >= 0")
            hist._neg_counts = neg.astype(np.int64, copy=True)
        elif version >= 2:
            raise bad("missing neg_counts")
        hist._zero_count, hist._count, hist._min, hist._max = zero_count, count, lo, hi
        if count == 0:
            if not (lo == math.inf and hi == -math.inf and width == 0.0):
                raise bad("an empty histogram must have min=inf, max=-inf, bin_width=0")
            return hist
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise bad(f"min={lo}, max={hi}")
        amax = hist.amax
        if amax == 0.0:
            if width != 0.0 or counts.any():
                raise bad("an all-zero histogram must have bin_width=0 and empty bins")
            return hist
        hist._exponent = _exponent_for(amax, counts.size)
        if width != hist.bin_width:
            raise bad(f"bin_width={width} is not the canonical {hist.bin_width} for amax={amax}")
        nonzero = np.flatnonzero(counts)
        if nonzero.size == 0 or nonzero[-1] * width >= amax:
            raise bad(f"bin counts do not agree with amax={amax}")
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamingHistogram):
            return NotImplemented
        return (
            self._num_bins == other._num_bins
            and self._exponent == other._exponent
            and self._zero_count == other._zero_count
            and self._count == other._count
            and self._min == other._min
            and self._max == other._max
            and np.array_equal(self._counts, other._counts)
            and (self._neg_counts is None) == (other._neg_counts is None)
            and (self._neg_counts is None or np.array_equal(self._neg_counts, other._neg_counts))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"StreamingHistogram(name={self.name!r}, num_bins={self._num_bins}, count={self._count}, "
            f"zero_count={self._zero_count}, min={self._min:g}, max={self._max:g}, bin_width={self.bin_width:g})"
        )
