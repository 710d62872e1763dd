import math

import numpy as np
import pytest

from edge_resnet.errors import QuantizationError
from edge_resnet.quant.calibrators import (
    CALIBRATORS,
    MIN_AMAX,
    CalibrationMethod,
    _kl_divergences,
    calibrator_params,
    compute_amax,
    entropy,
    minmax,
    minmax_range,
    mse,
    mse_range,
    percentile,
)
from edge_resnet.quant.histogram import STATS_NUM_BINS, StreamingHistogram

RNG_SEED = 20240611


def _hist(x: np.ndarray, num_bins: int = 2048, name: str | None = None) -> StreamingHistogram:
    h = StreamingHistogram(num_bins, name=name)
    h.update(x)
    return h


def _gaussian(n: int = 1_000_000, seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _fake_quant_mse(x: np.ndarray, amax: float, qmax: int = 127) -> float:
    """Symmetric int8 fake-quantization error on the raw samples (what the backends compute)."""
    x = x.astype(np.float64)
    s = amax / qmax
    return float(np.mean((np.clip(np.rint(x / s), -qmax, qmax) * s - x) ** 2))


# -- reference transcription of NVIDIA's entropy search, one candidate at a time --------------------
# (ModelOpt modelopt/torch/quantization/calib/histogram.py and TensorRT pytorch-quantization
# calib/histogram.py, `_compute_amax_entropy`: a plain loop, written out again here)


def _entropy_reference_kl(bins: np.ndarray, levels: int = 128, start: int = 128) -> np.ndarray:
    """KL(P||Q) for i = start .. len(bins) on ``bins`` as given (bins[0] = bins[1] already applied)."""
    kls = []
    for i in range(start, bins.size + 1):
        p = bins[:i].astype(np.float64).copy()
        p[-1] += bins[i:].sum()  # outliers into the last bin
        level = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        level[bins[:i] == 0] = -1
        used = level >= 0
        mass = np.bincount(level[used], weights=bins[:i][used], minlength=levels)
        members = np.bincount(level[used], minlength=levels)
        q = np.zeros(i)
        q[used] = (mass / np.maximum(members, 1))[level[used]]
        if q.sum() == 0:
            kls.append(math.inf)
            continue
        pn, qn = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pn > 0, pn * np.log(pn / qn), 0.0)
        kls.append(float(terms.sum()))
    return np.array(kls)


def _entropy_reference_amax(hist: StreamingHistogram, levels: int = 128, start: int = 128) -> float:
    bins, width = hist.resampled(2048)
    bins[0] = bins[1]
    kl = _entropy_reference_kl(bins, levels, start)
    last_best = kl.size - 1 - int(np.argmin(kl[::-1]))
    return (start + last_best) * width


# -- minmax, percentile ------------------------------------------------------------------------------


def test_minmax_is_exact() -> None:
    x = np.array([-3.25, 0.0, 1.5, 2.75], dtype=np.float32)
    assert minmax(_hist(x)) == 3.25
    assert minmax(_hist(-x)) == 3.25
    rng = np.random.default_rng(RNG_SEED)
    y = rng.standard_normal(10_000).astype(np.float32) * 7
    assert compute_amax(_hist(y), "minmax") == float(np.abs(y).max())


def test_percentile_of_uniform() -> None:
    x = np.random.default_rng(RNG_SEED).uniform(-1, 1, 1_000_000).astype(np.float32)
    h = _hist(x)
    got = percentile(h, percentile=99.0)
    exact = float(np.quantile(np.abs(x).astype(np.float64), 0.99))
    assert abs(got - exact) <= h.bin_width  # within the bin holding the exact sample percentile
    assert got == pytest.approx(0.99, abs=2e-3)


def test_percentile_of_gaussian() -> None:
    x = _gaussian()
    h = _hist(x)
    got = compute_amax(h, CalibrationMethod.PERCENTILE)  # default 99.99
    exact = float(np.quantile(np.abs(x).astype(np.float64), 0.9999))
    assert abs(got - exact) <= h.bin_width
    # |N(0,1)|'s 99.99th percentile is 3.8906; the sample quantile's std at n=1e6 is ~0.024
    assert got == pytest.approx(3.8906, abs=0.1)


