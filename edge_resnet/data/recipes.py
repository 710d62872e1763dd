"""Calibration-set recipes (``calibration/*.toml``): a named source, count, seed and stride."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_resnet.errors import DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREFIX = "recipe:"
DEFAULT_CALIB_COUNT = 512  # --calib-count when neither the command line nor a recipe gives one
DEFAULT_SEED = 0
DEFAULT_STRIDE = 10


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    count: int | None = None
    seed: int = 0
    stride: int = 10
    description: str = ""
    notes: str = ""


def shipped_recipes() -> dict[str, Path]:
    root = resources.files("edge_resnet._calibration")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")}


def is_recipe(src: str | Path) -> bool:
    s = str(src)
    return s.startswith(PREFIX) or (s.endswith(".toml") and Path(s).is_file())


def load_recipe(src: str | Path) -> Recipe:
    s = str(src)
    if s.startswith(PREFIX):
        name = s[len(PREFIX):]
        known = shipped_recipes()
        if name not in known:
            raise DataError(f"unknown calibration recipe {name!r}", f"use one of: {', '.join(sorted(known))}, or a .toml path")
        path = known[name]
    else:
        path = Path(s)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"cannot read calibration recipe {path}: {exc}", "check the file (see calibration/README.md)") from exc
    try:
        return Recipe(**data)
    except TypeError as exc:
        raise DataError(f"invalid calibration recipe {path}: {exc}", "keys: name, source, count, seed, stride, description, notes") from exc


def resolve(src: str | Path, count: int | None, seed: int | None, stride: int | None = None) -> tuple[str, int | None, int, int]:
    """(source, count, seed, stride) for a --calib value; explicit options win over a recipe's."""
    if not is_recipe(src):
        return str(src), count, DEFAULT_SEED if seed is None else seed, DEFAULT_STRIDE if stride is None else stride
    r = load_recipe(src)
    return (r.source, count if count is not None else r.count, r.seed if seed is None else seed,
            r.stride if stride is None else stride)


@dataclass(frozen=True)
class CalibrationSample:
    """What a ``--calib`` value stands for once a recipe is read: the commands call this, not resolve."""

    source: str
    count: int
    seed: int
    stride: int
    recipe: str | None = None  # the --calib value when it named a recipe

    def record(self) -> dict[str, object]:
        return {"recipe": self.recipe} if self.recipe else {}


def calibration_sample(src: str | Path, count: int | None = None, seed: int | None = None) -> CalibrationSample:
    """A recipe's source, count, seed and stride, each overridden by an explicit option."""
    source, count, seed, stride = resolve(src, count, seed)
    return CalibrationSample(source, DEFAULT_CALIB_COUNT if count is None else count, seed, stride,
                             str(src) if is_recipe(src) else None)
