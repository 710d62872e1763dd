"""Accuracy and drift metrics: pure numpy, no I/O.

Outputs are compared row by row (one row per image); feature maps are flattened per image.
Top-k takes the k highest scores in a stable order (ties: the lower class index first), so the
top-1 of :func:`top_k_correct` is ``np.argmax`` and top-1 accuracy equals the trace of the
confusion matrix over the count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_resnet.postprocess import top_k_indices

_EPS = 1e-12


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim != 2 else a


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices of the k highest scores per row, best first (stable for ties)."""
    return top_k_indices(_rows(scores), k)


def top_k_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the label is among the k highest scores."""
    return (top_k(scores, k) == np.asarray(labels).reshape(-1, 1)).any(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction (0..1) of rows whose label is among the k highest scores."""
    return float(top_k_correct(scores, labels, k).mean())


def top1_agreement(reference: np.ndarray, output: np.ndarray) -> float:
    """Fraction (0..1) of rows whose argmax is the same in both."""
    return float((_rows(reference).argmax(1) == _rows(output).argmax(1)).mean())


def cosine_similarity(reference: np.ndarray, output: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity per row. Two all-zero rows count as identical (1.0), one zero row as 0."""
    a, b = _rows(reference), _rows(output)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, _EPS)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def sqnr_from_energy(signal: float, noise: float) -> float:
    """10*log10(signal / noise) in dB; +inf when there is no noise (identical outputs)."""
    if noise <= 0.0:
        return float("inf")
    if signal <= 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10*log10(sum(ref^2) / sum((ref - out)^2)), in dB."""
    ref, out = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    return sqnr_from_energy(float(np.square(ref).sum()), float(np.square(ref - out).sum()))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(support, accuracy) per class; accuracy is NaN for a class with no images."""
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return support, acc


# ------------------------------------------------------------------------------------ streaming


@dataclass
class StreamingMetrics:
    """Metrics folded batch by batch, so memory does not grow with the number of images.

    ``topk`` is only used when ``classes`` is set (classifier outputs); ``labels`` may be None.
    """

    classes: int | None
    topk: tuple[int, ...] = (1, 5)
    count: int = 0
    agree: int = 0
    cos_sum: float = 0.0
    cos_min: float = float("inf")
    signal: float = 0.0
    noise: float = 0.0
    labelled: int = 0
    correct: dict[str, dict[int, int]] = field(default_factory=lambda: {"float": {}, "int8": {}})
    confusion: dict[str, np.ndarray] = field(default_factory=dict)

    def update(self, reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None) -> None:
        ref, out = _rows(reference), _rows(output)
        if ref.shape != out.shape:
            raise ValueError(f"reference {ref.shape} and output {out.shape} differ in shape")
        n = ref.shape[0]
        self.count += n
        cos = cosine_similarity(ref, out)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min(initial=np.inf)))
        self.signal += float(np.square(ref).sum())
        self.noise += float(np.square(ref - out).sum())
        if self.classes is None:
            return
        self.agree += int((ref.argmax(1) == out.argmax(1)).sum())
        if labels is None:
            return
        self.labelled += n
        for key, scores in (("float", ref), ("int8", out)):
            for k in self.topk:
                self.correct[key][k] = self.correct[key].get(k, 0) + int(top_k_correct(scores, labels, k).sum())
            cm = confusion_matrix(labels, scores.argmax(1), self.classes)
            self.confusion[key] = self.confusion.get(key, 0) + cm

    def merge(self, other: StreamingMetrics) -> StreamingMetrics:
        """Add ``other``'s images (e.g. another worker's batches) into these metrics, in place.

        Counts and the minimum merge exactly; sums add, so merging the batches' metrics in batch order
        gives the very floats of one pass over the same batches.
        """
        if (other.classes, other.topk) != (self.classes, self.topk):
            raise ValueError(f"cannot merge metrics of {other.classes} classes / top-{other.topk} into "
                             f"{self.classes} classes / top-{self.topk}")
        self.count += other.count
        self.agree += other.agree
        self.cos_sum += other.cos_sum
        self.cos_min = min(self.cos_min, other.cos_min)
        self.signal += other.signal
        self.noise += other.noise
        self.labelled += other.labelled
        for key, per_k in other.correct.items():
            mine = self.correct.setdefault(key, {})
            for k, n in per_k.items():
                mine[k] = mine.get(k, 0) + n
        for key, cm in other.confusion.items():
            self.confusion[key] = self.confusion.get(key, 0) + cm
        return self

    # ---- results

    @property
    def agreement(self) -> float | None:
        return self.agree / self.count if self.classes is not None and self.count else None

    @property
    def cosine_mean(self) -> float:
        return self.cos_sum / self.count if self.count else float("nan")

    @property
    def sqnr(self) -> float:
        return sqnr_from_energy(self.signal, self.noise)

    def accuracy(self, which: str, k: int) -> float | None:
        """Top-k accuracy (0..1) of "float" or "int8"; None without labels or with too few classes."""
        if not self.labelled or self.classes is None or k not in self.correct[which]:
            return None
        if k > 1 and k >= self.classes:  # top-5 of 5 classes or fewer is always right: not reported
            return None
        return self.correct[which][k] / self.labelled
