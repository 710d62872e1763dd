"""The ceiling of stream() on this machine: OpenVINO's own async THROUGHPUT queue against its sync
LATENCY loop, on the bundle's own compiled models (the same PrePostProcessor frame input), beside ours
(stream() against a classify loop), interleaved in one process.

    python benchmarks/pipeline_compare.py --models resnet18 --rounds 1 --frames 8   # builds the bundles
    python benchmarks/stream_ceiling.py --model resnet18 --rounds 5

Reads the `cpu` bundle with the opencv resampler that pipeline_compare.py leaves in its --workdir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import pipeline_compare as pc  # noqa: E402 - the same frames and crop as the pipeline benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-resnet-pipeline-bench"))
    args = ap.parse_args()

    import cv2
    import openvino as ov

    import edge_resnet.runtime as rt

    frames = pc.photo_frames(args.frames)
    model = rt.load(args.workdir / f"{args.model}-cpu-opencv", threads=2)
    top, left, h, w = model.spec.crop_box(*pc.FRAME_HW)
    crops = [np.ascontiguousarray(cv2.resize(f[top:top + h, left:left + w], (pc.SIZE, pc.SIZE),
                                             interpolation=cv2.INTER_LINEAR)[None]) for f in frames]
    latency = model.frame_runner.compiled
    throughput = model.throughput_runner()[0].compiled
    requests = throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    request = latency.create_infer_request()
    queue = ov.AsyncInferQueue(throughput, requests)

    def sync_loop() -> int:
        for c in crops:
            request.infer({0: c})
        return len(crops)

    def async_queue() -> int:
        for c in crops:
            queue.start_async({0: c})
        queue.wait_all()
        return len(crops)

    ways: dict[str, Callable[[], int]] = {
        "OpenVINO sync loop, LATENCY": sync_loop, "OpenVINO AsyncInferQueue, THROUGHPUT": async_queue,
        "ours, classify loop": lambda: pc.classify_loop(model, frames),
        "ours, stream()": lambda: pc.classify_stream(model, frames)}
    for fn in ways.values():
        fn()  # warm-up
    fps: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t = time.perf_counter()
            n = fn()
            fps[name].append(n / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in fps.items()}
    print(f"latency: {latency.get_property('NUM_STREAMS')} stream(s); throughput: "
          f"{throughput.get_property('NUM_STREAMS')} streams, {requests} requests")
    for name, v in med.items():
        print(f"{name:<40}{v:8.1f} frames/s  {[round(x, 1) for x in fps[name]]}")
    print(f"OpenVINO async/sync {med['OpenVINO AsyncInferQueue, THROUGHPUT'] / med['OpenVINO sync loop, LATENCY']:.3f}x; "
          f"ours stream/loop {med['ours, stream()'] / med['ours, classify loop']:.3f}x")
    print(json.dumps({"model": args.model, "median_fps": med, "rounds_fps": fps}))


if __name__ == "__main__":
    main()
