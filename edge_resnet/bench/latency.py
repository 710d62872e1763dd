"""Latency and throughput of a bundle (or a bare .onnx / .xml), after trtexec and OpenVINO benchmark_app.

Conventions (both tools share them):

* warm-up iterations run first and are discarded; the first inference is part of the cold start
  (``load_s`` = load + first inference, like benchmark_app's "compile model" + "first inference");
* latency is per request, in ms: min / mean / p50 / p90 / p99 / max; percentiles interpolate linearly
  between samples (numpy's default method);
* throughput is images / wall time of the measured iterations;
* ``latency`` mode: synchronous single requests, LATENCY hint. ``throughput`` mode: on OpenVINO,
  asynchronous requests in an AsyncInferQueue of OPTIMAL_NUMBER_OF_INFER_REQUESTS with the THROUGHPUT
  hint (latency of a request = from its start to its completion callback); backends without an
  asynchronous queue run synchronous requests.

``--compare fp32`` measures a second subject (the bundle's float graph built on the same backend and
device in fp32) in the same run, alternating blocks of iterations (A, B, A, B, ...) so that load from
other jobs on the machine hits both alike. The speed-up is the ratio of the two throughputs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_resnet.backends.base import Artifact, Runner, get_backend
from edge_resnet.bundle import Bundle, load_bundle
from edge_resnet.errors import BackendError, BundleError, EdgeResnetError
from edge_resnet.types import BackendName, Mode, Precision

log = logging.getLogger(__name__)

Clock = Callable[[], float]
SAMPLES_CAP = 2000  # samples_ms kept per result in the JSON
DEFAULT_DURATION_S = 3.0  # trtexec's --duration default
MIN_ITERATIONS = 10  # trtexec's --iterations default: a timed run does at least this many
ROUNDS = 10  # blocks per subject: how finely two subjects are interleaved


# ------------------------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ascending values, interpolated linearly (numpy's "linear")."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


@dataclass(frozen=True)
class LatencyStats:
    """Per-request latency in ms."""

    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("latency statistics of no samples")
        s = sorted(samples_ms)
        return cls(s[0], math.fsum(s) / len(s), percentile(s, 50), percentile(s, 90), percentile(s, 99), s[-1])

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def throughput(images: int, seconds: float) -> float:
    """Images per second (0 when nothing was timed)."""
    return images / seconds if seconds > 0 else 0.0


def cap_samples(samples: Sequence[float], cap: int = SAMPLES_CAP) -> list[float]:
    """At most ``cap`` samples, evenly spaced over the run (so a histogram of them covers all of it)."""
    if len(samples) <= cap:
        return list(samples)
    idx = np.linspace(0, len(samples) - 1, cap).round().astype(int)
    return [samples[i] for i in idx]


def speedup(ips: float, baseline_ips: float) -> float:
    return ips / baseline_ips if baseline_ips > 0 else float("nan")


# -------------------------------------------------------------------------------------------- executors


@dataclass
class Block:
    """One block of iterations: per-request latencies (s) and the block's wall time (s)."""

    latencies_s: list[float]
    wall_s: float


class Executor(Protocol):
    n_requests: int
    kind: str

    def run(self, batch: np.ndarray, n: int) -> Block: ...


class SyncExecutor:
    """``n`` synchronous ``runner.infer`` calls, one after another."""

    kind = "sync"
    n_requests = 1

    def __init__(self, runner: Runner, clock: Clock = time.perf_counter) -> None:
        self.runner, self.clock = runner, clock

    def run(self, batch: np.ndarray, n: int) -> Block:
        out: list[float] = []
        start = self.clock()
        for _ in range(n):
            t0 = self.clock()
            self.runner.infer(batch)
            out.append(self.clock() - t0)
        return Block(out, self.clock() - start)


