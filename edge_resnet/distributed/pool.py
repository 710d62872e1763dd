"""One actor pool over a Dataset of spans: Ray Data's ``map_batches`` with a callable class.

Each actor takes ``threads`` CPUs (its backend runs that many threads); the pool has ``actors`` of
them (default: as many as the cluster's CPUs allow). Recovery is Ray Data's: its actor pools run with
``max_restarts=-1`` and ``max_task_retries=-1`` (Ray's defaults for ``map_batches`` with a class), so
an actor that dies is restarted and the batches it held run again; no scheduling or retrying of ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edge_resnet.distributed.cluster import Cluster, RayError, RayOptions
from edge_resnet.distributed.spans import Span, to_ray_dataset
from edge_resnet.errors import EdgeResnetError


def _cause(exc: BaseException) -> EdgeResnetError | None:
    """The edge-resnet error a worker raised, from inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EdgeResnetError) and type(e).__module__.startswith("edge_resnet"):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


@contextmanager
def worker_errors() -> Iterator[None]:
    """A worker's DataError/BundleError/... reaches the user as that one message, not Ray's traceback."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, EdgeResnetError) and type(exc).__module__.startswith("edge_resnet"):
            raise  # raised on the driver
        cause = _cause(exc)  # Ray's RayTaskError(DataError) is also a DataError, with a traceback in its text
        if cause is not None:
            raise cause from None
        if type(exc).__module__.startswith("ray"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayError(f"the Ray cluster failed: {first}", "run with --debug for Ray's traceback; check "
                           "`ray status` and the workers' logs") from exc
        raise


def run_pool(cluster: Cluster, spans: list[Span], actor: type, kwargs: dict[str, Any],
             options: RayOptions) -> Iterator[dict[str, Any]]:
    """Result rows of ``actor`` over ``spans``, as they finish (any order; see :mod:`.merge`)."""
    ds = to_ray_dataset(cluster.ray, spans)
    mapped = ds.map_batches(
        actor, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="numpy", num_cpus=options.threads,
        compute=cluster.ray.data.ActorPoolStrategy(size=options.pool_size(cluster.cpus, len(spans))))
    with worker_errors():
        yield from mapped.iter_rows()
