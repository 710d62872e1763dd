"""The three HDF5 layouts Keras writes weights in, read with h5py alone (never Keras or TensorFlow).

- **Keras 3** ``.weights.h5`` (also ``model.weights.h5`` inside a ``.keras`` archive): a group per
  layer at ``layers/<class>_<rank>/vars`` holding datasets ``0``, ``1``... in the layer's order; recent
  Keras records the layer's name in the ``vars`` group's ``name`` attribute, older Keras 3 does not
  (the caller then names the groups from the model config or the Keras Applications order).
- **legacy Keras 2 whole model** (``model.save("m.h5")``): root attribute ``model_config`` (JSON) and
  a ``model_weights`` group laid out like a save_weights file.
- **legacy Keras 2 save_weights** (``model.save_weights("w.h5")``, and Keras Applications' published
  ImageNet files): root attribute ``layer_names``; per layer a group with attribute ``weight_names``
  and a dataset per name (``conv1_conv/kernel:0``).

The file is user input: links that leave it (external links, external or virtual datasets) are
refused, only float datasets are read, and the total size is checked before any data is read.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.errors import CheckpointError
from edge_resnet.models.keras_names import KerasLayer

log = logging.getLogger(__name__)

MAX_WEIGHT_BYTES = 4 << 30  # all weights of one file (Keras ResNet152V2 in float32: 0.24 GB)
MAX_CONFIG_BYTES = 64 << 20
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

KERAS3 = "Keras 3 weights file"
LEGACY_MODEL = "legacy Keras (2) whole-model .h5"
LEGACY_WEIGHTS = "legacy Keras (2) save_weights .h5"

# Keras's order of a layer's weights; legacy files name them (``conv1_conv/kernel:0``)
_ROLE_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


@dataclass
class KerasH5:
    """What an HDF5 weights file holds: the layers with weights, and the model config if it has one."""

    layout: str
    layers: dict[str, KerasLayer]  # by layer name; by group key (conv2d_3...) when ``named`` is False
    named: bool = True
    config: dict[str, Any] | None = None
    keras_version: str | None = None
    head_units: dict[str, int] = field(default_factory=dict)  # Dense layer -> units (from shapes)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise CheckpointError("reading Keras .h5/.keras weights needs h5py, which is not installed",
                              "pip install 'edge-resnet[keras]' (or pip install h5py)") from exc
    return h5py


def read_h5(path: str | Path, source: str | None = None, *, data: bool = True) -> KerasH5:
    """Read a Keras HDF5 weights file. ``data=False`` reads names and shapes only (arrays are empty)."""
    h5py = _h5py()
    source = source or str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{source} cannot be read as an HDF5 file ({_first_line(exc)})",
                              "the file is truncated or not a Keras weights file: save it again") from exc
    try:
        with f:
            return _read(f, h5py, source, data)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:  # damaged data blocks, bad attributes
        raise CheckpointError(f"{source} is a damaged HDF5 file ({_first_line(exc)})",
                              "the file is truncated or corrupt: save it again") from exc


def _read(f: Any, h5py: Any, source: str, data: bool) -> KerasH5:
    version = _attr_str(f, "keras_version")
    if isinstance(f.get("model_weights", getlink=True), h5py.HardLink):
        config = _model_config(f, source)
        out = _read_legacy(_child(f, "model_weights", h5py, source), h5py, source, data, LEGACY_MODEL)
        out.config, out.keras_version = config, version or _attr_str(f["model_weights"], "keras_version")
        return out
    if _attr_strings(f, "layer_names") is not None:
        out = _read_legacy(f, h5py, source, data, LEGACY_WEIGHTS)
        out.keras_version = version
        return out
    if isinstance(f.get("layers", getlink=True), h5py.HardLink):
        return _read_keras3(f, h5py, source, data)
    raise CheckpointError(
        f"{source} is an HDF5 file but not a Keras weights file (top-level entries: {sorted(f.keys())[:6]}, "
        f"attributes: {sorted(f.attrs.keys())[:6]})",
        "pass a file written by Keras: model.save('m.keras'), model.save_weights('m.weights.h5') or a Keras 2 .h5")


# ----------------------------------------------------------------------------------------- layouts


def _read_legacy(group: Any, h5py: Any, source: str, data: bool, layout: str) -> KerasH5:
    names = _attr_strings(group, "layer_names") or []
    planned: list[tuple[str, list[tuple[str, Any]]]] = []
    for lname in names:
        g = _child(group, lname, h5py, source)
        wnames = _attr_strings(g, "weight_names") or []
        if not wnames:
            continue  # layers without weights (input, padding, activations) are listed too
        nested = {w.split("/")[0] for w in wnames if "/" in w} - {lname}
        if len(wnames) > 4 and nested:
            raise CheckpointError(
                f"{source}: layer {lname!r} is a nested model ({len(wnames)} weights, e.g. {wnames[0]})",
                "save the ResNet itself rather than a model that contains it, e.g. base.save_weights(...)")
        planned.append((lname, _ordered([(w, _child(g, w, h5py, source)) for w in wnames])))
    return _load(planned, source, data, layout, named=True)


def _read_keras3(f: Any, h5py: Any, source: str, data: bool) -> KerasH5:
    layers = _child(f, "layers", h5py, source)
    entries: list[tuple[str, str | None, list[tuple[str, Any]]]] = []  # (group key, layer name, weights)
    for key in layers:
        g = _child(layers, key, h5py, source)
        if isinstance(g.get("layers", getlink=True), h5py.HardLink):
            raise CheckpointError(f"{source}: layer group {key!r} is a nested model",
                                  "save the ResNet itself rather than a model that contains it")
        if not isinstance(g.get("vars", getlink=True), h5py.HardLink):
            continue
        v = _child(g, "vars", h5py, source)
        idx = list(v)
        if not idx:
            continue  # layers without weights
        if any(not k.isdigit() for k in idx):
            raise CheckpointError(f"{source}: layer group {key!r} holds unexpected entries {idx[:4]}",
                                  "pass a file written by Keras")
        idx.sort(key=int)
        entries.append((key, _attr_str(v, "name"), [(k, _child(v, k, h5py, source)) for k in idx]))
    # without recorded names (older Keras 3), groups are addressed by key and the caller names them
    named = all(name is not None for _, name, _ in entries)
    planned = [(name if named and name else key, ws) for key, name, ws in entries]
    return _load(planned, source, data, KERAS3, named=named)


def _load(planned: list[tuple[str, list[tuple[str, Any]]]], source: str, data: bool, layout: str,
          named: bool) -> KerasH5:
    total = 0
    for lname, ws in planned:
        for wname, ds in ws:
            if ds.dtype.kind != "f":
                raise CheckpointError(f"{source}: weight {lname}/{wname} is of type {ds.dtype}, not float",
                                      "pass a float32/float16 Keras weights file")
            if ds.external or ds.is_virtual:
                raise CheckpointError(f"{source}: weight {lname}/{wname} is stored outside the file (refused)",
                                      "pass a self-contained Keras weights file")
            total += int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    if total > MAX_WEIGHT_BYTES:
        raise CheckpointError(f"{source} declares {total / 1e9:.1f} GB of weights, more than any ResNet "
                              f"(limit {MAX_WEIGHT_BYTES / 1e9:.1f} GB)", "pass the weights of a ResNet")
    seen: set[str] = set()
    layers: dict[str, KerasLayer] = {}
    heads: dict[str, int] = {}
    for lname, ws in planned:
        if lname in seen:
            raise CheckpointError(f"{source} holds two layers named {lname!r}", "pass a file written by Keras")
        seen.add(lname)
        arrays = tuple(np.asarray(ds[()], dtype=np.float32) if data else np.empty((0,), np.float32) for _, ds in ws)
        layers[lname] = KerasLayer(lname, arrays, tuple(w for w, _ in ws))
        if len(ws) == 2 and len(ws[0][1].shape) == 2:
            heads[lname] = int(ws[0][1].shape[1])
    log.debug("%s: %s, %d layers with weights, %.1f MB", source, layout, len(layers), total / 1e6)
    return KerasH5(layout, layers, named=named, head_units=heads)


def _ordered(ws: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Keras's own order (kernel, bias / gamma, beta, moving_mean, moving_variance) when names say it."""
    roles = [re.sub(r":\d+$", "", w.rsplit("/", 1)[-1]) for w, _ in ws]
    if all(r in _ROLE_ORDER for r in roles) and len(set(roles)) == len(roles):
        return [x for _, x in sorted(zip(roles, ws, strict=True), key=lambda p: _ROLE_ORDER.index(p[0]))]
    return ws


