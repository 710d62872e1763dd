"""Keras itself (Keras 3 on the torch backend, no TensorFlow) as the reference for the Keras tests.

Builds keras.applications ResNets with every weight a wrong mapping would show randomised (BN
moving statistics, conv and dense biases), writes them in each format users have, and computes
Keras's logits.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

assert keras.backend.backend() == "torch", "the Keras tests run Keras on the torch backend (KERAS_BACKEND=torch)"

KERAS_RESNETS = ("ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2")
FORMATS = ("keras", "weights.h5", "h5", "keras2-weights.h5")


def build(name: str, classes: int | None = 5, size: int = 32, seed: int = 0, **kwargs) -> keras.Model:
    """A keras.applications ResNet with logits out and randomised statistics and biases."""
    fn = getattr(keras.applications, name)
    if classes is None:
        model = fn(weights=None, include_top=False, input_shape=(size, size, 3), **kwargs)
    else:
        model = fn(weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None, **kwargs)
    randomise(model, seed)
    return model


def randomise(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and len(layer.get_weights()) == 2:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])


def logits(model: keras.Model, x_nchw: np.ndarray) -> np.ndarray:
    """Keras's output for an NCHW batch (Keras takes NHWC)."""
    return np.asarray(keras.ops.convert_to_numpy(model(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)),
                                                       training=False)))


def save(model: keras.Model, fmt: str, folder: Path) -> Path:
    """``model`` in one of :data:`FORMATS`, in ``folder``."""
    path = Path(folder) / f"{model.name}.{fmt}"
    if fmt == "keras":
        model.save(path)
    elif fmt == "weights.h5":
        model.save_weights(path)
    elif fmt == "h5":
        model.save(path)  # Keras 3 still writes the legacy whole-model HDF5 layout for a .h5 path
    elif fmt == "keras2-weights.h5":
        write_keras2_save_weights(model, path)
    else:
        raise ValueError(fmt)
    return path


def write_keras2_save_weights(model: keras.Model, path: Path) -> None:
    """The layout of Keras 2's ``model.save_weights('w.h5')`` and of Keras Applications' published
    ImageNet files, which Keras 3 no longer writes (its save_weights wants ``.weights.h5``).

    Follows tf.keras's ``hdf5_format.save_weights_to_hdf5_group``: root attributes ``layer_names``
    (every layer, in model order), ``backend`` and ``keras_version``; one group per layer, created in
    name order, with attribute ``weight_names`` (TensorFlow variable names, ``conv1_conv/kernel:0``)
    and one dataset per weight (trainable weights first, then non-trainable).
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        for layer in sorted(model.layers, key=lambda x: x.name):
            g = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{w.path}:0".encode() for w in weights]
            g.attrs["weight_names"] = np.array(names) if names else np.array([], dtype="S1")
            for name, w in zip(names, weights, strict=True):
                g.create_dataset(name, data=keras.ops.convert_to_numpy(w))
