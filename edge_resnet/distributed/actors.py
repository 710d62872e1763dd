"""The callable classes Ray Data's actor pool runs: each loads its bundle (or graph) once per actor.

Every ``__call__`` gets one row (a batch span, see :mod:`.plan`) and returns one row: its ``seq``,
its item count ``n`` and its result, which the driver merges. The work inside is the local code's:
the bundle's runner and preprocessing, ``FloatReference``, ``StreamingMetrics``,
``StreamingHistogram`` and the runtime's postprocessing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.distributed.shipping import BundlePackage, open_shipped
from edge_resnet.distributed.spans import FrameTable, PlanReader


def _value(obj: Any) -> Any:
    """An object passed to an actor, fetched if it came as a Ray object reference."""
    import ray

    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def _row(batch: dict[str, np.ndarray]) -> tuple[int, int, int]:
    if len(batch["seq"]) != 1:
        raise RuntimeError(f"expected one span per call, got {len(batch['seq'])}")  # map_batches(batch_size=1)
    return int(batch["seq"][0]), int(batch["start"][0]), int(batch["stop"][0])


def _out(seq: int, n: int, **columns: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"seq": np.array([seq], np.int64), "n": np.array([n], np.int64)}
    for name, value in columns.items():
        col = np.empty(1, dtype=object)
        col[0] = value
        out[name] = col
    return out


class _ShippedBundle:
    """Unpacks and verifies the shipped bundle in the actor's constructor; removes it with the actor."""

    def __init__(self, package: BundlePackage | Any) -> None:
        self.bundle, self._root = open_shipped(_value(package))

    def __del__(self) -> None:
        root: Path | None = getattr(self, "_root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


class ValidateActor(_ShippedBundle):
    """The float reference and the bundle's artifact on the same batch; returns that batch's metrics."""

    def __init__(self, package: Any, plan: Any, classes: int | None, threads: int) -> None:
        from edge_resnet.validate.reference import FloatReference

        super().__init__(package)
        self.reader = PlanReader(_value(plan))
        self.classes = classes
        self.reference = FloatReference(self.bundle.float_model(), threads)
        self.runner = self.bundle.load_runner(threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edge_resnet.validate.metrics import StreamingMetrics

        seq, start, stop = _row(batch)
        x, y, keep = self.reader.batch(start, stop)
        metrics = StreamingMetrics(self.classes)
        metrics.update(self.reference.infer(x), self.runner.infer(x), y if self.classes is not None else None)
        confusion = sparse_confusion(metrics)
        return _out(seq, stop - start, metrics=metrics, confusion=confusion,
                    kept=x[keep].copy() if keep.any() else None)


def sparse_confusion(metrics: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Take the batch's confusion matrices out of ``metrics`` as (flat index, count) of their non-zero
    cells: a batch has at most batch-size of them, where a 1000-class matrix is 8 MB."""
    out = {}
    for key in list(metrics.confusion):
        flat = metrics.confusion.pop(key).reshape(-1)
        nz = np.flatnonzero(flat)
        out[key] = (nz, flat[nz])
    return out


def add_confusion(metrics: Any, sparse: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Add :func:`sparse_confusion`'s cells into ``metrics.confusion`` (exact integer counts)."""
    n = int(metrics.classes or 0)
    for key, (idx, counts) in sparse.items():
        if key not in metrics.confusion:
            metrics.confusion[key] = np.zeros((n, n), dtype=np.int64)
        metrics.confusion[key].reshape(-1)[idx] += counts


class CalibrateActor:
    """The float graph with the calibrated tensors as outputs; returns one batch's histograms."""

    def __init__(self, model: Any, tensors: list[str], plan: Any, num_bins: int, threads: int) -> None:
        import onnx

        from edge_resnet.quant.collect import _session

        self.tensors, self.num_bins = list(tensors), num_bins
        self.reader = PlanReader(_value(plan))
        self.session = _session(onnx.load_from_string(_value(model)), self.tensors, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edge_resnet.quant.histogram import StreamingHistogram

        seq, start, stop = _row(batch)
        x, _, _ = self.reader.batch(start, stop)
        outputs = self.session.run(self.tensors, {self.input_name: np.ascontiguousarray(x, np.float32)})
        hists = {}
        for name, out in zip(self.tensors, outputs, strict=True):
            h = StreamingHistogram(self.num_bins, name=name)
            h.update(out)
            hists[name] = h
        return _out(seq, stop - start, hists=hists)


class InferActor(_ShippedBundle):
    """The runtime (:func:`edge_resnet.runtime.load`'s Model) on image files and video frames."""

    def __init__(self, package: Any, table: Any, top_k: int, threads: int) -> None:
        from edge_resnet.runtime.model import model_of

        super().__init__(package)
        self.table: FrameTable = _value(table)
        self.top_k = top_k
        self.model = model_of(self.bundle, threads=threads)  # as edge_resnet.runtime.load, on the shipped bundle

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edge_resnet.distributed.frames import read_span
        from edge_resnet.runtime.model import ModelKind, top_k_softmax

        seq, start, stop = _row(batch)
        frames, order = read_span(self.table, start, stop)
        out = self.model.infer(frames, order)
        if self.model.kind is ModelKind.CLASSIFIER:
            idx, scores = top_k_softmax(out, min(self.top_k, out.shape[1]))
            return _out(seq, stop - start, indices=idx, scores=scores)
        return _out(seq, stop - start, embeddings=self.model.embeddings(out))
