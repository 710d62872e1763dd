"""A Keras 3 ``.keras`` archive: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``.

The archive is user input. Every member name is checked (no absolute path, no ``..``, no link, not
encrypted) and every size is bounded before it is read. ``config.json`` is parsed as JSON data and
nothing else: it is never deserialized into layers or code. The weights member is copied, with a
byte count, into a temporary directory this process owns and read there with h5py; no member name
is ever used as a path.
"""

from __future__ import annotations

import json
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from edge_resnet.errors import CheckpointError
from edge_resnet.models.keras_h5 import MAX_CONFIG_BYTES, MAX_WEIGHT_BYTES, KerasH5, read_h5

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.h5"
_CHUNK = 1 << 20


def is_keras_archive(path: str | Path) -> bool:
    """A zip whose members include ``config.json`` and ``metadata.json`` or the weights (not a torch zip)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return CONFIG in names and bool({METADATA, WEIGHTS} & names)


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` alone (cheap: the weights are not read)."""
    with _open(path) as zf:
        infos = _checked_members(zf, path)
        return _config(zf, infos, path)


def read_keras_archive(path: str | Path, *, data: bool = True) -> KerasH5:
    """The weights of a ``.keras`` file, with its model config attached."""
    with _open(path) as zf:
        infos = _checked_members(zf, path)
        config = _config(zf, infos, path)
        meta = _metadata(zf, infos, path)
        info = infos.get(WEIGHTS)
        if info is None:
            other = sorted(n for n in infos if "weights" in n)
            raise CheckpointError(
                f"{path} holds no {WEIGHTS}" + (f" (it has {', '.join(other[:3])}: sharded or npz weights "
                                                "are not supported)" if other else ""),
                "save the model with model.save('model.keras') (one weights file)")
        with tempfile.TemporaryDirectory(prefix="edge-resnet-keras-") as tmp:
            target = Path(tmp) / "weights.h5"  # our own name: member names are never paths
            _copy(zf, info, target, path)
            out = read_h5(target, source=f"{path} ({WEIGHTS})", data=data)
    out.config = config
    out.layout = f".keras archive ({out.layout})"
    if isinstance(meta.get("keras_version"), str):
        out.keras_version = meta["keras_version"]
    return out


def _metadata(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path: str | Path) -> dict[str, Any]:
    """``metadata.json`` (informative only: the Keras version)."""
    info = infos.get(METADATA)
    if info is None:
        return {}
    meta = _json(_read_bounded(zf, info, MAX_CONFIG_BYTES, path), path, METADATA)
    return meta if isinstance(meta, dict) else {}


# ----------------------------------------------------------------------------------------- members


def _open(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as a .keras archive ({exc})",
                              "the file is truncated or not a Keras file: save it again with model.save('m.keras')") from exc


def _checked_members(zf: zipfile.ZipFile, path: str | Path) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        reason = _unsafe(name, info)
        if reason:
            raise CheckpointError(f"{path} has an archive member {name!r} that {reason} (refused)",
                                  "a .keras file written by Keras has only config.json, metadata.json and "
                                  "model.weights.h5: save the model again")
        if name in infos:
            raise CheckpointError(f"{path} has two archive members named {name!r} (refused)", "save the model again")
        total += info.file_size
        if total > MAX_WEIGHT_BYTES + MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path} unpacks to more than {MAX_WEIGHT_BYTES / 1e9:.1f} GB (refused)",
                                  "pass the .keras file of a ResNet")
        infos[name] = info
    return infos


def _unsafe(name: str, info: zipfile.ZipInfo) -> str | None:
    posix = name.replace("\\", "/")
    if "\x00" in name:
        return "contains a NUL character"
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "leaves the archive's folder ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def _config(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path: str | Path) -> dict[str, Any]:
    info = infos.get(CONFIG)
    if info is None:
        raise CheckpointError(f"{path} holds no {CONFIG}", "save the model with model.save('model.keras')")
    raw = _read_bounded(zf, info, MAX_CONFIG_BYTES, path)
    config = _json(raw, path, CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: {CONFIG} is not a JSON object", "save the model again")
    return config


def _json(raw: bytes, path: str | Path, member: str) -> Any:
    try:
        return json.loads(raw.decode("utf8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {member} is not valid JSON ({exc})", "save the model again") from exc


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: str | Path) -> bytes:
    if info.file_size > limit:
        raise CheckpointError(f"{path}: member {info.filename} is {info.file_size / 1e6:.0f} MB (limit "
                              f"{limit / 1e6:.0f} MB)", "pass the .keras file of a ResNet")
    try:
        with zf.open(info) as src:
            raw = src.read(limit + 1)
    except (zipfile.BadZipFile, OSError, zlib.error, NotImplementedError, EOFError) as exc:
        raise CheckpointError(f"{path}: member {info.filename} cannot be read ({exc})",
                              "the file is truncated or corrupt: save it again") from exc
    if len(raw) > limit:
        raise CheckpointError(f"{path}: member {info.filename} is larger than its header says", "save the model again")
    return raw


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, path: str | Path) -> None:
    """Stream one member to ``target``, counting bytes (a zip header's size is not trusted)."""
    if info.file_size > MAX_WEIGHT_BYTES:
        raise CheckpointError(f"{path}: {info.filename} is {info.file_size / 1e9:.1f} GB (limit "
                              f"{MAX_WEIGHT_BYTES / 1e9:.1f} GB)", "pass the .keras file of a ResNet")
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > max(info.file_size, 0) or written > MAX_WEIGHT_BYTES:
                    raise CheckpointError(f"{path}: {info.filename} is larger than its header says (refused)",
                                          "save the model again")
                dst.write(chunk)
    except (zipfile.BadZipFile, OSError, zlib.error, NotImplementedError, EOFError) as exc:
        raise CheckpointError(f"{path}: {info.filename} cannot be read ({exc})",
                              "the file is truncated or corrupt: save it again") from exc
