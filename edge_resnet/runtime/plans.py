"""How a stream runs inference on each backend: the stream mode and, per backend, the throughput plan.

On a CPU a single inference spread over all cores (the latency configuration that ``load`` gives)
costs more CPU per frame than one single-threaded inference per core, because the cores synchronise
inside every layer. Measured on 2 cores, ResNet-50 INT8 at 128x128: OpenVINO 4.8 ms of CPU per frame
with 2 threads vs 4.2 ms with 1; ONNX Runtime 6.6 ms with its 2 spinning threads vs 4.3 ms with 1;
batches of 4 take it to 3.5 / 3.8 ms per frame. A stream has many frames, so by default it loads the
bundle a second time in the throughput configuration below and runs one inference per core
(OpenVINO's THROUGHPUT hint and its number of requests, like ``benchmark_app``; ONNX Runtime
sessions of one thread, which ``run`` may be called on from several threads at once).

Results do not change: on this CPU (AVX-512 VNNI) the outputs were bit-identical across the two
configurations and batch sizes 1-8 on both backends, for INT8 and for FP32 ResNet-50 bundles; the
tests check it for INT8 through the stream (stream results == classify results, scores compared
exactly), so another machine where it does not hold fails them.
Backends without a plan (TensorRT: one GPU, and its kernels may depend on the batch size) stream with
the model's own runner, one frame at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge_resnet.types import BackendName

__all__ = ["PLANS", "StreamMode", "ThroughputPlan", "available_cores"]


class StreamMode(str, Enum):
    THROUGHPUT = "throughput"  # one inference per core, frames batched when they are waiting: most frames/s
    LATENCY = "latency"  # the model's own runner, one frame at a time on all cores: the quickest single result


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThroughputPlan:
    """A backend's throughput configuration: how to load it, how many inferences to run at once."""

    load_options: dict[str, Any]  # for Bundle.load_runner
    parallel: Callable[[Any], int]  # loaded runner -> inferences it runs at once
    matches: Callable[[Any], bool]  # a loaded runner already has this configuration
    batch: int = 4  # most frames per inference call (only frames already waiting are batched)


def _openvino_parallel(runner: Any) -> int:
    return max(1, int(runner.optimal_requests()))


def _openvino_is_throughput(runner: Any) -> bool:
    return str(getattr(getattr(runner, "settings", None), "performance_hint", "")).lower() == "throughput"


PLANS: dict[BackendName, ThroughputPlan] = {
    BackendName.OPENVINO: ThroughputPlan(
        load_options={"hint": "throughput"},
        parallel=_openvino_parallel,
        matches=_openvino_is_throughput,
    ),
    BackendName.ONNXRUNTIME: ThroughputPlan(
        load_options={"threads": 1},
        parallel=lambda runner: available_cores(),
        matches=lambda runner: getattr(runner, "threads", None) == 1,
    ),
}
