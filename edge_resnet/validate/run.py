"""``validate_bundle``: the bundle's artifact against the float reference, on the same batches.

The reference is the bundle's float graph (``model.float.onnx``) in ONNX Runtime FP32 on the CPU,
whatever the target: one fixed yardstick for every backend. Both run on the same preprocessed
batches (the bundle's preprocessing); metrics are folded batch by batch (memory does not grow with
the data set). Per-layer errors are measured on the Q/DQ graph in ONNX Runtime (see
:mod:`edge_resnet.validate.layers`), on a bounded number of images spread over the data set.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_resnet.bundle import Bundle
from edge_resnet.data import Dataset
from edge_resnet.errors import BundleError, DataError, EdgeResnetError
from edge_resnet.validate.layers import LayerError, per_layer_errors
from edge_resnet.validate.metrics import StreamingMetrics
from edge_resnet.validate.reference import FloatReference

log = logging.getLogger(__name__)

LAYER_IMAGES = 64  # images for the per-layer error
MAX_CONFUSION_CLASSES = 100  # above this the JSON carries per-class accuracy but no confusion matrices
BATCH_SIZE = 32


# --------------------------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class BudgetCheck:
    """``drop`` in points: of top-1 accuracy (labelled data) or of top-1 agreement (100 * (1 - agreement))."""

    max_drop: float
    metric: str  # "top1" | "agreement"
    drop: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "metric": self.metric, "drop": self.drop, "passed": self.passed}

    def describe(self) -> str:
        what = "top-1 drop" if self.metric == "top1" else "disagreement with float"
        verdict = "within budget" if self.passed else "OVER BUDGET"
        return f"{what} {self.drop:.2f} points, budget {self.max_drop:.2f}: {verdict}"


_BUDGET_TOLERANCE = 1e-9  # points: 100 * (a - b) of fractions is not exact


# --------------------------------------------------------------------------------------------- result


@dataclass
class DriftMetrics:
    """Fractions 0..1, drops in percentage points; None where the data or the output kind has no such metric."""

    agreement_top1: float | None
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    float_top1: float | None = None
    int8_top1: float | None = None
    float_top5: float | None = None
    int8_top5: float | None = None
    top1_drop_points: float | None = None
    top5_drop_points: float | None = None

    @classmethod
    def from_stream(cls, m: StreamingMetrics) -> DriftMetrics:
        f1, i1, f5, i5 = (m.accuracy(w, k) for w, k in (("float", 1), ("int8", 1), ("float", 5), ("int8", 5)))
        return cls(m.agreement, m.cosine_mean, m.cos_min if m.count else float("nan"), m.sqnr, f1, i1, f5, i5,
                   _drop(f1, i1), _drop(f5, i5))

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _finite(value: Any) -> Any:
    """Replace non-finite floats (inf SQNR of identical outputs, nan) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _drop(ref: float | None, out: float | None) -> float | None:
    return None if ref is None or out is None else 100.0 * (ref - out)


@dataclass(frozen=True)
class ClassAccuracy:
    name: str
    support: int
    float_acc: float
    int8_acc: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, "support": self.support, "float_acc": self.float_acc, "int8_acc": self.int8_acc}


@dataclass
class ValidationResult:
    bundle: str
    target: str
    backend: str
    precision: str
    device: str
    source: str
    count: int
    labelled: bool
    metrics: DriftMetrics
    per_class: list[ClassAccuracy] = field(default_factory=list)
    confusion: dict[str, Any] | None = None  # {"labels": [...], "float": [[...]], "int8": [[...]]}
    per_layer: list[LayerError] = field(default_factory=list)  # worst first (Q/DQ graph in ONNX Runtime)
    budget: BudgetCheck | None = None
    kept_float: list[str] = field(default_factory=list)
    bundle_sha256: str | None = None  # the bundle's manifest integrity hash: which bundle, wherever it is copied

    def to_json(self) -> dict[str, Any]:
        """The validation JSON (read by the report module). Strict JSON: an infinite SQNR (outputs
        identical to the reference) is written as null."""
        return _finite({
            "bundle": self.bundle, "bundle_sha256": self.bundle_sha256, "target": self.target, "backend": self.backend, "precision": self.precision,
            "device": self.device,
            "data": {"source": self.source, "count": self.count, "labelled": self.labelled},
            "reference": {"runtime": "onnxruntime", "precision": "fp32"},
            "metrics": self.metrics.to_dict(),
            "per_class": [c.to_dict() for c in self.per_class],
            "confusion": self.confusion,
            "per_layer": [e.to_dict() for e in self.per_layer],
            "budget": self.budget.to_dict() if self.budget else None,
            "kept_float": list(self.kept_float),
        })

    def write_json(self, path: str | Path) -> Path:
        """Atomically (a reader never sees half a file); write errors are one OutputError."""
        from edge_resnet.outputs import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")

    def check_budget(self, max_drop: float) -> BudgetCheck:
        """Set and return ``budget``. Labelled data: top-1 drop; else disagreement, both in points."""
        m = self.metrics
        if m.top1_drop_points is not None:
            metric, drop = "top1", m.top1_drop_points
        elif m.agreement_top1 is not None:
            metric, drop = "agreement", 100.0 * (1.0 - m.agreement_top1)
        else:
            raise EdgeResnetError(
                "a drift budget needs top-1 accuracy or top-1 agreement, and this bundle outputs features "
                "(no classes)", "drop --max-drop; judge a feature model by its cosine similarity and SQNR")
        self.budget = BudgetCheck(float(max_drop), metric, float(drop), bool(drop <= max_drop + _BUDGET_TOLERANCE))
        return self.budget


