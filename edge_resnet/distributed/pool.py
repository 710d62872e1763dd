"""One actor pool over a Dataset of spans: Ray Data's ``map_batches`` with a callable class.

Each actor takes ``threads`` CPUs (its backend runs that many threads); the pool has ``actors`` of
them (default: as many as the cluster's CPUs allow). Recovery is Ray Data's: its actor pools run with
``max_restarts=-1`` and ``max_task_retries=-1`` (Ray's defaults for ``map_batches`` with a class), so
an actor that dies is restarted and the batches it held run again; no scheduling or retrying of ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edge_resnet.distributed.cluster import Cluster, RayOptions
from edge_resnet.distributed.plan import Span, to_ray_dataset


def run_pool(cluster: Cluster, spans: list[Span], actor: type, kwargs: dict[str, Any],
             options: RayOptions) -> Iterator[dict[str, Any]]:
    """Result rows of ``actor`` over ``spans``, as they finish (any order; see :mod:`.merge`)."""
    ds = to_ray_dataset(cluster.ray, spans)
    mapped = ds.map_batches(
        actor, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="numpy", num_cpus=options.threads,
        compute=cluster.ray.data.ActorPoolStrategy(size=options.pool_size(cluster.cpus, len(spans))))
    yield from mapped.iter_rows()
