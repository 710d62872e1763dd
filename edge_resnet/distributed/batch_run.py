"""``run BUNDLE --source folder/|list.txt|video --ray ... --out results.parquet|.jsonl``.

Labels (top-k) or embeddings for every image and every video frame, with its source and frame
index, in source order: files in the order listed, frames in frame order. Video frames are counted
by Ray tasks (one per video), then every item goes into a span of at most ``batch_size`` (a span
never crosses a video boundary), an actor pool runs the runtime on the spans, and the driver writes
the results in order as they come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.bundle import load_bundle
from edge_resnet.distributed.actors import InferActor
from edge_resnet.distributed.cluster import RayOptions, connect
from edge_resnet.distributed.frames import count_frames, is_video, list_sources
from edge_resnet.distributed.merge import ordered
from edge_resnet.distributed.output import check_out, open_writer
from edge_resnet.distributed.pool import run_pool, worker_errors
from edge_resnet.distributed.shipping import BundlePackage
from edge_resnet.distributed.spans import frame_table, spans
from edge_resnet.errors import BundleError, DataError
from edge_resnet.runtime.model import ModelKind, model_kind

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class BatchRunSummary:
    out: Path
    files: int
    videos: int
    items: int
    seconds: float
    actors: int
    nodes: int

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")

    def describe(self) -> str:
        return (f"{self.items} images/frames from {self.files} file(s) ({self.videos} video(s)) in {self.seconds:.1f} s: "
                f"{self.per_second:.1f} per s on {self.actors} actor(s), {self.nodes} node(s)")


def _label_names(labels: list[str] | None, n: int) -> list[str]:
    names = list(labels or [])
    return names + [str(i) for i in range(len(names), n)]  # as the runtime names classes without a label


def run_batch(bundle_dir: str | Path, source: str, out: str | Path, ray: RayOptions | str, *, top_k: int = 5,
              batch_size: int = DEFAULT_BATCH, progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> BatchRunSummary:
    """Run ``bundle_dir`` over every image and frame of ``source`` on a Ray cluster; results to ``out``.

    ``on_batch``: called on the driver with each batch's number once its results are written.
    """
    check_out(out)
    bundle = load_bundle(bundle_dir)
    if model_kind(bundle.manifest["model"]) is ModelKind.FEATURE_MAP:
        raise BundleError(f"{bundle.path} outputs feature maps, and a batch run writes labels or embeddings",
                          "compile a classifier, or an embedding bundle with --no-top --pooling avg")
    files = list_sources(source)
    videos = [i for i, f in enumerate(files) if is_video(f)]
    options = RayOptions.of(ray)
    start = time.perf_counter()
    with connect(options.cluster) as cluster:
        counter = cluster.ray.remote(num_cpus=1)(count_frames)
        with worker_errors():
            counts = dict(zip(videos, cluster.ray.get([counter.remote(str(files[i].resolve())) for i in videos]), strict=True))
        table = frame_table(files, counts)
        if len(table) == 0:
            raise DataError(f"{source} has no frames to run on (its videos are empty)", "check that the videos play")
        batches = spans(len(table), batch_size, table.video_breaks())
        kwargs = {"package": cluster.ray.put(BundlePackage.of(bundle)), "table": cluster.ray.put(table),
                  "top_k": top_k, "threads": options.threads}
        names: list[str] | None = None
        writer = open_writer(out)
        try:
            rows = run_pool(cluster, batches, InferActor, kwargs, options)
            for row in ordered(rows, len(batches), len(table), "inferring (ray)", progress):
                b = batches[int(row["seq"])]
                columns: dict[str, Any] = {"source": [table.source_of(i) for i in range(b.start, b.stop)],
                                           "frame": table.frame[b.start:b.stop]}
                if row.get("embeddings") is not None:
                    columns["embedding"] = np.asarray(row["embeddings"])
                else:
                    idx = np.asarray(row["indices"])
                    names = names or _label_names(bundle.labels, int(bundle.manifest["model"].get("num_classes") or 0))
                    if idx.size and int(idx.max()) >= len(names):
                        names = _label_names(names, int(idx.max()) + 1)
                    columns.update(indices=idx, scores=np.asarray(row["scores"]),
                                   labels=[[names[j] for j in r] for r in idx.tolist()])
                writer.write(columns)
                if on_batch is not None:
                    on_batch(int(row["seq"]))
            path = writer.commit()
        except BaseException:
            writer.abort()
            raise
        summary = BatchRunSummary(path, len(files), len(videos), len(table), time.perf_counter() - start,
                                  options.pool_size(cluster.cpus, len(batches)), cluster.nodes)
    return summary