def test_percentile_counts_zeros_and_interpolates_in_the_bin() -> None:
    x = np.array([0.0] * 6 + [1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    h = _hist(x)  # w = 2**-9: each non-zero value is the top edge of its bin
    assert percentile(h, percentile=100) == 4.0
    assert percentile(h, percentile=50) == MIN_AMAX  # the 50th percentile of |x| is a zero
    assert percentile(h, percentile=70) == 1.0  # 6 zeros + the 1.0 = 70 % of the values
    assert percentile(h, percentile=80) == 2.0
    # 10 values in bin (100, 101] (w = 1): the 5th of 11 values is taken at 100 + 5/10 of the bin
    y = np.array([100.5] * 10 + [2048.0], dtype=np.float32)
    hy = _hist(y)
    assert hy.bin_width == 1.0
    assert percentile(hy, percentile=100 * 5 / 11) == pytest.approx(100.5, abs=1e-9)
    for bad in (0, -1, 100.5, "99", True):
        with pytest.raises(QuantizationError, match="percentile"):
            percentile(h, percentile=bad)  # type: ignore[arg-type]


# -- entropy -----------------------------------------------------------------------------------------


def test_kl_of_a_small_histogram_by_hand() -> None:
    # h = [4, 0, 2, 2], 2 levels. i=2: P=[4, 4], Q=[4, 0] (bin 1 is empty): inf. i=3: P=[4, 0, 4],
    # Q=[4, 0, 2] -> p=[1/2, 0, 1/2], q=[2/3, 0, 1/3]: KL = ln(1.125) / 2. i=4: P = Q: 0.
    kl = _kl_divergences(np.array([4.0, 0.0, 2.0, 2.0]), np.array([2, 3, 4]), 2)
    assert kl[0] == math.inf
    assert kl[1] == pytest.approx(0.5 * math.log(1.125), rel=1e-12)
    assert kl[2] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_entropy_divergences_match_the_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(20_000).astype(np.float32) * rng.uniform(0.5, 3)
    if seed % 2:
        x = np.concatenate([x, rng.uniform(10, 30, 3).astype(np.float32)])
    if seed == 2:
        x = np.maximum(rng.laplace(size=20_000), 0).astype(np.float32)  # ReLU-like: half zeros
    bins, _ = _hist(x, STATS_NUM_BINS).resampled(2048)
    bins[0] = bins[1]
    kl = _kl_divergences(bins, np.arange(128, 2049), 128)
    ref = _entropy_reference_kl(bins)
    assert np.array_equal(np.isinf(kl), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(kl[finite], ref[finite], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_entropy_matches_the_reference_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_t(3 + seed, 100_000), 20 * rng.standard_normal(20)]).astype(np.float32)
    h = _hist(x, STATS_NUM_BINS)
    assert abs(entropy(h) - _entropy_reference_amax(h)) <= h.amax / 2048  # ties aside, the same bin


def test_entropy_of_an_exactly_uniform_histogram_keeps_the_range() -> None:
    # every one of the 2048 bins holds the same count: KL is 0 only without clipping
    x = ((np.arange(2048 * 64) + 0.5) / (2048 * 64)).astype(np.float32)
    assert entropy(_hist(x, STATS_NUM_BINS)) == pytest.approx(float(x.max()), rel=1e-6)


def test_entropy_is_the_same_for_signed_and_unsigned_tensors() -> None:
    x = np.random.default_rng(RNG_SEED).laplace(size=200_000).astype(np.float32)
    signed, mirrored, unsigned = (_hist(v, STATS_NUM_BINS) for v in (x, -x, np.abs(x)))
    assert entropy(signed) == entropy(mirrored) == entropy(unsigned)


def test_entropy_clips_a_lone_outlier_at_the_end_of_the_body() -> None:
    # uniform on [0, 1) and one value at 10: a candidate inside the empty gap puts the outlier in an
    # empty bin (q = 0 < p: inf); the first one past the body puts it on top of the body's last bin
    # at the cost of one count, less than the level averaging of the full range
    x = np.concatenate([np.random.default_rng(RNG_SEED).uniform(0, 1, 100_000), [10.0]]).astype(np.float32)
    assert entropy(_hist(x, STATS_NUM_BINS)) == pytest.approx(1.0, abs=10 / 2048)


def test_entropy_clips_outliers_of_a_gaussian() -> None:
    x = np.concatenate([_gaussian(), np.float32([40.0, -45.0, 50.0])])
    amax = entropy(_hist(x, STATS_NUM_BINS))
    assert 3.0 < amax < 8.0  # keeps the body (> 3 sigma), far below the outliers (>= 40 sigma)


def test_entropy_flattens_the_zero_spike_as_nvidia() -> None:
    relu = np.maximum(_gaussian(400_000), 0.0)  # half exact zeros
    assert entropy(_hist(relu, STATS_NUM_BINS)) == pytest.approx(entropy(_hist(relu[relu > 0], STATS_NUM_BINS)), rel=0.02)


def _modelopt_entropy(streams: dict[str, list[np.ndarray]], stride: int) -> dict[str, dict]:
    """ModelOpt's own calibrator on the same batches: HistogramCalibrator.collect (torch.histc, as
    ModelOpt collects) then compute_amax("entropy", stride=...). In this process's interpreter when
    modelopt imports, else in the one named by EDGE_RESNET_MODELOPT_PYTHON (a ModelOpt venv), else
    skipped. Its search is a Python loop over bins (about a minute per tensor at stride 1 here)."""
    script = (
        "import json, sys, numpy as np, torch\n"
        "from modelopt.torch.quantization.calib.histogram import HistogramCalibrator\n"
        "z = np.load(sys.argv[1])\n"
        "out = {}\n"
        "for name in sorted({k.split('/')[0] for k in z.files}):\n"
        "    c = HistogramCalibrator(num_bits=8, unsigned=False)\n"
        "    for k in sorted((k for k in z.files if k.startswith(name + '/')), key=lambda k: int(k.split('/')[1])):\n"
        "        c.collect(torch.from_numpy(z[k]))\n"
        "    out[name] = {'amax': float(c.compute_amax('entropy', stride=int(sys.argv[2]))),\n"
        "                 'hist': c._calib_hist.int().tolist(), 'edges': c._calib_bin_edges.tolist()}\n"
        "print(json.dumps(out))\n"
    )
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    import tempfile

    python = sys.executable if importlib.util.find_spec("modelopt") else os.environ.get("EDGE_RESNET_MODELOPT_PYTHON")
    if not python:
        pytest.skip("ModelOpt is not importable and EDGE_RESNET_MODELOPT_PYTHON is not set")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batches.npz")
        np.savez(path, **{f"{name}/{i}": b for name, bs in streams.items() for i, b in enumerate(bs)})
        out = subprocess.run([python, "-c", script, path, str(stride)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entropy_matches_modelopt_within_one_bin() -> None:
    rng = np.random.default_rng(RNG_SEED)
    shape = (8, 16, 12, 12)
    streams = {
        "gaussian": [rng.standard_normal(shape) for _ in range(6)],
        "relu-heavy-tail": [np.maximum(rng.standard_t(4, shape), 0) for _ in range(6)],
        "signed-heavy-tail": [rng.laplace(size=shape) * np.exp(rng.normal(0, 0.5, (8, 16, 1, 1))) for _ in range(6)],
    }
    streams = {k: [b.astype(np.float32) for b in bs] for k, bs in streams.items()}
    stride = 4  # the same candidates on both sides; stride 1 takes ModelOpt minutes per tensor
    # ModelOpt's bin width is set by the first batch it sees (later batches add bins of that width),
    # so its threshold depends on the order of the data. Ours is 2048 bins over the whole set's
    # range, whatever the order: ModelOpt's result when one batch holds it all.
    theirs = _modelopt_entropy({k: [np.concatenate(bs)] for k, bs in streams.items()}, stride)
    for name, batches in streams.items():
        mo = theirs[name]
        bins, edges = np.array(mo["hist"], dtype=np.float64), np.array(mo["edges"])
        width = edges[1] - edges[0]
        # 1. the search itself: on ModelOpt's own histogram, ours picks ModelOpt's threshold
        bins[0] = bins[1]
        candidates = np.arange(128, bins.size + 1, stride)
        kl = _kl_divergences(bins, candidates, 128)
        pick = candidates[candidates.size - 1 - int(np.argmin(kl[::-1]))]
        assert edges[pick] == pytest.approx(mo["amax"], rel=1e-6), name
        # 2. on our streamed histogram: the same bin, or a near-tie of the KL curve (the minimum is
        # flat on heavy tails, and the 2048-bin re-cut moves a fraction of a bin at each edge)
        h = StreamingHistogram(STATS_NUM_BINS)
        for b in batches[::-1]:
            h.update(b)
        ours = entropy(h, stride=stride)
        ours_kl = kl[int(np.argmin(np.abs(candidates * width - ours)))]
        assert abs(ours - mo["amax"]) <= width or ours_kl <= 1.02 * kl.min(), name


def test_entropy_parameters() -> None:
    h = _hist(_gaussian(10_000))
    with pytest.raises(QuantizationError, match="start_bin"):
        entropy(h, start_bin=4096)  # more than the 2048 bins
    with pytest.raises(QuantizationError, match="num_bits"):
        entropy(h, num_bits=1)
    with pytest.raises(QuantizationError, match="stride"):
        entropy(h, stride=0)
    assert 0 < entropy(h, num_bits=4) < entropy(h)  # 8 levels clip harder than 128
    assert entropy(h, stride=8) == pytest.approx(entropy(h), rel=0.05)


# -- mse ---------------------------------------------------------------------------------------------


def test_mse_of_a_gaussian_is_near_the_analytic_optimum() -> None:
    """For N(0,1) and qmax=127, E[(fq(x) - x)^2] = (t/127)^2/12 * P(|x| < t) + 2 * E[(x - t)^2; x > t]
    is least at t = 3.92 sigma (numerical minimization; ACIQ, Banner et al. 2019, tabulate 3.92 for
    8 bits too). The curve is flat there (mse(3.6) and mse(4.3) are only 17 % and 10 % above the
    minimum), so the sample optimum wanders; these 1M samples give 3.97. The band 3.6-4.3 is
    tighter than the often quoted 2.5-4.5 sigma, which is for 4-8 bits together.
    """
    x = _gaussian()
    amax = mse(_hist(x))
    assert 3.6 < amax < 4.3
    grid = np.linspace(2.5, float(np.abs(x).max()), 200)
    best_on_samples = min(_fake_quant_mse(x, t) for t in grid)
    assert _fake_quant_mse(x, amax) <= 1.02 * best_on_samples


def test_mse_beats_minmax_with_outliers() -> None:
    x = np.concatenate([_gaussian(), np.float32([30.0, -35.0, 40.0])])
    h = _hist(x)
    amax = mse(h)
    assert amax < 0.5 * minmax(h)
    # on the raw samples, not the histogram: clipping 3 outliers costs less than a 3x coarser step
    assert _fake_quant_mse(x, amax) < 0.7 * _fake_quant_mse(x, minmax(h))


def test_mse_keeps_the_range_of_a_uniform() -> None:
    x = np.random.default_rng(RNG_SEED).uniform(-1, 1, 200_000).astype(np.float32)
    assert mse(_hist(x)) >= 0.98 * float(np.abs(x).max())


def _asymmetric_fake_quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    step = (hi - lo) / 255
    z = np.rint(-lo / step)
    q = np.clip(np.rint(x.astype(np.float64) / step) + z, 0, 255)
    return float(np.mean(np.square((q - z) * step - x)))


def test_mse_range_is_the_best_uint8_grid_on_a_skewed_tensor() -> None:
    """A conv output feeding a residual Add: mostly positive, heavy-tailed, a short negative side. The
    range mse_range picks, checked on the raw samples against a brute-force grid of (step, zero point)
    pairs and against the symmetric quantizer (zero point 128) that U8S8 used before."""
    rng = np.random.default_rng(RNG_SEED)
    x = np.concatenate([rng.gamma(2.0, 2.0, 50_000), -rng.gamma(1.0, 0.4, 10_000)]).astype(np.float32)
    h = _hist(x)
    lo, hi = mse_range(h)
    assert lo <= 0 <= hi and minmax_range(h) == (float(x.min()), float(x.max()))
    step = (hi - lo) / 255
    assert abs(-lo / step - round(-lo / step)) < 1e-6  # 0 is a grid point: the zero point is exact
    ours = _asymmetric_fake_quant_mse(x, lo, hi)
    brute = min(_asymmetric_fake_quant_mse(x, -z * s, (255 - z) * s)
                for s in np.linspace(0.05, float(x.max() - x.min()) / 255, 40) for z in range(0, 64, 3))
    assert ours <= 1.01 * brute
    a = mse(h)
    symmetric = float(np.mean(np.square(np.clip(np.rint(x / (a / 127)), -127, 127) * (a / 127) - x)))
    assert ours < 0.6 * symmetric


def test_mse_range_of_a_one_sided_tensor_uses_every_level_on_that_side() -> None:
    x = np.random.default_rng(RNG_SEED).uniform(0, 3, 100_000).astype(np.float32)
    lo, hi = mse_range(_hist(x))
    assert lo == 0 and hi >= 0.98 * float(x.max())
    lo, hi = mse_range(_hist(-x))
    assert hi == 0 and -lo >= 0.98 * float(x.max())


def test_mse_range_needs_the_negative_side() -> None:
    arrays = _hist(_gaussian()).to_arrays()
    del arrays["neg_counts"]
    arrays["format_version"] = np.array(1)
    with pytest.raises(QuantizationError, match="negative values apart"):
        mse_range(StreamingHistogram.from_arrays(arrays))


# -- registry, validation, degenerate inputs ---------------------------------------------------------


def test_registry_covers_every_method() -> None:
    assert set(CALIBRATORS) == set(CalibrationMethod)
    h = _hist(_gaussian(50_000))
    for method in CalibrationMethod:
        by_name = compute_amax(h, method.value.upper())
        assert by_name == compute_amax(h, method) == CALIBRATORS[method](h)
        assert 0 < by_name <= h.amax
    assert calibrator_params("percentile") == {"percentile": 99.99}
    assert calibrator_params(CalibrationMethod.MINMAX) == {}


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(QuantizationError) as info:
        compute_amax(_hist(np.ones(4)), "kl")
    assert "'kl'" in info.value.problem
    assert info.value.fix == "use one of: minmax, percentile, entropy, mse"


def test_unknown_parameter_is_rejected() -> None:
    with pytest.raises(QuantizationError, match="unknown parameter.*percentil\\b") as info:
        compute_amax(_hist(np.ones(4)), "percentile", percentil=99.9)
    assert "percentile=99.99" in str(info.value.fix)
    with pytest.raises(QuantizationError, match="takes: no parameters"):
        compute_amax(_hist(np.ones(4)), "minmax", percentile=99.9)


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_all_zero_tensor_gets_a_positive_amax(method: CalibrationMethod) -> None:
    assert compute_amax(_hist(np.zeros((2, 3, 4))), method) == MIN_AMAX


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_empty_histogram_raises_naming_the_tensor(method: CalibrationMethod) -> None:
    with pytest.raises(QuantizationError, match="no values were collected for tensor 'fc_in'"):
        compute_amax(StreamingHistogram(name="fc_in"), method)


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_single_value(method: CalibrationMethod) -> None:
    amax = compute_amax(_hist(np.float32([-0.75])), method)
    assert amax == pytest.approx(0.75, rel=1e-3) and amax <= 0.75