# ----------------------------------------------------------------------------------------- helpers


def _child(group: Any, path: str, h5py: Any, source: str) -> Any:
    """``group[path]``, refusing soft and external links (the file is the only thing read)."""
    obj = group
    for part in (p for p in path.split("/") if p):
        link = obj.get(part, getlink=True)
        if link is None:
            raise CheckpointError(f"{source}: {obj.name.rstrip('/')}/{part} is listed but missing",
                                  "the file is truncated or corrupt: save it again")
        if not isinstance(link, h5py.HardLink):
            raise CheckpointError(f"{source}: {obj.name.rstrip('/')}/{part} is an HDF5 {type(link).__name__} (refused: "
                                  "a weights file must not point at other data)", "pass a self-contained Keras file")
        obj = obj[part]
    return obj


def _attr_strings(obj: Any, name: str) -> list[str] | None:
    """A list-of-strings attribute; Keras splits long ones into ``name0``, ``name1``..."""
    attrs = obj.attrs
    if name in attrs:
        values = list(np.atleast_1d(attrs[name]))
    elif f"{name}0" in attrs:
        values, i = [], 0
        while f"{name}{i}" in attrs:
            values += list(np.atleast_1d(attrs[f"{name}{i}"]))
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _attr_str(obj: Any, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    v = obj.attrs[name]
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _model_config(f: Any, source: str) -> dict[str, Any] | None:
    """The ``model_config`` attribute, parsed as JSON data (never deserialized into layers)."""
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    text = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{source}: its model_config is {len(text) / 1e6:.0f} MB", "pass a Keras ResNet file")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{source}: its model_config is not valid JSON ({exc})", "save the model again") from exc
    return config if isinstance(config, dict) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
