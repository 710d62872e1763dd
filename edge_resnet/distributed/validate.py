"""``validate --ray``: the local comparison's batches run by an actor pool, metrics merged in order.

The batches are the local run's (same ``batch_size`` cuts of the same selected images), each actor
runs the float reference and the artifact on them, and the per-batch ``StreamingMetrics`` are
merged in batch order, so the totals are the very sums of the local run. Confusion matrices travel
as their non-zero cells (at most a batch's worth) and are added into the driver's.
"""

from __future__ import annotations

import numpy as np

from edge_resnet.bundle import Bundle
from edge_resnet.data import Dataset
from edge_resnet.distributed.actors import ValidateActor, add_confusion
from edge_resnet.distributed.cluster import RayOptions, connect
from edge_resnet.distributed.merge import ordered
from edge_resnet.distributed.pool import run_pool
from edge_resnet.distributed.shipping import BundlePackage
from edge_resnet.distributed.spans import DataPlan, spans
from edge_resnet.validate.metrics import StreamingMetrics


def compare_on_ray(bundle: Bundle, data: Dataset, classes: int | None, labels: np.ndarray | None,
                   batch_size: int, keep: set[int], progress: bool, ray: RayOptions | str) -> tuple[StreamingMetrics, list[np.ndarray]]:
    """(merged metrics, the kept images' inputs in order) of ``bundle`` vs its float graph on ``data``."""
    batches = spans(len(data), batch_size)
    plan = DataPlan.of(data, labels, keep)
    stream = StreamingMetrics(classes)
    kept: list[np.ndarray] = []
    options = RayOptions.of(ray)
    with connect(options.cluster) as cluster:
        kwargs = {"package": cluster.ray.put(BundlePackage.of(bundle)), "plan": cluster.ray.put(plan),
                  "classes": classes, "threads": options.threads}
        rows = run_pool(cluster, batches, ValidateActor, kwargs, options)
        for row in ordered(rows, len(batches), len(data), "validating (ray)", progress):
            stream.merge(row["metrics"])
            add_confusion(stream, row["confusion"])
            if row["kept"] is not None:
                kept.append(row["kept"])
    return stream, kept
