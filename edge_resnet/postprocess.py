"""What becomes of an output row: top-k classes (softmax over the logits) or an L2-normalised
embedding. One implementation, used by the runtime, its streams, the benchmarks and validation."""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from edge_resnet.errors import DataError


class ModelKind(str, Enum):
    # the values of edge_resnet.graph.head.HeadKind, as recorded in the manifest's model.kind
    CLASSIFIER = "classifier"  # output "logits"
    EMBEDDING = "embedding"  # output "features", pooled: (N, D)
    FEATURE_MAP = "feature_map"  # output "features", not pooled: (N, C, H, W)


def model_kind(model: dict[str, Any]) -> ModelKind:
    """The kind recorded in the manifest's ``model`` section (``model.kind``; older bundles: their output name)."""
    from edge_resnet.graph.head import manifest_kind

    return ModelKind(manifest_kind(model).value)


class Classification(NamedTuple):
    """The top-k classes of one frame, best first. ``scores`` are softmax probabilities.

    A NamedTuple (immutable, typed) rather than a dataclass: it is built once per frame, and a
    frozen dataclass costs several times more to create.
    """

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    scores: tuple[float, ...]

    @property
    def index(self) -> int:
        return self.indices[0]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def score(self) -> float:
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        return {"top": [{"index": i, "label": lb, "score": s}
                        for i, lb, s in zip(self.indices, self.labels, self.scores, strict=True)]}


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of the k highest scores per row, best first; equal scores go to the lower index."""
    k = min(int(k), scores.shape[1])
    return scores.argmax(axis=1)[:, None] if k == 1 else np.argsort(-scores, axis=1, kind="stable")[:, :k]


def top_k_softmax(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, softmax probabilities) of the top k per row, ranked by the logits, in as few numpy calls as possible: right
    after a large inference the caches are cold and every call costs several microseconds."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    total = e.sum(axis=1, keepdims=True)
    if k == 1:  # the top entry of e is exp(0) == 1
        return logits.argmax(axis=1)[:, None], 1.0 / total
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return idx, e[np.arange(len(e))[:, None], idx] / total


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32, copy=False)


def check_top_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"top_k must be a positive integer, got {k!r}", "use e.g. top_k=5")
    return int(k)
