"""``edge-resnet bench``: latency, throughput and cold start of a bundle, its fp32 baseline side by side,
and the camera pipeline per stage. ``benchmark()`` returns the JSON that ``edge-resnet report`` reads:

    {"artifact", "backend", "precision", "device", "threads", "mode", "environment": {...},
     "results": [{"batch", "iterations", "latency_ms": {"min","mean","p50","p90","p99","max"},
                  "throughput_ips", "load_s", "samples_ms": [...]}],
     "compare": {"label": "fp32", "results": [...], "speedup": {"1": x, "8": y}} | null,
     "pipeline": {"stages_ms": {"decode","preprocess","infer","postprocess"}, "fps"} | null}
"""

from edge_resnet.bench.camera_path import PipelineResult, bundle_pipeline, run_pipeline, softmax_topk
from edge_resnet.bench.latency import (
    COMPARISONS,
    BenchOptions,
    LatencyStats,
    Measurement,
    Mode,
    Schedule,
    Subject,
    benchmark,
    cap_samples,
    cpu_model_name,
    measure_batch,
    open_target,
    percentile,
    speedup,
    throughput,
)

__all__ = [
    "COMPARISONS",
    "BenchOptions",
    "LatencyStats",
    "Measurement",
    "Mode",
    "PipelineResult",
    "Schedule",
    "Subject",
    "benchmark",
    "bundle_pipeline",
    "cap_samples",
    "cpu_model_name",
    "measure_batch",
    "open_target",
    "percentile",
    "run_pipeline",
    "softmax_topk",
    "speedup",
    "throughput",
]
