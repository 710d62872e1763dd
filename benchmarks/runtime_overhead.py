"""edge_resnet.runtime: its overhead over the raw backend call, and stream() vs a sequential loop.

    python benchmarks/runtime_overhead.py [--model resnet50] [--input-size 128] [--frames 240] [--rounds 5]

Setup (built into --workdir unless --bundle is given): ``--model`` (v1.5, 1000 classes, random weights:
the cost of inference does not depend on them) at ``--input-size`` (resize = size * 256/224, as
ImageNet's 224/256), INT8 from ``--calib random``, one bundle per target (``cpu``: OpenVINO,
``onnxruntime``). The frames are a synthetic 640x480 MJPG video (digits drawn large), decoded with
OpenCV.

1. Overhead at batch 1, calls interleaved A/B/A/B on the same loaded runner:
   * ``model.classify(batch)`` vs ``runner.infer(batch)`` on a preprocessed (1, 3, 128, 128) batch;
   * ``model.classify(frame)`` vs ``runner.infer(spec.apply(frame)[None])`` on a BGR frame.
   Reported: ratio of the median call times, and the runtime's own time measured inside the same
   calls (wall time of classify minus the time spent in runner.infer), which other load on the machine
   does not disturb.
2. Throughput on the same video: ``model.stream(video)`` with its defaults vs a sequential loop (cv2
   read, spec.apply, runner.infer on the model as ``load`` gives it, softmax + top-1), rounds
   interleaved; medians and their ratio. Also stream(batch=1) (no dynamic batching) and
   stream(mode="latency"). CPU time per frame and the cores kept busy show how much of the machine
   the other jobs left us. The first throughput stream loads the bundle a second time (its
   throughput configuration): that time is printed, and excluded from the rounds by a warm-up.

No wall-clock thresholds: the machine is shared, only ratios measured side by side mean something.
Importing torch is not needed here (the bundles are compiled in a subprocess).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("runtime_overhead")

TARGETS = ("cpu", "onnxruntime")
VIDEO_SIZE = (640, 480)


def compile_bundle(out: Path, target: str, model: str, size: int) -> Path:
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-c", "from edge_resnet.cli import main; main()", "-q", "compile", "--model", model,
           "--num-classes", "1000", "--input-size", str(size), "--resize", str(round(size * 256 / 224)),
           "--target", target, "--calib", "random",
           "--calib-count", "32", "-o", str(out)]
    log.info("compiling %s", out)
    subprocess.run(cmd, check=True)
    return out


def make_video(path: Path, frames: int) -> Path:
    import cv2

    from edge_resnet.data import load_digits_split

    if path.is_file():
        return path
    digits, _ = load_digits_split("test")
    w, h = VIDEO_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
    ramp = np.linspace(0, 255, w - h, dtype=np.uint8)[None, :, None]
    for i in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, :h] = np.repeat(np.repeat(digits[i % len(digits)], h // 8, 0), h // 8, 1)
        frame[:, h:] = ramp
        writer.write(frame)
    writer.release()
    return path


class Timed:
    """Wraps a runner or a spec, adding up the time spent inside one of its methods."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner, self.inside = inner, 0.0
        wrapped = getattr(inner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return wrapped(*args, **kwargs)
            finally:
                self.inside += time.perf_counter() - t

        setattr(self, method, timed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Overhead:
    name: str
    raw_ms: float  # median raw call
    runtime_ms: float  # median runtime call
    own_us: float  # runtime's own time per call (outside runner.infer and spec.apply), median

    @property
    def ratio(self) -> float:
        return self.runtime_ms / self.raw_ms - 1.0

    @property
    def own_fraction(self) -> float:
        return self.own_us / 1000.0 / self.raw_ms


def overhead(name: str, model: Any, raw: Callable[[], Any], wrapped: Callable[[], Any], calls: int) -> Overhead:
    """Interleaved raw/runtime calls. The runtime's own time is measured inside the same calls, by timing
    what it delegates (runner.infer, spec.apply) and subtracting it."""
    runner, spec = Timed(model.runner, "infer"), Timed(model.spec, "apply")
    raw_t, rt_t, own = [], [], []
    for _ in range(5):  # warm-up
        raw()
        wrapped()
    for _ in range(calls):
        t = time.perf_counter()
        raw()
        raw_t.append(time.perf_counter() - t)
        (model.runner, real_runner), (model.spec, real_spec) = (runner, model.runner), (spec, model.spec)
        runner.inside = spec.inside = 0.0
        try:
            t = time.perf_counter()
            wrapped()
            total = time.perf_counter() - t
        finally:
            model.runner, model.spec = real_runner, real_spec
        rt_t.append(total)
        own.append(total - runner.inside - spec.inside)
    return Overhead(name, statistics.median(raw_t) * 1e3, statistics.median(rt_t) * 1e3,
                    statistics.median(own) * 1e6)


def by_hand(runner: Any, spec: Any, frame: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """What classify(frame) does, written without the runtime: preprocess, infer, softmax, stable top-k."""
    logits = runner.infer(spec.apply(frame, "bgr")[None])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(e, idx, axis=1) / e.sum(axis=1, keepdims=True)


def cpu_per_frame(fn: Callable[[], int]) -> float:
    c = time.process_time()
    n = fn()
    return (time.process_time() - c) / n * 1e3


def ceiling(model: Any, video: Path, batch: int, sequential_fps: float) -> tuple[float, str]:
    """The most any pipeline can gain over the sequential loop here: every core busy, each frame costing
    the CPU time its stages take alone (decode; preprocess; inference in the throughput configuration,
    single-threaded, in batches of ``batch``)."""
    import cv2

    from edge_resnet.host_cpu import available_cores

    frames: list[np.ndarray] = []

    def decode() -> int:
        cap = cv2.VideoCapture(str(video))
        while (got := cap.read())[0]:
            frames.append(got[1])
        cap.release()
        return len(frames)

    decode_ms = cpu_per_frame(decode)
    tensors: list[np.ndarray] = []
    prepare_ms = cpu_per_frame(lambda: len([tensors.append(model.prepare(f, model.order)) for f in frames]))
    loaded = model.throughput_runner()
    runner = loaded[0] if loaded else model.runner
    x = np.stack(tensors[:batch])
    runner.infer(x)
    infer_ms = cpu_per_frame(lambda: sum(len(runner.infer(x)) for _ in range(max(1, 60 // batch))))
    cores = available_cores()
    limit = cores * (1000.0 / sequential_fps) / (decode_ms + prepare_ms + infer_ms)
    return limit, (f"decode {decode_ms:.2f} + preprocess {prepare_ms:.2f} + inference (1 thread, batch {batch}) "
                   f"{infer_ms:.2f} ms CPU/frame on {cores} cores")


def sequential(model: Any, video: Path) -> int:
    """The loop a user writes without the runtime's pipeline: decode, preprocess, infer, postprocess."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    n = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            model.classifications(model.runner.infer(model.spec.apply(frame, "bgr")[None]), 1)
            n += 1
    finally:
        cap.release()
    return n


def streamed(model: Any, video: Path, **options: Any) -> int:
    n = 0
    with model.stream(str(video), top_k=1, **options) as results:
        for _ in results:
            n += 1
    return n


@dataclass
class Throughput:
    fps: float  # frames per second, median over rounds
    cpu_ms: float  # process CPU time per frame (all threads), median over rounds

    @property
    def cores(self) -> float:
        """Cores kept busy on average: what the scheduler gave us, next to the other jobs."""
        return self.fps * self.cpu_ms / 1000.0


def throughput(ways: dict[str, Callable[[], int]], rounds: int, frames: int) -> dict[str, Throughput]:
    """Each way over the same video, rounds interleaved (way 1, way 2, ..., way 1, ...)."""
    fps: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    for fn in ways.values():  # warm-up (and the page cache)
        fn()
    for _ in range(rounds):
        for name, fn in ways.items():
            t, c = time.perf_counter(), time.process_time()
            n = fn()
            fps[name].append(n / (time.perf_counter() - t))
            cpu[name].append((time.process_time() - c) / n * 1e3)
            assert n == frames, f"{name} saw {n} of {frames} frames"
    return {name: Throughput(statistics.median(fps[name]), statistics.median(cpu[name])) for name in ways}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-resnet-runtime-bench"))
    ap.add_argument("--bundle", action="append", type=Path, help="Use these bundles instead of compiling.")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="Interleaved calls per overhead measurement.")
    ap.add_argument("--skip-throughput", action="store_true", help="Measure the overhead only.")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)

    import cv2

    import edge_resnet.runtime as rt

    bundles = args.bundle or [compile_bundle(args.workdir / f"{args.model}-{args.input_size}-{t}", t, args.model,
                                             args.input_size) for t in TARGETS]
    video = make_video(args.workdir / f"frames-{args.frames}.avi", args.frames)
    cap = cv2.VideoCapture(str(video))
    _, frame = cap.read()
    cap.release()
    print(f"setup: {args.frames} frames {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} MJPG, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} (other jobs share the cores)")
    for path in bundles:
        model = rt.load(path)
        m = model.bundle.manifest
        print(f"{path}: {m['model'].get('name', 'onnx')} {m['precision']} {m['preprocess']['input_size']}px")
        batch = model.preprocess(frame)
        spec, runner = model.spec, model.runner
        print(f"\n{path.name}: {model.backend.value} {getattr(runner, 'describe', dict)()}")
        rows = [
            overhead("classify(batch) vs runner.infer(batch)", model, lambda r=runner, b=batch: r.infer(b),
                     lambda m=model, b=batch: m.classify(b), args.calls),
            overhead("classify(batch, top_k=1) vs runner.infer", model, lambda r=runner, b=batch: r.infer(b),
                     lambda m=model, b=batch: m.classify(b, top_k=1), args.calls),
            overhead("classify(frame) vs spec.apply+runner.infer", model,
                     lambda r=runner, s=spec: r.infer(s.apply(frame, "bgr")[None]),
                     lambda m=model: m.classify(frame), args.calls),
            overhead("classify(frame) vs the same by hand", model,
                     lambda r=runner, s=spec: by_hand(r, s, frame), lambda m=model: m.classify(frame), args.calls),
        ]
        for o in rows:
            print(f"  {o.name:<44} raw {o.raw_ms:7.2f} ms  runtime {o.runtime_ms:7.2f} ms  "
                  f"median ratio {o.ratio:+6.1%}   own time {o.own_us:6.1f} us = {o.own_fraction:.2%} of raw")
        if args.skip_throughput:
            model.close()
            continue
        t = time.perf_counter()
        loaded = model.throughput_runner()
        print(f"  throughput configuration loaded in {time.perf_counter() - t:.2f} s: "
              f"{getattr(loaded[0], 'describe', dict)() if loaded else 'none (the model runner)'}")
        ways: dict[str, Callable[[], int]] = {
            "sequential loop": lambda m=model: sequential(m, video),
            "stream()": lambda m=model: streamed(m, video),
            "stream(batch=1)": lambda m=model: streamed(m, video, batch=1),
            "stream(mode='latency')": lambda m=model: streamed(m, video, mode="latency"),
        }
        results = throughput(ways, args.rounds, args.frames)
        seq = results["sequential loop"].fps
        print(f"  throughput over {args.frames} frames (median of {args.rounds} interleaved rounds):")
        for name, r in results.items():
            print(f"    {name:<26} {r.fps:6.1f} fps  {r.fps / seq:5.2f}x   CPU {r.cpu_ms:5.1f} ms/frame, "
                  f"{r.cores:.2f} cores busy")
        with model.stream([frame]) as probe:
            stream_batch = probe.batch
        limit, parts = ceiling(model, video, stream_batch, seq)
        print(f"  ceiling for any pipeline: {limit:.2f}x the sequential loop ({parts})")
        print(f"  torch imported: {'torch' in sys.modules}; load average now {os.getloadavg()[0]:.1f}")
        model.close()


if __name__ == "__main__":
    main()
