import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_resnet.errors import QuantizationError
from edge_resnet.quant.histogram import DEFAULT_NUM_BINS, StreamingHistogram


def _hist(
    *batches: np.ndarray, num_bins: int = DEFAULT_NUM_BINS, name: str | None = None
) -> StreamingHistogram:
    h = StreamingHistogram(num_bins, name=name)
    for b in batches:
        h.update(b)
    return h


def _reference(values: np.ndarray, width: float, num_bins: int) -> tuple[np.ndarray, int]:
    """Independent float64 binning: bin k holds k*w < |x| <= (k+1)*w, exact zeros apart."""
    a = np.abs(np.asarray(values, dtype=np.float64).ravel())
    edges = np.arange(num_bins + 1, dtype=np.float64) * width
    idx = np.searchsorted(edges, a, side="left")  # 0 for |x| == 0, k+1 for k*w < |x| <= (k+1)*w
    assert idx.max(initial=0) <= num_bins
    full = np.bincount(idx, minlength=num_bins + 1)
    return full[1:], int(full[0])


def _batches(seed: int, n: int = 12) -> list[np.ndarray]:
    """Batches whose range keeps growing (forces many doublings), with zeros and negatives."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = (rng.standard_normal(rng.integers(500, 3000)) * (1.7**i) * 1e-3).astype(np.float32)
        b[rng.random(b.size) < 0.2] = 0.0
        out.append(b)
    return out


def test_one_batch_matches_reference_binning() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 50)).astype(np.float32)
    x[0, 0, :7] = 0.0
    h = _hist(x)
    w = h.bin_width
    assert w == 2.0 ** round(math.log2(w))  # a power of two
    assert h.num_bins * w / 2 < h.amax <= h.num_bins * w  # more than half the bins span data
    counts, zeros = _reference(x, w, h.num_bins)
    np.testing.assert_array_equal(h.counts, counts)
    np.testing.assert_array_equal(h.neg_counts, _reference(x[x < 0], w, h.num_bins)[0])  # the negative side
    assert h.zero_count == zeros == 7
    assert h.count == x.size
    assert h.min == float(x.min()) and h.max == float(x.max())
    assert h.amax == float(np.abs(x).max())


def test_value_exactly_at_the_top_edge_lands_in_the_last_bin() -> None:
    h = _hist(np.array([-2048.0, 1.0, 0.5], dtype=np.float32))  # amax = 2048 * w with w = 1
    assert h.bin_width == 1.0
    assert h.counts[-1] == 1 and h.counts[0] == 2 and h.counts.sum() == 3


def test_subnormal_values_are_not_counted_as_zeros() -> None:
    tiny = np.float32(1e-44)  # subnormal: |x| / w underflows to 0 in float32 when w = 2**10
    h = _hist(np.array([tiny, -tiny, 0.0, 1e6], dtype=np.float32))
    assert h.bin_width == 2.0**9
    assert h.zero_count == 1 and h.counts[0] == 2 and h.counts[math.ceil(1e6 / 2**9) - 1] == 1
    assert h.neg_counts[0] == 1 and h.neg_counts.sum() == 1  # -tiny: negative, in bin 0, not a zero
    smallest = _hist(np.array([2.0**-149], dtype=np.float32))  # w = 2**-160: scaled in float64
    assert smallest.bin_width == 2.0**-160 and smallest.counts[-1] == 1 and smallest.zero_count == 0


def test_streaming_equals_one_shot_over_the_concatenation() -> None:
    batches = _batches(1)
    streamed = _hist(*batches)
    one_shot = _hist(np.concatenate(batches))
    assert streamed == one_shot
    for key, value in streamed.to_arrays().items():
        np.testing.assert_array_equal(value, one_shot.to_arrays()[key])
    counts, zeros = _reference(np.concatenate(batches), streamed.bin_width, streamed.num_bins)
    np.testing.assert_array_equal(streamed.counts, counts)
    assert streamed.zero_count == zeros
    assert streamed.count == sum(b.size for b in batches)


def test_growth_keeps_counts_exact() -> None:
    rng = np.random.default_rng(2)
    small = rng.uniform(-1e-3, 1e-3, 5000).astype(np.float32)
    big = rng.uniform(-300.0, 300.0, 5000).astype(np.float32)
    h = _hist(small)
    width_before = h.bin_width
    h.update(big)
    assert h.bin_width / width_before >= 2**18  # many doublings in one update
    counts, zeros = _reference(np.concatenate([small, big]), h.bin_width, h.num_bins)
    np.testing.assert_array_equal(h.counts, counts)
    assert h.zero_count == zeros
    assert h.counts.sum() + h.zero_count == h.count == 10000


def test_merge_equals_single_stream() -> None:
    batches = _batches(3)
    single = _hist(*batches)
    a = _hist(*batches[::2])  # two workers see interleaved batches, with different ranges
    b = _hist(*batches[1::2])
    assert a.bin_width != b.bin_width
    assert a.copy().merge(b) == single
    assert b.copy().merge(a) == single
    assert StreamingHistogram().merge(single) == single  # into an empty histogram
    assert single.copy().merge(StreamingHistogram()) == single


def test_merge_rejects_other_bin_counts() -> None:
    with pytest.raises(QuantizationError, match="1024 and 2048 bins"):
        _hist(np.ones(3), num_bins=1024).merge(_hist(np.ones(3)))


def test_deterministic_bit_for_bit() -> None:
    runs = [_hist(*_batches(4)).to_arrays() for _ in range(2)]
    for key in runs[0]:
        assert runs[0][key].tobytes() == runs[1][key].tobytes(), key


def test_memory_does_not_grow_with_batches() -> None:
    rng = np.random.default_rng(5)
    h = _hist(rng.standard_normal(1000).astype(np.float32))
    size_one = sum(a.nbytes for a in h.to_arrays().values())
    for i in range(300):
        h.update(rng.standard_normal(1000).astype(np.float32) * (1 + i))
    assert sum(a.nbytes for a in h.to_arrays().values()) == size_one
    assert h.counts.shape == (DEFAULT_NUM_BINS,)
    assert h.count == 301 * 1000


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_and_name_the_tensor(bad: float) -> None:
    h = _hist(np.ones(4, dtype=np.float32), name="layer1.0.conv1_out")
    x = np.zeros(100, dtype=np.float32)
    x[57] = bad
    with pytest.raises(QuantizationError, match=r"'layer1\.0\.conv1_out' contains NaN or infinite") as info:
        h.update(x)
    assert info.value.fix
    assert h.count == 4  # the bad batch left no trace


def test_empty_and_all_zero_batches() -> None:
    h = StreamingHistogram()
    h.update(np.zeros((0, 3), dtype=np.float32))
    assert h.is_empty and h.count == 0 and h.bin_width == 0.0 and h.amax == 0.0
    h.update(np.zeros(10, dtype=np.float32))
    assert h.count == h.zero_count == 10 and h.bin_width == 0.0 and h.amax == 0.0
    h.update(np.array([0.0, 3.0, -1.0], dtype=np.float32))
    assert h.zero_count == 11 and h.count == 13 and h.counts.sum() == 2
    assert h == _hist(np.zeros(10), np.array([0.0, 3.0, -1.0]))
    np.testing.assert_array_equal(h.abs_histogram()[0], h.counts[0] + 11)


def test_input_dtypes_and_layouts() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((30, 40)).astype(np.float32)
    ref = _hist(x)
    assert _hist(x.T) == _hist(np.ascontiguousarray(x.T)) == ref  # a non-contiguous view
    assert _hist(x.astype(np.float16)) == _hist(x.astype(np.float16).astype(np.float32))
    assert _hist(x.astype(np.float64)) == ref  # exactly representable, same bins
    assert _hist(np.arange(-5, 6)).counts.sum() == 10
    with pytest.raises(QuantizationError, match="complex"):
        StreamingHistogram().update(np.ones(3, dtype=np.complex64))


@pytest.mark.parametrize("num_bins", [0, 8, 2.5, True])
def test_bad_num_bins(num_bins: object) -> None:
    with pytest.raises(QuantizationError, match="num_bins"):
        StreamingHistogram(num_bins)  # type: ignore[arg-type]


def test_npz_round_trip(tmp_path) -> None:
    h = _hist(*_batches(7), name="stem.relu")
    np.savez(tmp_path / "h.npz", **h.to_arrays())
    with np.load(tmp_path / "h.npz", allow_pickle=False) as data:
        back = StreamingHistogram.from_arrays(data)
    assert back == h and back.name == "stem.relu"
    back.update(np.float32([1e4]))  # a loaded histogram keeps streaming
    h.update(np.float32([1e4]))
    assert back == h
    for empty in (StreamingHistogram(), _hist(np.zeros(5))):
        assert StreamingHistogram.from_arrays(empty.to_arrays()) == empty


def test_statistics_saved_by_format_1_still_load_without_the_negative_side() -> None:
    """Format 1 had no neg_counts: such a histogram loads, streams and merges, with ``neg_counts`` None
    (asymmetric ranges then fall back to symmetric quantizers, see quant.ptq.signed_ranges)."""
    h = _hist(*_batches(3))
    arrays = h.to_arrays()
    del arrays["neg_counts"]
    arrays["format_version"] = np.array(1)
    old = StreamingHistogram.from_arrays(arrays)
    assert old.neg_counts is None and np.array_equal(old.counts, h.counts)
    old.update(np.float32([-1.0, 2.0]))
    assert old.neg_counts is None and old.count == h.count + 2
    assert _hist(*_batches(4)).merge(old).neg_counts is None

@pytest.mark.parametrize(
    "corrupt",
    [
        lambda a: a.pop("counts"),
        lambda a: a.__setitem__("count", a["count"] + 1),
        lambda a: a.__setitem__("bin_width", a["bin_width"] * 2),
        lambda a: a.__setitem__("format_version", np.array(99)),
        lambda a: a.__setitem__("max", np.array(np.nan)),
        lambda a: a.pop("neg_counts"),
        lambda a: a.__setitem__("neg_counts", a["counts"] + 1),
    ],
)
def test_from_arrays_rejects_corrupt_data(corrupt) -> None:
    arrays = _hist(*_batches(8)).to_arrays()
    corrupt(arrays)
    with pytest.raises(QuantizationError, match="invalid"):
        StreamingHistogram.from_arrays(arrays)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.one_of(
            st.just(0.0),
            st.floats(-1e6, 1e6, width=32),
            st.floats(
                -(2.0**-120), 2.0**-120, width=32, allow_subnormal=True
            ),  # tiny next to large magnitudes
        ),
        min_size=1,
        max_size=300,
    ),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    num_bins=st.sampled_from([16, 100, 2048]),
)
def test_streaming_equals_one_shot_for_any_split(values: list[float], cuts: list[int], num_bins: int) -> None:
    x = np.array(values, dtype=np.float32)
    parts = np.split(x, sorted(c % (x.size + 1) for c in cuts))
    one_shot = _hist(x, num_bins=num_bins)
    assert _hist(*parts, num_bins=num_bins) == one_shot
    assert _hist(*parts[::-1], num_bins=num_bins) == one_shot  # order does not matter either
    half = len(parts) // 2
    merged = _hist(*parts[:half], num_bins=num_bins).merge(_hist(*parts[half:], num_bins=num_bins))
    assert merged == one_shot
    if one_shot.bin_width > 0:
        counts, zeros = _reference(x, one_shot.bin_width, num_bins)
        np.testing.assert_array_equal(one_shot.counts, counts)
        assert one_shot.zero_count == zeros
        np.testing.assert_array_equal(one_shot.neg_counts, _reference(x[x < 0], one_shot.bin_width, num_bins)[0])


def test_update_is_faster_than_onnxruntime_histogram_collector() -> None:
    """Steady-state update vs ONNX Runtime's symmetric percentile collector on the same batches."""
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    rng = np.random.default_rng(9)
    x = rng.standard_normal(2_000_000).astype(np.float32)
    ours = StreamingHistogram()
    theirs = calibrate.HistogramCollector("percentile", True, DEFAULT_NUM_BINS, 128, 99.99, "same")
    ours.update(x)
    theirs.collect_absolute_value({"t": x})
    t_ours, t_theirs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ours.update(x)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs.collect_absolute_value({"t": x})
        t_theirs.append(time.perf_counter() - t0)
    assert min(t_ours) < min(t_theirs), (t_ours, t_theirs)