# ---------------------------------------------------------------------------------------------- labels


def label_map(bundle_labels: list[str] | None, class_names: list[str] | None, num_outputs: int) -> np.ndarray | None:
    """Data label index -> model output index. None: the data's labels are the output indices already.

    Class folders are matched to the bundle's labels.txt by name, so a data set with a subset of the
    model's classes (in any order) is scored correctly.
    """
    if not class_names or not bundle_labels:
        return None
    if list(class_names) == list(bundle_labels):
        return None
    index = {name: i for i, name in enumerate(bundle_labels)}
    missing = [c for c in class_names if c not in index]
    if not missing:
        return np.asarray([index[c] for c in class_names], dtype=np.int64)
    if bundle_labels == [f"class_{i}" for i in range(num_outputs)] and len(class_names) <= num_outputs:
        log.warning("the bundle has no class names (labels.txt is class_0, class_1, ...): the data's classes "
                    "%s are taken, in that order, as outputs 0..%d", class_names[:3], len(class_names) - 1)
        return None
    raise DataError(f"the data's classes {missing[:5]}{' ...' if len(missing) > 5 else ''} are not in the bundle's "
                    f"labels.txt ({', '.join(bundle_labels[:5])}{', ...' if len(bundle_labels) > 5 else ''})",
                    "name the class folders after labels.txt, or compile with --labels matching the folders")


def _mapped(y: np.ndarray | None, mapping: np.ndarray | None, num_outputs: int) -> np.ndarray | None:
    if y is None:
        return None
    y = mapping[y] if mapping is not None else np.asarray(y, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_outputs):
        raise DataError(f"label {int(y.max() if y.max() >= num_outputs else y.min())} is outside the model's "
                        f"{num_outputs} outputs", "check the labels of the data against the model's classes")
    return y


# ---------------------------------------------------------------------------------------------- running


def _layer_sample(n: int, count: int) -> set[int]:
    """Positions of ``count`` images spread evenly over ``n`` (folders list class by class)."""
    if count <= 0 or n <= 0:
        return set()
    return {int(i) for i in np.linspace(0, n - 1, num=min(count, n)).round()}


@dataclass
class _Pass:
    stream: StreamingMetrics
    layer_x: list[np.ndarray]


def _compare(reference: Any, runner: Any, data: Dataset, classes: int | None, mapping: np.ndarray | None,
             batch_size: int, layer_images: int, progress: bool) -> _Pass:
    stream = StreamingMetrics(classes)
    keep = _layer_sample(len(data), layer_images)
    kept: list[np.ndarray] = []
    position = 0
    bar = tqdm(total=len(data), unit="img", desc="validating", disable=not progress, leave=False)
    try:
        for batch in data.batches(batch_size):
            ref = reference.infer(batch.x)
            out = runner.infer(batch.x)
            y = _mapped(batch.y, mapping, classes) if classes is not None else None
            stream.update(ref, out, y)
            rows = [i for i in range(batch.x.shape[0]) if position + i in keep]
            if rows:
                kept.append(batch.x[rows].copy())
            position += batch.x.shape[0]
            bar.update(batch.x.shape[0])
    finally:
        bar.close()
    if stream.count == 0:
        raise DataError(f"no images to validate on in {data.info['path']}", "pass --data with images")
    return _Pass(stream, kept)


def _compare_on_ray(bundle: Bundle, data: Dataset, classes: int | None, mapping: np.ndarray | None,
                    batch_size: int, layer_images: int, progress: bool, ray: Any) -> _Pass:
    """``_compare`` on a Ray cluster: the same batches and metrics (see edge_resnet.distributed)."""
    from edge_resnet.distributed.validate import compare_on_ray

    labels = _mapped(data.labels, mapping, classes) if classes is not None else None
    stream, kept = compare_on_ray(bundle, data, classes, labels, batch_size, _layer_sample(len(data), layer_images),
                                  progress, ray)
    if stream.count == 0:
        raise DataError(f"no images to validate on in {data.info['path']}", "pass --data with images")
    return _Pass(stream, kept)