class OpenVINOAsyncExecutor:
    """``n`` requests through an AsyncInferQueue of the compiled model's optimal number of requests.

    Written against the openvino API (not through the runner) because the benchmark needs
    the latency of each request, not only the total time. A request's clock starts when a request of the
    queue is idle and it is started, as in benchmark_app.
    """

    kind = "async"

    def __init__(self, runner: Any, clock: Clock = time.perf_counter) -> None:
        from edge_resnet.backends.openvino import import_openvino

        ov = import_openvino()
        self.runner, self.clock = runner, clock
        self.n_requests = int(runner.optimal_requests())
        self._queue = ov.AsyncInferQueue(runner.compiled, self.n_requests)
        self._ends: dict[int, float] = {}
        self._queue.set_callback(self._done)

    def _done(self, request: Any, index: int) -> None:
        self._ends[index] = self.clock()

    def run(self, batch: np.ndarray, n: int) -> Block:
        lo, hi = self.runner.min_batch, self.runner.max_batch
        if batch.shape[0] < lo or (hi and batch.shape[0] > hi):
            raise BackendError(f"batch {batch.shape[0]} is outside this IR's batch range {lo}..{hi or 'any'}",
                               "pass --batch sizes within the profile's batch range")
        self._ends.clear()
        starts: list[float] = []
        start = self.clock()
        for i in range(n):
            self._queue.get_idle_request_id()  # waits (GIL released) until a request is free
            starts.append(self.clock())
            self._queue.start_async({0: batch}, userdata=i)
        self._queue.wait_all()
        wall = self.clock() - start
        return Block([self._ends[i] - t for i, t in enumerate(starts)], wall)


# backend -> executor of the throughput mode; backends not listed run synchronous requests
ASYNC_EXECUTORS: dict[BackendName, Callable[[Runner, Clock], Executor]] = {
    BackendName.OPENVINO: OpenVINOAsyncExecutor,
}


def make_executor(mode: Mode, backend: BackendName, runner: Runner, clock: Clock) -> Executor:
    factory = ASYNC_EXECUTORS.get(backend) if mode is Mode.THROUGHPUT else None
    if mode is Mode.THROUGHPUT and factory is None:
        log.warning("%s has no asynchronous request queue here: throughput mode runs synchronous requests",
                    backend.value)
    return factory(runner, clock) if factory else SyncExecutor(runner, clock)


# -------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """How long to measure each subject at each batch size: ``iterations``, or ``duration_s`` of wall time
    (at least ``min_iterations``). Each subject's iterations are split into ``rounds`` blocks."""

    iterations: int | None = None
    duration_s: float | None = None
    warmup: int = 10
    rounds: int = ROUNDS
    min_iterations: int = MIN_ITERATIONS

    def __post_init__(self) -> None:
        if self.iterations is not None and self.duration_s is not None:
            raise EdgeResnetError("both an iteration count and a duration were given",
                                  "pass either --iters or --time")
        if self.iterations is not None and self.iterations < 1:
            raise EdgeResnetError(f"--iters must be at least 1, got {self.iterations}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise EdgeResnetError(f"--time must be positive, got {self.duration_s}")
        if self.warmup < 0:
            raise EdgeResnetError(f"--warmup must be >= 0, got {self.warmup}")

    @property
    def seconds(self) -> float | None:
        return None if self.iterations is not None else (self.duration_s or DEFAULT_DURATION_S)

    def block_size(self, seconds_per_iteration: float) -> int:
        if self.iterations is not None:
            return max(1, math.ceil(self.iterations / self.rounds))
        per_block = (self.seconds or DEFAULT_DURATION_S) / self.rounds
        return max(1, round(per_block / max(seconds_per_iteration, 1e-9)))

    def remaining(self, iterations: int, wall_s: float) -> int | None:
        """Iterations still owed (None: time-bound, keep going), or 0 when done."""
        if self.iterations is not None:
            return max(0, self.iterations - iterations)
        done = wall_s >= (self.seconds or DEFAULT_DURATION_S) and iterations >= self.min_iterations
        return 0 if done else None


# --------------------------------------------------------------------------------------------- subjects


@dataclass
class Subject:
    """One thing to measure: a label ("int8", "fp32", ...) and how to load its Runner."""

    label: str
    backend: BackendName
    precision: str
    device: str
    load: Callable[..., Runner]
    input_shape: tuple[int, ...] | None = None  # C, H, W; None: ask the loaded runner
    note: str = ""


@dataclass
class Measurement:
    batch: int
    iterations: int
    latency: LatencyStats
    throughput_ips: float
    load_s: float
    samples_ms: list[float]
    n_requests: int
    requests: str  # "sync" / "async"

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "iterations": self.iterations, "latency_ms": self.latency.to_dict(),
                "throughput_ips": round(self.throughput_ips, 3), "load_s": round(self.load_s, 4),
                "samples_ms": [round(s, 4) for s in cap_samples(self.samples_ms)],
                "n_requests": self.n_requests, "requests": self.requests}


