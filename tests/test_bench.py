"""edge-resnet bench: the statistics against numpy, our own loop logic with a fake runner on a fake clock
(warm-up excluded, iteration counts, A/B interleaving), and the real thing on cpu (OpenVINO) and onnxruntime
bundles of the digits ResNet-18. No wall-clock thresholds: only consistency of the numbers measured."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_digits_bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_resnet.backends.base import Runner
from edge_resnet.bench import (
    BenchOptions,
    LatencyStats,
    Mode,
    Schedule,
    Subject,
    benchmark,
    cap_samples,
    cpu_model_name,
    measure_batch,
    percentile,
    softmax_topk,
    speedup,
    throughput,
)
from edge_resnet.cli.app import cli
from edge_resnet.cli.bench_cmd import parse_batches
from edge_resnet.errors import BackendError, BundleError, EdgeResnetError
from edge_resnet.types import BackendName

ITERS = 30
STAT_KEYS = ("min", "mean", "p50", "p90", "p99", "max")

# ---------------------------------------------------------------------------------------------- statistics

finite = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(sorted(values), q) == pytest.approx(np.percentile(values, q), rel=1e-9, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=500))
def test_latency_stats_match_numpy(values: list[float]) -> None:
    s = LatencyStats.from_samples(values)
    v = np.asarray(values)
    expected = (v.min(), v.mean(), *np.percentile(v, [50, 90, 99]), v.max())
    assert (s.min, s.mean, s.p50, s.p90, s.p99, s.max) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max


def test_statistics_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="no samples"):
        LatencyStats.from_samples([])


def test_cap_samples_keeps_the_whole_run() -> None:
    samples = [float(i) for i in range(5000)]
    capped = cap_samples(samples, 2000)
    assert len(capped) == 2000 and capped[0] == 0.0 and capped[-1] == 4999.0
    assert capped == sorted(capped) and set(capped) <= set(samples)
    assert cap_samples(samples[:10], 2000) == samples[:10]


def test_throughput_and_speedup() -> None:
    assert throughput(8 * 100, 2.0) == 400.0 and throughput(8, 0.0) == 0.0
    assert speedup(300.0, 100.0) == 3.0 and math.isnan(speedup(1.0, 0.0))


def test_cpu_model_name() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 62.50\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B\n"
    assert cpu_model_name(x86) == "AMD EPYC 7B13"
    assert cpu_model_name(arm) == "BCM2835"
    assert cpu_model_name("") is None


def test_softmax_topk_against_numpy() -> None:
    logits = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    idx, p = softmax_topk(logits, 5)
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.array_equal(idx, np.argsort(-ref, axis=1)[:, :5])
    assert np.allclose(p, np.take_along_axis(ref, idx, 1), atol=1e-6)


def test_plan_and_batch_options() -> None:
    with pytest.raises(EdgeResnetError, match="--iters or --time"):
        Schedule(iterations=10, duration_s=1.0)
    assert Schedule(iterations=25, rounds=10).block_size(1.0) == 3
    assert Schedule(duration_s=1.0, rounds=10).block_size(0.01) == 10
    assert parse_batches(None, None, "1, 8,32") == (1, 8, 32)
    for bad in ("1,x", "0", ""):
        with pytest.raises(Exception, match="batch|integers"):
            parse_batches(None, None, bad)


# ------------------------------------------------------------------------------ our loop, on a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRunner(Runner):
    """Takes exactly ``dt`` seconds of the fake clock per call and logs who ran."""

    def __init__(self, name: str, dt: float, clock: FakeClock, calls: list[str], max_batch: int | None = None):
        self.name, self.dt, self.clock, self.calls = name, dt, clock, calls
        self.sample_shape = (3, 4, 4)
        self.max_batch = max_batch
        self.closed = False

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1:] == (3, 4, 4)
        self.calls.append(self.name)
        self.clock.now += self.dt
        return np.zeros((batch.shape[0], 10), np.float32)

    def close(self) -> None:
        self.closed = True


# powers of two: the fake clock's sums are exact, so "has it had its time" has no rounding surprises
DT_A, DT_B = 2.0**-9, 2.0**-7  # ~1.95 ms and ~7.8 ms per call


def _subjects(clock: FakeClock, calls: list[str], runners: list[FakeRunner], load_s: float = 0.5,
              **runner_kw) -> list[Subject]:
    def loader(name: str, dt: float):
        def load(**options) -> FakeRunner:
            clock.now += load_s
            runner = FakeRunner(name, dt, clock, calls, **runner_kw)
            runners.append(runner)
            return runner
        return load

    return [Subject("A", BackendName.ONNXRUNTIME, "int8", "cpu", loader("A", DT_A)),
            Subject("B", BackendName.ONNXRUNTIME, "fp32", "cpu", loader("B", DT_B))]


def test_iterations_warmup_and_interleaving() -> None:
    clock, calls, runners = FakeClock(), [], []
    schedule = Schedule(iterations=20, warmup=3, rounds=4)  # blocks of 5
    (a, _), (b, _) = measure_batch(_subjects(clock, calls, runners), 4, schedule, clock=clock)
    # load + first inference each, then warm-up each, then blocks A, B, A, B, ...
    assert calls == ["A", "B"] + ["A"] * 3 + ["B"] * 3 + (["A"] * 5 + ["B"] * 5) * 4
    assert a.iterations == b.iterations == 20 and len(a.samples_ms) == 20  # warm-up excluded
    assert a.samples_ms == [DT_A * 1e3] * 20 and b.samples_ms == [DT_B * 1e3] * 20
    assert a.latency.p99 == pytest.approx(DT_A * 1e3) and b.latency.mean == pytest.approx(DT_B * 1e3)
    assert a.throughput_ips == pytest.approx(4 / DT_A) and b.throughput_ips == pytest.approx(4 / DT_B)
    assert a.load_s == 0.5 + DT_A and b.load_s == 0.5 + DT_B  # load + first inference
    assert a.requests == "sync" and a.n_requests == 1
    assert all(r.closed for r in runners)


def test_timed_run_interleaves_until_each_has_its_time() -> None:
    clock, calls, runners = FakeClock(), [], []
    schedule = Schedule(duration_s=0.125, warmup=2, rounds=4)  # blocks of 1/32 s: 16 calls of A, 4 of B
    (a, _), (b, _) = measure_batch(_subjects(clock, calls, runners), 1, schedule, clock=clock)
    assert a.iterations == 64 and b.iterations == 16
    assert calls[2 + 4:] == (["A"] * 16 + ["B"] * 4) * 4
    assert sum(a.samples_ms) == sum(b.samples_ms) == 125.0


def test_timed_run_does_at_least_the_minimum_iterations() -> None:
    clock, calls, runners = FakeClock(), [], []
    (a, _), (b, _) = measure_batch(_subjects(clock, calls, runners), 1, Schedule(duration_s=0.001, warmup=0), clock=clock)
    assert a.iterations >= 10 and b.iterations >= 10


def test_throughput_mode_without_async_queue_runs_sync(caplog: pytest.LogCaptureFixture) -> None:
    clock, calls, runners = FakeClock(), [], []
    with caplog.at_level(logging.WARNING):
        (a, _), _ = measure_batch(_subjects(clock, calls, runners), 2, Schedule(iterations=5, warmup=1),
                                  Mode.THROUGHPUT, clock=clock)
    assert a.requests == "sync" and "synchronous" in caplog.text


def test_batch_above_the_artifact_range_is_refused_and_runners_closed() -> None:
    clock, calls, runners = FakeClock(), [], []
    with pytest.raises(BackendError, match="largest batch 8"):
        measure_batch(_subjects(clock, calls, runners, max_batch=8), 16, Schedule(iterations=5), clock=clock)
    assert runners and all(r.closed for r in runners)


# ------------------------------------------------------------------------------------ real bundles


@pytest.fixture(scope="session")
def bundles(digits_r18, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.getbasetemp() / "digits-bundles"
    return {t: build_digits_bundle(root, digits_r18.checkpoint, t) for t in ("cpu", "onnxruntime")}


def _check_results(results: list[dict], batches: tuple[int, ...], iters: int, latency_mode: bool) -> None:
    assert [r["batch"] for r in results] == list(batches)
    for r in results:
        lat = r["latency_ms"]
        assert set(lat) == set(STAT_KEYS)
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["iterations"] == iters and len(r["samples_ms"]) == iters
        assert min(r["samples_ms"]) == pytest.approx(lat["min"], abs=1e-3)
        assert r["load_s"] > 0 and r["throughput_ips"] > 0
        if latency_mode:  # sync: images/s is batch / mean latency, up to the loop's own overhead
            expected = r["batch"] * 1000 / lat["mean"]
            assert expected / 2 < r["throughput_ips"] < expected * 2


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cpu", "onnxruntime"])
def test_bench_cli_json_complete_and_consistent(bundles: dict[str, Path], target: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, [
        "-q", "bench", str(bundles[target]), "--batch", "1,8", "--iters", str(ITERS), "--warmup", "5",
        "--compare", "fp32", "--pipeline", "--frame-count", "60", "--json", str(out)])
    assert result.exit_code == 0, result.output
    print("\n" + result.output)
    data = json.loads(out.read_text())
    assert set(data) >= {"artifact", "backend", "precision", "device", "threads", "mode", "environment", "results",
                         "compare", "pipeline"}
    backend = {"cpu": "openvino", "onnxruntime": "onnxruntime"}[target]
    assert (data["backend"], data["precision"], data["mode"]) == (backend, "int8", "latency")
    env = data["environment"]
    assert env["versions"]["edge-resnet"] and env["versions"][backend] and env["hint"] == "latency"
    assert env["cpu"] == cpu_model_name(Path("/proc/cpuinfo").read_text())
    _check_results(data["results"], (1, 8), ITERS, latency_mode=True)

    compare = data["compare"]
    assert compare["label"] == "fp32" and compare["precision"] == "fp32" and compare["backend"] == backend
    _check_results(compare["results"], (1, 8), ITERS, latency_mode=True)
    assert set(compare["speedup"]) == {"1", "8"}
    for b, s in compare["speedup"].items():
        mine = next(r for r in data["results"] if r["batch"] == int(b))["throughput_ips"]
        base = next(r for r in compare["results"] if r["batch"] == int(b))["throughput_ips"]
        assert s == pytest.approx(mine / base, rel=1e-3)
    if backend == "openvino":  # the float baseline must really run in f32 (not bf16), and say so
        assert "INFERENCE_PRECISION_HINT=f32" in compare["note"] and compare["runtime"]["inference_precision"] == "f32"
        assert "INFERENCE_PRECISION_HINT=f32" in result.output
    assert "speed-up int8 vs fp32" in result.output

    pipe = data["pipeline"]
    assert set(pipe["stages_ms"]) == {"decode", "preprocess", "infer", "postprocess"}
    assert all(v >= 0 for v in pipe["stages_ms"].values()) and pipe["stages_ms"]["infer"] > 0
    assert pipe["frames"] == 60 and pipe["fps"] == pytest.approx(1000 / pipe["frame_ms"]["mean"], rel=1e-3)
    assert pipe["top1"] >= 0.85  # the real frames really went through the model: digits ResNet-18 is ~97 %


@pytest.mark.slow
def test_openvino_throughput_mode_uses_async_requests(bundles: dict[str, Path]) -> None:
    data = benchmark(bundles["cpu"], _options(Mode.THROUGHPUT, batches=(2,), iters=16))
    r = data["results"][0]
    runtime = data["environment"]["runtime"]
    assert r["requests"] == "async" and r["n_requests"] == runtime["optimal_requests"] >= 1
    assert runtime["performance_hint"] == "THROUGHPUT" and data["environment"]["hint"] == "throughput"
    _check_results(data["results"], (2,), 16, latency_mode=False)


def _options(mode: Mode = Mode.LATENCY, batches: tuple[int, ...] = (1,), iters: int = 10,
             compare: str | None = None) -> BenchOptions:
    return BenchOptions(batches, Schedule(iterations=iters, warmup=2), None, mode, compare)


@pytest.mark.slow
def test_bare_model_files(bundles: dict[str, Path]) -> None:
    onnx_data = benchmark(bundles["onnxruntime"] / "model.onnx", _options())
    assert (onnx_data["backend"], onnx_data["precision"]) == ("onnxruntime", "int8")
    ir_data = benchmark(bundles["cpu"] / "model.xml", _options())
    assert (ir_data["backend"], ir_data["precision"], ir_data["device"]) == ("openvino", "int8", "CPU")
    float_data = benchmark(bundles["cpu"] / "model.float.onnx", _options())
    assert float_data["precision"] == "fp32"
    with pytest.raises(BundleError, match="needs a bundle"):
        benchmark(bundles["cpu"] / "model.xml", _options(compare="fp32"))


@pytest.mark.slow
def test_clear_errors(bundles: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", str(bundles["cpu"]), "--batch", "64", "--iters", "2"])
    assert result.exit_code == 1 and "largest batch 32" in result.output and "fix:" in result.output
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="neither a bundle"):
        benchmark(tmp_path / "notes.txt")
    result = CliRunner().invoke(cli, ["bench", str(bundles["cpu"]), "--iters", "5", "--time", "1"])
    assert result.exit_code == 1 and "--iters or --time" in result.output
