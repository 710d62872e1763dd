"""Shared fixtures: ResNets trained here on real data (scikit-learn's digits), once per run.

The trained checkpoints go to $EDGE_RESNET_CACHE when it is set (developers reuse them across
runs), else to a temporary folder of this test session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest


@dataclass
class Digits:
    name: str
    recipe: object
    checkpoint: Path
    test_accuracy: float
    model: object  # the torch module, eval mode
    float_graph: onnx.ModelProto
    spec: object

    def arrays(self, split: str, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from edge_resnet.data import open_dataset

        ds = open_dataset(f"digits:{split}", self.spec, count=count)
        xs, ys = zip(*[(b.x, b.y) for b in ds.batches(256)], strict=True)
        return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("EDGE_RESNET_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("edge-resnet-cache")


def _digits(name: str, cache: Path) -> Digits:
    from edge_resnet.graph.export import export_float_graph
    from edge_resnet.models import build_model, load_weights
    from edge_resnet.train import DigitsRecipe, train_digits

    recipe = DigitsRecipe(model=name)
    trained = train_digits(recipe, cache_dir=cache, progress=False)
    model = build_model(name, num_classes=10)
    load_weights(model, trained.checkpoint)
    model.eval()
    fg = export_float_graph(model, recipe.input_size)
    return Digits(name, recipe, trained.checkpoint, trained.test_accuracy, model, fg.model, recipe.spec())


@pytest.fixture(scope="session")
def digits_r18(cache_dir) -> Digits:
    """ResNet-18 (v1.5) trained on digits:train at 32x32 (about a minute on 2 cores)."""
    return _digits("resnet18", cache_dir)


@pytest.fixture(scope="session")
def digits_r50(cache_dir) -> Digits:
    """ResNet-50 (v1.5) trained on digits:train at 32x32."""
    return _digits("resnet50", cache_dir)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
