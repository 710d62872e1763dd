"""The calibration statistics pass (``compile``/``quantize --ray``) on an actor pool.

Each actor runs the float graph with the calibrated tensors as outputs on its batches and returns
one :class:`StreamingHistogram` per tensor and batch; the driver merges them. The histograms'
bin width is a function of the running maximum only, so merged partial histograms are identical to
one pass over all the data: the same amax, the same scales, a byte-identical Q/DQ graph.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import onnx

from edge_resnet.data import Dataset
from edge_resnet.distributed.actors import CalibrateActor
from edge_resnet.distributed.cluster import RayOptions, connect
from edge_resnet.distributed.merge import ordered
from edge_resnet.distributed.pool import run_pool
from edge_resnet.distributed.spans import DataPlan, spans
from edge_resnet.errors import DataError, QuantizationError
from edge_resnet.quant.collect import ActivationStats
from edge_resnet.quant.histogram import STATS_NUM_BINS, StreamingHistogram

log = logging.getLogger(__name__)


def collect_statistics_on_ray(model: onnx.ModelProto, tensors: list[str], data: Dataset, batch_size: int,
                              ray: RayOptions | str, *, num_bins: int = STATS_NUM_BINS,
                              progress: bool = True, bias_correction: bool = False) -> ActivationStats:
    """``collect_statistics`` over ``data``'s batches, on a Ray cluster; the same statistics.

    Bias correction's statistics need only the first ``BIAS_IMAGES`` images: the driver gathers them
    after the cluster's pass (``collect_bias_statistics``), with the merged histograms.
    """
    if not tensors:
        raise QuantizationError("nothing to calibrate: the graph has no quantizable layer",
                                "check the model and the --exclude list")
    options = RayOptions.of(ray)
    batches = spans(len(data), batch_size)
    hists = {t: StreamingHistogram(num_bins, name=t) for t in tensors}
    images = 0
    start = time.perf_counter()
    with connect(options.cluster) as cluster:
        put: Any = cluster.ray.put
        kwargs = {"model": put(model.SerializeToString()), "tensors": list(tensors), "plan": put(DataPlan.of(data, None)),
                  "num_bins": num_bins, "threads": options.threads}
        rows = run_pool(cluster, batches, CalibrateActor, kwargs, options)
        for row in ordered(rows, len(batches), len(data), "calibrating (ray)", progress):
            for name, h in row["hists"].items():
                hists[name].merge(h)
            images += int(row["n"])
    if images == 0:
        raise DataError("the calibration set is empty", "pass a folder, list, array or video with images to --calib")
    bias = None
    if bias_correction:
        from edge_resnet.quant.collect import collect_bias_statistics

        bias = collect_bias_statistics(model, list(tensors), (b.x for b in data.batches(batch_size)), hists)
    stats = ActivationStats(hists, images, time.perf_counter() - start, bias)
    log.info("calibration statistics (ray): %d tensors over %d images in %.1f s", len(tensors), images, stats.seconds)
    return stats
