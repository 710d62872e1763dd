"""Soak: stream 10,000 frames through model.stream() and watch memory (tests/test_runtime.py does 1,500).

    python benchmarks/runtime_soak.py [--bundle DIR] [--frames 10000] [--workdir /tmp/edge-resnet-runtime-bench]

Every frame is a fresh 640x480 BGR array (as a decoder gives); the consumer keeps nothing. After a
warm-up, the Python heap (tracemalloc) and the process RSS are sampled every --every frames. Without
--bundle, a ResNet-50 128x128 INT8 OpenVINO bundle is compiled into --workdir (random weights).
Flat means: the growth after warm-up is bounded and far below the bytes that went through.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_overhead import compile_bundle  # noqa: E402 - the sibling benchmark's bundle

INPUT_SIZE = 128

FRAME_SHAPE = (480, 640, 3)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def frames(n: int) -> Iterator[np.ndarray]:
    from edge_resnet.data import load_digits_split

    digits, _ = load_digits_split("test")
    h = FRAME_SHAPE[0]
    base = [np.repeat(np.repeat(d, h // 8, 0), h // 8, 1) for d in digits[:20]]
    for i in range(n):
        frame = np.zeros(FRAME_SHAPE, np.uint8)  # a new array every frame
        frame[:, :h] = base[i % len(base)]
        yield frame


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-resnet-runtime-bench"))
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--every", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import edge_resnet.runtime as rt

    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or compile_bundle(args.workdir / f"resnet50-{INPUT_SIZE}-cpu", "cpu", "resnet50", INPUT_SIZE)
    model = rt.load(bundle)
    frame_bytes = int(np.prod(FRAME_SHAPE)) + 4 * int(np.prod(model.input_shape))
    print(f"soak: {bundle} ({model.backend.value}, stream defaults), {args.frames} frames {FRAME_SHAPE[1]}x{FRAME_SHAPE[0]}, "
          f"{frame_bytes / 1e6:.2f} MB per frame through the pipeline")
    print(f"{'frame':>7} {'heap MB':>9} {'RSS MB':>8} {'fps':>7}")
    tracemalloc.start()
    heap0 = rss0 = 0
    samples: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    for r in model.stream(frames(args.frames), top_k=5):
        i = r.index + 1
        if i == args.warmup:
            gc.collect()
            heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_bytes()
            t0 = time.perf_counter()
        elif i > args.warmup and (i % args.every == 0 or i == args.frames):
            heap, rss = tracemalloc.get_traced_memory()[0] - heap0, rss_bytes() - rss0
            samples.append((heap, rss))
            print(f"{i:>7} {heap / 1e6:>+9.3f} {rss / 1e6:>+8.2f} {(i - args.warmup) / (time.perf_counter() - t0):>7.1f}")
    gc.collect()
    heap_end = tracemalloc.get_traced_memory()[0] - heap0
    tracemalloc.stop()
    processed = (args.frames - args.warmup) * frame_bytes
    worst_heap, worst_rss = max(s[0] for s in samples), max(s[1] for s in samples)
    print(f"after warm-up: {processed / 1e9:.2f} GB through the pipeline; heap growth at the end {heap_end / 1e6:+.3f} MB "
          f"(worst sample {worst_heap / 1e6:+.3f} MB), RSS growth worst {worst_rss / 1e6:+.2f} MB "
          f"({worst_rss / processed:.3%} of the data)")
    model.close()


if __name__ == "__main__":
    main()
