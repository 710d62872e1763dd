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


@pytest.fixture(scope="session")
def random_r18_graph():
    """A random-weight ResNet-18 (10 classes, 32x32) as compile's FloatGraph, exported once: the TensorRT bundle
    tests only need its shapes and names (one dynamo export instead of one per module)."""
    import torch

    from edge_resnet.compile import ModelSource, float_graph_for

    torch.manual_seed(0)
    return float_graph_for(ModelSource(name="resnet18", num_classes=10), 32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# --------------------------------------------------------------------------- shared Q/DQ graphs and bundles


def random_r50_float(tmp_path_factory) -> onnx.ModelProto:
    """A random-weight (seed 0) float ResNet-50 at 64x64, exported once per test session (the export is
    the slow part; the backend tests only look at graph structure and coverage)."""
    path = tmp_path_factory.getbasetemp() / "resnet50-64-random-seed0.onnx"
    if not path.is_file():
        import torch

        from edge_resnet.graph.export import export_float_graph
        from edge_resnet.models import build_model

        torch.manual_seed(0)
        tmp = path.with_suffix(".partial")
        onnx.save(export_float_graph(build_model("resnet50", num_classes=10), 64).model, tmp)
        tmp.replace(path)
    return onnx.load(str(path))


def cpu_config(fmt):  # -> QuantConfig
    """The Q/DQ configuration of a CPU target (OpenVINO CPU, ONNX Runtime) compiled on this host."""
    from edge_resnet.quant.qdq import QuantConfig
    from edge_resnet.targets import resolve_weight_range_choice
    from edge_resnet.types import WeightRange

    return QuantConfig(fmt, weight_range=resolve_weight_range_choice(WeightRange.AUTO))


def r18_qdq_files(digits: Digits, tmp_path_factory, fmt, n_test: int = 256, threads: int = 2) -> dict:
    """The digits-trained ResNet-18: float and Q/DQ (``fmt``) ONNX files, ``n_test`` test images and the
    float reference (ONNX Runtime on the float graph). Keys: dir, float, <fmt value>, x, ref.

    The weights get the range a CPU target's compile gives on this host (7-bit without VNNI): these
    graphs are run by the CPU backends here."""
    from edge_resnet.data import open_dataset
    from edge_resnet.quant.ptq import quantize, run_onnx

    qg = quantize(digits.float_graph, open_dataset("digits:train", digits.spec, count=256), cpu_config(fmt), progress=False)
    d = tmp_path_factory.mktemp(f"r18-{fmt.value}")
    onnx.save(digits.float_graph, d / "float.onnx")
    onnx.save(qg.model, d / f"{fmt.value}.onnx")
    x, _ = digits.arrays("test", n_test)
    return {"dir": d, "float": d / "float.onnx", fmt.value: d / f"{fmt.value}.onnx", "x": x,
            "ref": run_onnx(digits.float_graph, x, threads=threads)}


def r50_qdq_files(tmp_path_factory, fmt) -> dict:
    """The random ResNet-50, quantized in ``fmt`` (fusion and coverage do not depend on training)."""
    from edge_resnet.data import PreprocessSpec, open_dataset
    from edge_resnet.quant.ptq import quantize

    data = open_dataset("digits:train", PreprocessSpec(input_size=64, resize=64), count=32)
    d = tmp_path_factory.mktemp(f"r50-{fmt.value}")
    qg = quantize(random_r50_float(tmp_path_factory), data, cpu_config(fmt), progress=False)
    onnx.save(qg.model, d / f"{fmt.value}.onnx")
    return {"dir": d, fmt.value: d / f"{fmt.value}.onnx"}


def build_digits_bundle(root: Path, checkpoint: Path, target: str) -> Path:
    """A digits ResNet-18 INT8 bundle for ``target`` compiled with the CLI, once per session."""
    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    out = root / target
    if not (out / "manifest.json").is_file():
        result = CliRunner().invoke(cli, [
            "-q", "compile", "--model", "resnet18", "--num-classes", "10", "--weights", str(checkpoint),
            "--input-size", "32", "--resize", "32", "--target", target, "--calib", "digits:train",
            "--calib-count", "128", "--force", "-o", str(out)])
        assert result.exit_code == 0, result.output
    return out


def assert_thread_safe(runner, batches: list[np.ndarray], repeats: int = 5) -> None:
    """Several threads calling ``runner.infer`` at once each get exactly the single-threaded result."""
    import threading

    expected = [runner.infer(b) for b in batches]
    results: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = [runner.infer(batches[i]) for _ in range(repeats)]
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == list(range(len(batches)))
    for i, outs in results.items():
        for out in outs:
            np.testing.assert_array_equal(out, expected[i])