def _per_class(stream: StreamingMetrics, names: list[str]) -> list[ClassAccuracy]:
    if "float" not in stream.confusion:
        return []
    f, q = stream.confusion["float"], stream.confusion["int8"]
    support = f.sum(1)
    return [ClassAccuracy(names[c], int(support[c]), float(f[c, c] / support[c]), float(q[c, c] / support[c]))
            for c in range(len(support)) if support[c] > 0]


def _confusion(stream: StreamingMetrics, names: list[str]) -> dict[str, Any] | None:
    if "float" not in stream.confusion or len(names) > MAX_CONFUSION_CLASSES:
        return None
    return {"labels": names, "float": stream.confusion["float"].tolist(), "int8": stream.confusion["int8"].tolist()}


def kept_float_of(manifest: dict[str, Any]) -> list[str]:
    if "kept_float" in manifest:
        return list(manifest["kept_float"])
    return list((manifest.get("quantization") or {}).get("kept_float", []))


def _num_outputs(reference: FloatReference) -> int | None:
    shape = reference.session.get_outputs()[0].shape
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None


def validate_bundle(bundle: Bundle, data: Dataset, *, max_drop: float | None = None, per_layer: bool = True,
                    progress: bool = True, batch_size: int = BATCH_SIZE, layer_images: int = LAYER_IMAGES,
                    runner: Any = None, reference: FloatReference | None = None,
                    ray: Any = None) -> ValidationResult:
    """Run the float reference and the bundle's artifact on ``data``; see the module docstring.

    ``runner``/``reference``: already loaded ones to reuse (the drift budget's rebuild loop).
    ``ray``: run the comparison on a Ray cluster (``auto``/``local``/an address, or a
    ``distributed.cluster.RayOptions``); the result is the local one.
    """
    reference = reference or FloatReference(bundle.float_model())
    classifier = bundle.output_kind == "logits"
    classes = _num_outputs(reference) if classifier else None
    if classifier and classes is None:
        raise BundleError(f"the float graph of {bundle.path} has output shape {reference.session.get_outputs()[0].shape},"
                          " not N x classes", "compile the bundle again")
    names = bundle.labels or [f"class_{i}" for i in range(classes or 0)]
    if classes is not None and len(names) != classes:
        names = [f"class_{i}" for i in range(classes)]
    mapping = label_map(names, data.class_names, classes) if classes is not None and data.labels is not None else None
    if ray is not None:
        done = _compare_on_ray(bundle, data, classes, mapping, batch_size, layer_images if per_layer else 0,
                               progress, ray)
    else:
        own_runner = runner is None
        runner = runner or bundle.load_runner()
        try:
            done = _compare(reference, runner, data, classes, mapping, batch_size, layer_images if per_layer else 0,
                            progress)
        finally:
            if own_runner:
                runner.close()
    stream = done.stream
    art = bundle.artifact
    kept = kept_float_of(bundle.manifest)
    result = ValidationResult(
        bundle=str(bundle.path.absolute()), target=bundle.profile.name, backend=art.backend.value, precision=art.precision.value,
        device=str(art.info.get("device") or bundle.profile.device), source=str(data.info["path"]),
        count=stream.count, labelled=bool(stream.labelled), metrics=DriftMetrics.from_stream(stream),
        per_class=_per_class(stream, names), confusion=_confusion(stream, names), kept_float=kept,
        bundle_sha256=(bundle.manifest.get("integrity") or {}).get("manifest_sha256"))
    if per_layer:
        result.per_layer = layer_errors(bundle, done.layer_x, kept, progress)
    if max_drop is not None:
        result.check_budget(max_drop)
    return result


def layer_errors(bundle: Bundle, xs: list[np.ndarray], kept_float: list[str], progress: bool) -> list[LayerError]:
    """Per-layer SQNR of the bundle's Q/DQ graph; [] for float builds and implicit (calibration-cache) builds."""
    int8 = bundle.manifest.get("graphs", {}).get("int8")
    if not int8 or not xs:
        if not int8 and bundle.manifest.get("precision") == "int8":
            log.info("no Q/DQ graph in %s (implicit quantization): no per-layer error", bundle.path)
        return []
    total = sum(x.shape[0] for x in xs)

    def batches() -> Iterator[np.ndarray]:
        yield from xs

    return per_layer_errors(bundle.float_model(), bundle.file(int8), batches(), kept_float=kept_float,
                            progress=progress, total=total)
