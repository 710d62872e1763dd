"""Join or start a Ray cluster: ``--ray auto`` / ``local`` / ``ADDRESS``.

``local`` starts a cluster in this process sized to this machine (the cores this process may use)
and shuts it down afterwards; ``auto`` joins the cluster ``ray start`` runs on this machine (or
``RAY_ADDRESS``); anything else is the address of a running cluster (``host:port`` or
``ray://host:port``). A cluster that is already connected (e.g. by a program that calls us) is used
as it is and left running.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from types import ModuleType
from typing import Any

from edge_resnet.errors import EdgeResnetError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -c constraints.txt -e '.[ray]'  (or: pip install 'edge-resnet[ray]')"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # a local cluster's object store: batches and one bundle


class RayError(EdgeResnetError):
    """Ray is missing, or the cluster cannot be reached or fails."""


def import_ray() -> ModuleType:
    """``ray`` (with Ray Data), or one clear error naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is what we use; ray without [data] lacks pandas/pyarrow
    except ImportError as exc:
        raise RayError(f"--ray needs Ray with its Data library, which is not installed ({exc})",
                       INSTALL_HINT) from None
    return ray


class ClusterKind(str, Enum):
    LOCAL = "local"  # start one here, sized to this machine
    AUTO = "auto"  # the one `ray start` runs on this machine, or RAY_ADDRESS
    ADDRESS = "address"  # host:port or ray://host:port


@dataclass(frozen=True)
class ClusterSpec:
    kind: ClusterKind
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        value = str(text).strip()
        if not value:
            raise RayError("--ray needs a value", "use --ray local, --ray auto or --ray HOST:PORT")
        if value in (ClusterKind.LOCAL.value, ClusterKind.AUTO.value):
            return cls(ClusterKind(value))
        if ":" not in value:
            raise RayError(f"--ray {value!r} is neither local, auto nor a cluster address",
                           "use --ray local, --ray auto, or the HOST:PORT that `ray start --head` printed")
        return cls(ClusterKind.ADDRESS, value)

    def describe(self) -> str:
        return self.address if self.kind is ClusterKind.ADDRESS else self.kind.value


@dataclass(frozen=True)
class RayOptions:
    """``--ray`` and ``--ray-actors``: which cluster, and how many actors (each ``threads`` CPUs) to run."""

    cluster: str = "local"
    actors: int | None = None  # None: as many as the cluster's CPUs allow
    threads: int = 1

    @classmethod
    def of(cls, value: RayOptions | str) -> RayOptions:
        return value if isinstance(value, RayOptions) else cls(str(value))

    def pool_size(self, cpus: int, batches: int) -> int:
        n = self.actors or max(1, cpus // self.threads)
        return max(1, min(n, batches))


def check_ray(value: str | None, actors: int | None = None) -> RayOptions | None:
    """The CLI's ``--ray``/``--ray-actors``, checked before any long work (Ray installed, value valid)."""
    if value is None:
        if actors is not None:
            raise RayError("--ray-actors needs --ray", "add --ray local (or auto, or a cluster address)")
        return None
    ClusterSpec.parse(value)
    import_ray()
    return RayOptions(value, actors)


@dataclass(frozen=True)
class Cluster:
    """A connected cluster: its CPUs (what actor pools are sized by) and node count."""

    ray: ModuleType
    spec: ClusterSpec
    cpus: int
    nodes: int


def _init_kwargs(spec: ClusterSpec) -> dict[str, Any]:
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if spec.kind is ClusterKind.LOCAL:
        from edge_resnet.host_cpu import available_cores

        return {**common, "num_cpus": available_cores(), "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
    return {"address": spec.address if spec.kind is ClusterKind.ADDRESS else "auto",
            "log_to_driver": False, "configure_logging": False}


def _quiet(ray: ModuleType) -> None:
    """Ray Data's own progress bars and per-run log lines off: the driver shows one bar of ours."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def _store_full(spec: ClusterSpec, disk_full: bool) -> RayError:
    """Ray's object store filled and could not spill: Ray refuses to spill once a node's disk is 95% full."""
    disk = "a node's disk is over Ray's capacity threshold (95% full)" if disk_full else "it could not spill to disk"
    return RayError(f"the Ray cluster ({spec.describe()}) ran out of object store memory and {disk}",
                    "free disk space on the cluster's nodes (Ray spills objects to its temp folder), or give "
                    "the cluster more object store memory (ray start --object-store-memory)")


@contextmanager
def connect(spec: ClusterSpec | str) -> Iterator[Cluster]:
    """Connect for the duration of the block (see the module docstring)."""
    spec = spec if isinstance(spec, ClusterSpec) else ClusterSpec.parse(spec)
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(**_init_kwargs(spec))
        except ConnectionError as exc:
            raise RayError(f"cannot reach a Ray cluster at {spec.describe()} ({exc})",
                           "start one with `ray start --head` (then --ray auto), pass its address, "
                           "or use --ray local") from None
        except (RuntimeError, ValueError) as exc:
            raise RayError(f"Ray could not start or join a cluster ({spec.describe()}): {exc}",
                           "check `ray status`; --ray local starts a cluster in this process") from None
        started = True
    _quiet(ray)
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        cluster = Cluster(ray, spec, int(resources.get("CPU", 1)), nodes)
        log.info("ray: %s, %d node(s), %d CPUs", spec.describe(), nodes, cluster.cpus)
        try:
            yield cluster
        except (ray.exceptions.OutOfDiskError, ray.exceptions.ObjectStoreFullError) as exc:
            raise _store_full(spec, isinstance(exc, ray.exceptions.OutOfDiskError)) from None
    finally:
        if started:
            ray.shutdown()