def test_coarsened_equals_collecting_at_fewer_bins() -> None:
    rng = np.random.default_rng(5)
    batches = [rng.laplace(size=5000).astype(np.float32) * s for s in (1.0, 3.0, 0.5, 9.0)]
    fine, coarse = StreamingHistogram(16384), StreamingHistogram(2048)
    for b in batches:
        fine.update(b)
        coarse.update(b)
    assert fine.coarsened(2048) == coarse
    with pytest.raises(QuantizationError, match="coarsen"):
        fine.coarsened(3000)


def test_resampled_is_the_histogram_over_zero_to_amax_within_the_stated_bound() -> None:
    rng = np.random.default_rng(6)
    x = np.concatenate([np.maximum(rng.standard_t(3, 200_000), 0), [0.0] * 1000]).astype(np.float32)
    h = StreamingHistogram(16384)
    for part in np.array_split(x, 7):
        h.update(part)
    got, width = h.resampled(2048)
    assert width == pytest.approx(float(x.max()) / 2048)
    assert got.sum() == x.size and got.dtype == np.int64
    exact, edges = np.histogram(np.abs(x).astype(np.float64), 2048, range=(0, float(np.abs(x).max())))
    # each new edge can only misplace the values of the stored bin that straddles it
    fine_cdf = np.concatenate(([h.zero_count], h.zero_count + np.cumsum(h.counts)))
    straddling = np.minimum((edges[1:-1] / h.bin_width).astype(int), h.num_bins - 1)
    bound = fine_cdf[straddling + 1] - fine_cdf[straddling]
    assert (np.abs(np.cumsum(got)[:-1] - np.cumsum(exact)[:-1]) <= bound).all()
    # an empty stretch stays empty: no value is spread into bins it is not near
    assert ((got > 0) <= (np.convolve(exact > 0, [1, 1, 1], mode="same") > 0)).all()


def test_resampled_where_the_edges_coincide_is_exact() -> None:
    x = np.float32([0.0, 0.3, 1.0, 2.5, 4.0, -4.0])  # amax 4 = 16384 stored bins of 2**-12
    h = StreamingHistogram(16384)
    h.update(x)
    got, width = h.resampled(2048)
    assert width == 4 / 2048
    exact, _ = np.histogram(np.abs(x), 2048, range=(0, 4))
    # values on an edge: ours are right-closed bins, np.histogram's left-closed (top bin closed)
    assert got.sum() == 6 and got[0] == exact[0] and got[-1] == 2