@dataclass
class _Run:
    """One subject's state while one batch size is measured."""

    subject: Subject
    runner: Runner
    executor: Executor
    load_s: float
    describe: dict[str, Any]
    samples_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    block: int = 1

    def add(self, block: Block) -> None:
        self.samples_s.extend(block.latencies_s)
        self.wall_s += block.wall_s

    def measurement(self, batch: int) -> Measurement:
        samples_ms = [s * 1e3 for s in self.samples_s]
        return Measurement(batch, len(samples_ms), LatencyStats.from_samples(samples_ms),
                           throughput(batch * len(samples_ms), self.wall_s), self.load_s, samples_ms,
                           self.executor.n_requests, self.executor.kind)


def _describe(runner: Runner) -> dict[str, Any]:
    return dict(runner.describe())


def _sample_shape(subject: Subject, runner: Runner) -> tuple[int, ...]:
    shape = subject.input_shape or tuple(runner.sample_shape)
    if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
        raise BackendError(f"the input of {subject.label} has no fixed shape ({shape or 'unknown'})",
                           "benchmark a bundle (its preprocessing fixes the input size) or export with a fixed size")
    return shape


def _check_batch(runner: Runner, batch: int) -> None:
    hi = runner.max_batch
    if hi and batch > hi:
        raise BackendError(f"batch {batch} is above the artifact's largest batch {hi}",
                           f"pass --batch sizes up to {hi}, or compile for a profile with a larger batch range")


