"""A Keras ResNet50V2 trained here (Keras 3 on the torch backend, no TensorFlow) -> Keras' own ONNX export ->
``edge-resnet compile`` / ``validate``: the fidelity of a foreign NHWC graph through the whole pipeline.

    KERAS_BACKEND=torch python benchmarks/keras_resnet50v2_digits.py [--epochs 12] [--json out.json]

Prints the Keras float accuracy (Keras itself, NHWC), the canonicalisation of the exported graph
(ops before/after), int8 conv coverage on OpenVINO and ONNX Runtime, and ``edge-resnet validate`` on
digits:test for the ``cpu`` (OpenVINO) and ``onnxruntime`` bundles. The trained weights and the
export are cached under $EDGE_RESNET_CACHE/keras-resnet50v2-digits-<recipe key>/ (the key covers
the recipe and the Keras/torch versions), so a second run only compiles and validates.
Needs the dev extra (keras, h5py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402


@dataclass(frozen=True)
class KerasDigitsRecipe:
    arch: str = "ResNet50V2"
    input_size: int = 32
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    version: int = 1  # bump when the training code changes

    def key(self) -> str:
        import keras
        import torch

        blob = json.dumps({**asdict(self), "keras": keras.__version__, "torch": torch.__version__.split("+")[0]},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def digits_nhwc(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """edge-resnet's own digits preprocessing (the one the bundle stores), transposed to NHWC for Keras."""
    from edge_resnet.data import PreprocessSpec, open_dataset

    ds = open_dataset(f"digits:{split}", PreprocessSpec(input_size=size, resize=size))
    xs, ys = zip(*[(b.x, b.y) for b in ds.batches(256)], strict=True)
    return np.ascontiguousarray(np.concatenate(xs).transpose(0, 2, 3, 1)), np.concatenate(ys)


def train(recipe: KerasDigitsRecipe, out: Path) -> dict:
    import keras

    keras.utils.set_random_seed(recipe.seed)
    x, y = digits_nhwc("train", recipe.input_size)
    xt, yt = digits_nhwc("test", recipe.input_size)
    model = getattr(keras.applications, recipe.arch)(weights=None, input_shape=(recipe.input_size,) * 2 + (3,), classes=10)
    model.compile(optimizer=keras.optimizers.Adam(recipe.lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=recipe.batch_size, epochs=recipe.epochs, verbose=2, shuffle=True)
    train_s = time.perf_counter() - start
    probs = model.predict(xt, batch_size=128, verbose=0)
    acc = float((probs.argmax(1) == yt).mean())
    model.save_weights(out / "model.weights.h5")
    model.export(str(out / "model.onnx"), format="onnx", verbose=False)
    np.save(out / "test_probs.npy", probs)
    return {"keras_test_top1": acc, "train_seconds": round(train_s, 1), "params": int(model.count_params())}


def cached_model(recipe: KerasDigitsRecipe) -> tuple[Path, dict]:
    root = Path(os.environ.get("EDGE_RESNET_CACHE") or Path.home() / ".cache" / "edge-resnet")
    d = root / f"keras-{recipe.arch.lower()}-digits-{recipe.key()}"
    if (d / "metrics.json").is_file():
        return d, json.loads((d / "metrics.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix=d.name + ".", dir=root))
    try:
        metrics = {**train(recipe, tmp), "recipe": asdict(recipe)}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
        tmp.replace(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d, metrics


def edge_resnet(*args: str) -> str:
    r = subprocess.run([sys.executable, "-c", "from edge_resnet.cli import main; main()", *args], capture_output=True,
                       text=True, check=False)
    if r.returncode:
        raise SystemExit(f"edge-resnet {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=KerasDigitsRecipe.epochs)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    recipe = KerasDigitsRecipe(epochs=args.epochs)
    d, metrics = cached_model(recipe)
    import onnx

    exported = onnx.load(str(d / "model.onnx"))
    print(f"Keras {recipe.arch} trained on digits:train at {recipe.input_size}x{recipe.input_size} ({metrics['params']:,} "
          f"parameters, {recipe.epochs} epochs, {metrics['train_seconds']} s): Keras top-1 on digits:test "
          f"{100 * metrics['keras_test_top1']:.2f}%")
    print(f"exported graph: {len(exported.graph.node)} nodes, {dict(Counter(n.op_type for n in exported.graph.node))}")
    results: dict = {"recipe": asdict(recipe), "keras": metrics, "targets": {}}
    with tempfile.TemporaryDirectory(prefix="keras-digits-") as tmp:
        for target in ("cpu", "onnxruntime"):
            bundle = Path(tmp) / target
            text = edge_resnet("compile", "--onnx", str(d / "model.onnx"), "--target", target, "--calib", "digits:train",
                               "--input-size", str(recipe.input_size), "--resize", str(recipe.input_size), "-o", str(bundle))
            if target == "cpu":
                print(text.split("\nfolded")[0])
            manifest = json.loads((bundle / "manifest.json").read_text())
            info = manifest["artifact"]["info"]
            coverage = ((info.get("int8_convs"), info.get("convs")) if target == "cpu"
                        else (info.get("qlinearconv"), info.get("convs")))
            v = Path(tmp) / f"{target}.json"
            edge_resnet("validate", str(bundle), "--data", "digits:test", "--json", str(v))
            m = json.loads(v.read_text())["metrics"]
            results["targets"][target] = {"int8_conv_coverage": coverage, **m}
    print()
    print("| bundle | backend | int8 convs | float top-1 (ours) | int8 top-1 | agreement | cosine mean | cosine min |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for target, m in results["targets"].items():
        backend = "OpenVINO" if target == "cpu" else "ONNX Runtime"
        cov = m["int8_conv_coverage"]
        print(f"| {target} | {backend} | {cov[0]}/{cov[1]} | {100 * m['float_top1']:.2f}% | {100 * m['int8_top1']:.2f}% | "
              f"{m['agreement_top1']:.4f} | {m['cosine_mean']:.5f} | {m['cosine_min']:.4f} |")
    print(f"\nKeras float top-1 (Keras on NHWC): {100 * metrics['keras_test_top1']:.2f}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
