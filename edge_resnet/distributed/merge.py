"""Results back on the driver: in source order, each batch exactly once, with a progress bar.

Ray Data returns the rows of ``map_batches`` as they finish, in any order; a batch whose worker died
is run again by Ray and comes back once. :class:`InOrder` holds early batches until the ones before
them arrive (memory: the batches in flight, not the data set), refuses a batch seen twice, and at the
end names any batch that never came: no image is counted twice or lost without an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from edge_resnet.distributed.cluster import RayError


class InOrder:
    """Reorders ``(seq, value)`` pairs into ``seq`` order 0, 1, 2, ... ``expected - 1``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.next = 0
        self._held: dict[int, Any] = {}

    def push(self, seq: int, value: Any) -> Iterator[Any]:
        if seq < self.next or seq in self._held:
            raise RayError(f"batch {seq} came back twice from the cluster", "report this as a bug of edge-resnet")
        if not 0 <= seq < self.expected:
            raise RayError(f"batch {seq} is not one of the {self.expected} batches sent", "report this as a bug")
        self._held[seq] = value
        while self.next in self._held:
            yield self._held.pop(self.next)
            self.next += 1

    def finish(self) -> None:
        if self.next != self.expected:
            missing = sorted(set(range(self.next, self.expected)) - set(self._held))
            raise RayError(f"{len(missing)} of {self.expected} batches never came back from the cluster "
                           f"(e.g. batch {missing[0]})", "run again; check `ray status` for lost nodes")


def ordered(rows: Iterable[dict[str, Any]], expected: int, total_items: int, desc: str,
            progress: bool = True) -> Iterator[dict[str, Any]]:
    """Rows with a ``seq`` and an item count ``n``, in ``seq`` order; a driver-side bar counts items."""
    order = InOrder(expected)
    bar = tqdm(total=total_items, unit="img", desc=desc, disable=not progress, leave=False)
    try:
        for row in rows:
            bar.update(int(row["n"]))
            yield from order.push(int(row["seq"]), row)
        order.finish()
    finally:
        bar.close()