def input_batch(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal float32 inputs (what benchmark_app feeds when given no data)."""
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


@contextmanager
def _loaded(subjects: Sequence[Subject], batch: int, mode: Mode, options: dict[str, Any],
            clock: Clock) -> Iterator[tuple[list[_Run], np.ndarray]]:
    """Load every subject (timing load + first inference), yield the runs and the input batch, close."""
    runs: list[_Run] = []
    x: np.ndarray | None = None
    try:
        for subject in subjects:
            t0 = clock()
            runner = subject.load(**options)
            try:
                if x is None:
                    x = input_batch(_sample_shape(subject, runner), batch)
                _check_batch(runner, batch)
                runner.infer(x)
                load_s = clock() - t0
                executor = make_executor(mode, subject.backend, runner, clock)
            except BaseException:
                runner.close()
                raise
            runs.append(_Run(subject, runner, executor, load_s, _describe(runner)))
        assert x is not None
        yield runs, x
    finally:
        for run in runs:
            run.runner.close()


def measure_batch(subjects: Sequence[Subject], batch: int, schedule: Schedule, mode: Mode = Mode.LATENCY,
                  options: dict[str, Any] | None = None,
                  clock: Clock = time.perf_counter) -> list[tuple[Measurement, dict[str, Any]]]:
    """Measure every subject at one batch size, interleaving their blocks; (measurement, runtime) each."""
    with _loaded(subjects, batch, mode, dict(options or {}), clock) as (runs, x):
        for run in runs:  # warm-up: discarded
            first = run.load_s
            if schedule.warmup:
                warm = run.executor.run(x, schedule.warmup)
                first = warm.wall_s / schedule.warmup
            run.block = schedule.block_size(first)
        _interleave(runs, x, schedule)
        return [(run.measurement(batch), run.describe) for run in runs]


def _interleave(runs: Sequence[_Run], x: np.ndarray, schedule: Schedule) -> None:
    """Blocks A, B, A, B, ... until every subject has its iterations (or its time)."""
    while True:
        pending = [(run, schedule.remaining(len(run.samples_s), run.wall_s)) for run in runs]
        pending = [(run, left) for run, left in pending if left != 0]
        if not pending:
            return
        for run, left in pending:
            run.add(run.executor.run(x, run.block if left is None else min(run.block, left)))


# ------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """What the user pointed at: the subject to measure, and the bundle when it is one."""

    path: Path
    subject: Subject
    bundle: Bundle | None = None


def _bundle_target(path: Path) -> Target:
    bundle = load_bundle(path)
    art = bundle.artifact
    size = bundle.spec.input_size
    subject = Subject(art.precision.value, art.backend, art.precision.value, _device_of(bundle, art),
                      bundle.load_runner, (3, size, size))
    return Target(path, subject, bundle)


def _device_of(bundle: Bundle, art: Artifact) -> str:
    return str(art.info.get("device") or bundle.profile.device)


def _onnx_target(path: Path) -> Target:
    from edge_resnet.backends.onnx_facts import inspect_onnx

    precision = Precision.INT8 if inspect_onnx(path, "ONNX Runtime").has_qdq else Precision.FP32
    art = Artifact(BackendName.ONNXRUNTIME, precision, {"model": path.name}, {})
    return Target(path, _file_subject(path, art, "cpu"))


def _ir_target(path: Path) -> Target:
    bin_path = path.with_suffix(".bin")
    if not bin_path.is_file():
        raise BackendError(f"{path} has no weights file {bin_path.name} next to it",
                           "keep the .xml and .bin of an OpenVINO IR together")
    precision = Precision.INT8 if 'type="FakeQuantize"' in path.read_text(encoding="utf-8") else Precision.FP32
    art = Artifact(BackendName.OPENVINO, precision, {"xml": path.name, "bin": bin_path.name}, {"device": "CPU"})
    return Target(path, _file_subject(path, art, "CPU"))


def _file_subject(path: Path, art: Artifact, device: str) -> Subject:
    backend = get_backend(art.backend)
    return Subject(art.precision.value, art.backend, art.precision.value, device,
                   lambda **options: backend.load(path.parent, art, **options))


# file suffix -> how to open a bare model file
FILE_TARGETS: dict[str, Callable[[Path], Target]] = {".onnx": _onnx_target, ".xml": _ir_target}


def open_target(path: str | Path) -> Target:
    """A bundle directory, or a bare .onnx (ONNX Runtime) / .xml (OpenVINO) file."""
    p = Path(path)
    if p.is_dir():
        return _bundle_target(p)
    p = p.resolve()  # a bare file may be a symbolic link (bundles may not): open its target
    opener = FILE_TARGETS.get(p.suffix.lower())
    if not p.is_file() or opener is None:
        raise BundleError(f"{p} is neither a bundle directory nor a .onnx / .xml model file",
                          "pass the -o directory of `edge-resnet compile`, a model.onnx or an OpenVINO model.xml")
    return opener(p)


# ----------------------------------------------------------------------------------------- comparisons


def fp32_subject(target: Target, stack: ExitStack) -> Subject:
    """The bundle's float graph built on the same backend and device in fp32 (into a temporary folder)."""
    bundle = target.bundle
    if bundle is None:
        raise BundleError(f"--compare fp32 needs a bundle (its model.float.onnx); {target.path} is a bare file",
                          "benchmark the bundle directory, or benchmark the float model as a second bare file")
    art = bundle.artifact
    if art.precision is Precision.FP32:
        log.warning("%s is already an fp32 bundle: the comparison measures fp32 against fp32", bundle.path)
    backend = get_backend(art.backend)
    out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-resnet-bench-fp32-")))
    t0 = time.perf_counter()
    float_art = backend.compile(bundle.float_model(), bundle.profile, out, Precision.FP32)
    log.info("built the fp32 baseline on %s in %.1f s", art.backend.value, time.perf_counter() - t0)
    hint = float_art.info.get("inference_precision")
    note = f"{bundle.manifest['graphs']['float']} built with {art.backend.value} in fp32 on {target.subject.device}"
    if hint:
        note += f" (OpenVINO INFERENCE_PRECISION_HINT={hint})" if art.backend is BackendName.OPENVINO \
            else f" (inference precision {hint})"
    return Subject("fp32", art.backend, Precision.FP32.value, target.subject.device,
                   lambda **options: backend.load(out, float_art, **options), target.subject.input_shape, note)


COMPARISONS: dict[str, Callable[[Target, ExitStack], Subject]] = {"fp32": fp32_subject}


# ------------------------------------------------------------------------------------------ environment


def cpu_model_name(cpuinfo: str) -> str | None:
    """The CPU's name from the text of /proc/cpuinfo (x86 "model name", ARM "Hardware"/"Model")."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "model", "cpu model"):
        if key in fields:
            return fields[key]
    return None


def _cpu_name() -> str | None:
    try:
        name = cpu_model_name(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        name = None
    return name or platform.processor() or None


def _nvidia_gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _jetson_model() -> list[str]:
    model = Path("/proc/device-tree/model")
    try:
        return [model.read_text(errors="replace").strip("\x00\n ")] if model.is_file() else []
    except OSError:
        return []


GPU_PROBES: tuple[Callable[[], list[str]], ...] = (_nvidia_gpus, _jetson_model)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("edge-resnet", "onnxruntime", "openvino", "tensorrt", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def inference_precision(precision: str, runtime: dict[str, Any]) -> str:
    """E.g. "int8 (float layers: f32)" for an int8 OpenVINO model whose INFERENCE_PRECISION_HINT is f32."""
    hint = runtime.get("inference_precision")
    if not hint:
        return precision
    return f"{precision} (float layers: {hint})" if precision == Precision.INT8.value else str(hint)


def environment(threads: int | None, hint: str, precision: str, runtime: dict[str, Any]) -> dict[str, Any]:
    """Where the numbers were measured: versions, CPU/GPU, threads, hint, precision of inference."""
    gpus = [g for probe in GPU_PROBES for g in probe()]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    used = runtime.get("threads", runtime.get("intra_op_num_threads"))
    return {
        "versions": _versions(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "gpu": gpus[0] if len(gpus) == 1 else (gpus or None),
        "threads_requested": threads,
        "threads": used if isinstance(used, int) else None,  # None: the backend's default
        "hint": hint,
        "precision": precision,
        "inference_precision": inference_precision(precision, runtime),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "runtime": runtime,
    }


# -------------------------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1, 8)
    schedule: Schedule = Schedule()
    threads: int | None = None
    mode: Mode = Mode.LATENCY
    compare: str | None = None  # a key of COMPARISONS

    def load_options(self) -> dict[str, Any]:
        return {"threads": self.threads, "hint": self.mode.hint}


def _jsonable(value: Any) -> Any:
    """describe() values as JSON (OpenVINO properties are enums/objects)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def check_batches(target: Target, batches: tuple[int, ...]) -> None:
    """Batch sizes above the bundle profile's maximum would be measured as several smaller inferences."""
    if target.bundle is None:
        return
    profile = target.bundle.profile
    over = [b for b in batches if b > profile.batch.max]
    if over:
        raise EdgeResnetError(
            f"batch {', '.join(map(str, over))} is above the bundle's largest batch {profile.batch.max} (its target "
            f"profile {profile.name} takes {profile.batch.min}..{profile.batch.max}): it would be measured as several "
            "smaller inferences", f"pass --batch sizes up to {profile.batch.max}, or compile for a profile with a "
            "larger batch range")


def benchmark(path: str | Path, options: BenchOptions = BenchOptions(), clock: Clock = time.perf_counter,
              pipeline: Callable[[Target], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the benchmark; the JSON-ready dict of the documented schema (see edge_resnet.bench)."""
    if not options.batches or any(b < 1 for b in options.batches):
        raise EdgeResnetError(f"invalid batch sizes {list(options.batches)}", "pass e.g. --batch 1,8")
    if options.compare is not None and options.compare not in COMPARISONS:
        raise EdgeResnetError(f"unknown comparison {options.compare!r}", f"use one of {sorted(COMPARISONS)}")
    target = open_target(path)
    check_batches(target, options.batches)
    with ExitStack() as stack:
        subjects = [target.subject]
        if options.compare:
            subjects.append(COMPARISONS[options.compare](target, stack))
        per_subject: list[list[Measurement]] = [[] for _ in subjects]
        runtimes: list[dict[str, Any]] = [{} for _ in subjects]
        for batch in options.batches:
            log.info("batch %d: measuring %s", batch, ", ".join(s.label for s in subjects))
            for i, (m, runtime) in enumerate(measure_batch(subjects, batch, options.schedule, options.mode,
                                                           options.load_options(), clock)):
                per_subject[i].append(m)
                runtimes[i] = runtime
    main = target.subject
    out: dict[str, Any] = {
        "artifact": str(target.path),
        "bundle_sha256": target.bundle.digest if target.bundle is not None else None,
        "backend": main.backend.value,
        "precision": main.precision,
        "device": main.device,
        "threads": options.threads,
        "mode": options.mode.value,
        "environment": _jsonable(environment(options.threads, options.mode.hint, main.precision, runtimes[0])),
        "results": [m.to_dict() for m in per_subject[0]],
        "compare": None,
        "pipeline": None,
    }
    if options.compare:
        base = subjects[1]
        out["compare"] = {
            "label": base.label,
            "note": base.note,
            "backend": base.backend.value,
            "device": base.device,
            "precision": base.precision,
            "inference_precision": inference_precision(base.precision, runtimes[1]),
            "runtime": _jsonable(runtimes[1]),
            "results": [m.to_dict() for m in per_subject[1]],
            "speedup_basis": "throughput_ips ratio (this artifact / baseline)",
            "speedup": {str(a.batch): round(speedup(a.throughput_ips, b.throughput_ips), 4)
                        for a, b in zip(per_subject[0], per_subject[1], strict=True)},
        }
    if pipeline is not None:
        out["pipeline"] = pipeline(target)
    return out
