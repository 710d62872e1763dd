"""What the workers read: a Ray Dataset whose rows are batches of items, in source order.

A row is ``{"seq": k, "start": s, "stop": e}``: items ``s..e-1`` of a table of items shipped once as
a Ray object. For validation and calibration the items are the positions (and ids) of the images
the driver selected with ``open_dataset``, cut into the same batches as the local run (so every
batch, and so every output, is the local one); for batch inference they are (source file, frame
index) pairs, a batch never spanning two videos. One row per block: Ray spreads rows over actors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.data import Dataset, PreprocessSpec
from edge_resnet.errors import DataError


@dataclass(frozen=True)
class Span:
    seq: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def spans(total: int, batch_size: int, breaks: np.ndarray | None = None) -> list[Span]:
    """Consecutive batches of at most ``batch_size`` items; a batch never crosses a ``breaks`` position."""
    bounds = sorted({0, total, *(int(b) for b in (breaks if breaks is not None else []) if 0 < b < total)})
    out: list[Span] = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        for s in range(lo, hi, batch_size):
            out.append(Span(len(out), s, min(s + batch_size, hi)))
    return out


def to_ray_dataset(ray: Any, batches: list[Span]) -> Any:
    rows = [{"seq": b.seq, "start": b.start, "stop": b.stop} for b in batches]
    return ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))


# ------------------------------------------------------------------------ a data set the driver opened


@dataclass(frozen=True)
class DataPlan:
    """How a worker re-opens the driver's data set: the source, its preprocessing, the items chosen."""

    source: str
    spec: dict[str, Any]
    stride: int
    positions: np.ndarray  # in the source's listing, in the driver's order
    ids: list[str]  # what the driver's listing calls them (checked on the worker)
    labels: np.ndarray | None  # model output index per item (already mapped), or None
    keep: np.ndarray  # bool per item: returned to the driver (the per-layer error's images)

    @classmethod
    def of(cls, data: Dataset, labels: np.ndarray | None, keep: set[int] | None = None) -> DataPlan:
        mask = np.zeros(len(data), dtype=bool)
        if keep:
            mask[sorted(keep)] = True
        return cls(str(data.info["path"]), data.spec.to_dict(), int(data.info.get("stride", 10)), data.positions,
                   data.ids, labels, mask)


class PlanReader:
    """The worker's side of a :class:`DataPlan`: the source opened once per actor, batches by span."""

    def __init__(self, plan: DataPlan) -> None:
        from edge_resnet.data.datasets import open_listing

        self.plan = plan
        self.listing = open_listing(plan.source, PreprocessSpec.from_dict(plan.spec), stride=plan.stride)

    def batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(x, labels, keep mask) of items ``start..stop-1``: the driver's batch, preprocessed here."""
        plan = self.plan
        subset = self.listing.subset(plan.positions[start:stop])
        ids = subset.ids
        if ids != plan.ids[start:stop]:
            raise DataError(f"{plan.source} lists other items on this worker than on the driver "
                            f"({ids[:1]} vs {plan.ids[start:start + 1]})",
                            "give every node the same data at the same path (a shared filesystem)")
        got = list(subset.batches(max(1, stop - start)))
        if len(got) != 1 or got[0].x.shape[0] != stop - start:
            raise DataError(f"items {start}..{stop - 1} of {plan.source} could not all be read on this worker",
                            "check that every node reads the same files (a shared filesystem)")
        y = plan.labels[start:stop] if plan.labels is not None else None
        return got[0].x, y, plan.keep[start:stop]


# ------------------------------------------------------------------------- batch inference: files/frames


@dataclass(frozen=True)
class FrameTable:
    """Every item of a batch run: its source file and frame index (0 for an image)."""

    files: list[str]
    is_video: list[bool]
    file_index: np.ndarray  # int32 per item
    frame: np.ndarray  # int64 per item
    # the driver's working directory: workers run elsewhere, so relative sources are read against it
    root: str = field(default_factory=os.getcwd)

    def __len__(self) -> int:
        return int(self.frame.size)

    def video_breaks(self) -> np.ndarray:
        """Item positions where a new file starts after or before a video (batches are cut there)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.int64)
        change = np.flatnonzero(np.diff(self.file_index)) + 1
        video = np.asarray(self.is_video, dtype=bool)
        keep = video[self.file_index[change]] | video[self.file_index[change - 1]]
        return change[keep]

    def source_of(self, i: int) -> str:
        """The source as the user named it (what the results report)."""
        return self.files[int(self.file_index[i])]

    def path_of(self, i: int) -> str:
        """Where a worker reads it."""
        return os.path.join(self.root, self.source_of(i))


def frame_table(files: list[Path], frame_counts: dict[int, int]) -> FrameTable:
    """Images (one item each) and videos (``frame_counts[i]`` items), in the order of ``files``."""
    fi: list[np.ndarray] = []
    fr: list[np.ndarray] = []
    for i, _ in enumerate(files):
        n = frame_counts.get(i, 1)
        fi.append(np.full(n, i, dtype=np.int32))
        fr.append(np.arange(n, dtype=np.int64) if i in frame_counts else np.zeros(1, dtype=np.int64))
    return FrameTable([str(f) for f in files], [i in frame_counts for i in range(len(files))],
                      np.concatenate(fi) if fi else np.zeros(0, np.int32),
                      np.concatenate(fr) if fr else np.zeros(0, np.int64))
