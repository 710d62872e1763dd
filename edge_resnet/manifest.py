"""The typed sections of a bundle's ``manifest.json``: frozen dataclasses that read and write the JSON.

Each section declares the keys this version of edge-resnet reads, with the JSON types compile writes;
:meth:`Section.from_dict` checks them (one :class:`BundleError` naming the dotted key, as loading a
bundle always did) and :meth:`Section.to_dict` writes the JSON back. Keys a section does not declare
(older and newer bundles, records whose shape follows their source, e.g. a calibration sample's
fields) are kept in ``extra``, and the key order read is kept too: ``from_dict(d).to_dict() == d``
key for key, so a rewritten manifest (the drift budget's) is the one compile wrote plus its change.

A declared key that is absent from the JSON is :data:`ABSENT` (not ``None``, which is JSON null).
Sections that compile builds from records whose keys vary (the model's, the calibration's) are made
with ``from_dict`` of that record; the others with their fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge_resnet.errors import BundleError

FIX_RECOMPILE = "compile the bundle again with `edge-resnet compile ... -o DIR` (or copy it again, completely)"
_NONE = type(None)
_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", _NONE: "null", float: "a number",
               bool: "true/false"}


class _Absent:
    """A declared key missing from the JSON (``None`` is JSON null)."""

    _instance: ClassVar[_Absent | None] = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


def type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def key(*types: type, required: bool = False, section: type[Section] | None = None) -> Any:
    """A declared key: its JSON types (a nested ``section`` is read with that Section class)."""
    return field(default=ABSENT, metadata={"types": types, "required": required, "section": section})


@dataclass(frozen=True, kw_only=True)
class Section:
    """A JSON object with declared keys (the dataclass fields made with :func:`key`) and the rest in ``extra``."""

    extra: Mapping[str, Any] = field(default_factory=dict)  # undeclared keys, as read
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)  # the key order read ((): declared)

    @classmethod
    def declared(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if "types" in f.metadata]

    @classmethod
    def from_dict(cls, d: Any, where: str, prefix: str = "") -> Any:
        """The section of the JSON object ``d`` (at dotted ``prefix`` of the manifest ``where``), types checked:
        a required key missing or a key of another type is one BundleError, as bundle loading words it."""
        values: dict[str, Any] = {}
        for f in cls.declared():
            dotted = f"{prefix}{f.name}"
            if f.name not in d:
                if f.metadata["required"]:
                    raise BundleError(f"{where} has no '{dotted}' entry", FIX_RECOMPILE)
                continue
            value = d[f.name]
            types = f.metadata["types"]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
                raise BundleError(f"{where}: '{dotted}' is {type_name(value)}, expected {want}", FIX_RECOMPILE)
            sub = f.metadata["section"]
            values[f.name] = sub.from_dict(value, where, f"{dotted}.") if sub and isinstance(value, dict) else value
        names = {f.name for f in cls.declared()}
        return cls(**values, extra={k: v for k, v in d.items() if k not in names}, order=tuple(d))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: keys in the order read (then keys set since, in declared order), ABSENT keys left out."""
        declared = [f.name for f in self.declared()]
        keys = list(self.order) + [k for k in (*declared, *self.extra) if k not in self.order]
        out: dict[str, Any] = {}
        for k in keys:
            if k in declared:
                value = getattr(self, k)
                if value is ABSENT:
                    continue
                out[k] = value.to_dict() if isinstance(value, Section) else value
            elif k in self.extra:
                out[k] = self.extra[k]
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """A declared key's value, ``default`` when absent (or null)."""
        value = getattr(self, name)
        return default if value is ABSENT or value is None else value


# ---------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class ModelSection(Section):
    """``model``: what the graph was made from (``source`` zoo/onnx and its fields) and what it outputs."""

    source: str = key(str)
    output: str = key(str)
    kind: str | None = key(str, _NONE)  # None: read from the output name (graph.head.manifest_kind)
    num_classes: int | None = key(int, _NONE)
    input: dict[str, Any] = key(dict)
    bn_fold: dict[str, Any] = key(dict)


@dataclass(frozen=True, kw_only=True)
class GraphsSection(Section):
    """``graphs``: the float graph, and the Q/DQ graph of an explicit INT8 build."""

    float: str = key(str, required=True)
    int8: str = key(str)


@dataclass(frozen=True, kw_only=True)
class CalibrationSection(Section):
    """``calibration``: the data (source, count, seed; the sample's own fields in ``extra``), the
    calibration options and the scales file."""

    source: str = key(str)
    random: bool = key(bool)
    count: int = key(int)
    method: str = key(str)
    scales: str | None = key(str, _NONE)


@dataclass(frozen=True, kw_only=True)
class QuantizationSection(Section):
    """``quantization``: the Q/DQ placement of an explicit build, or ``mode`` "implicit" and a tensor count."""

    format: str = key(str)
    quantized: dict[str, int] = key(dict)
    kept_float: list[str] = key(list)
    exclude: list[str] = key(list)
    weight_range: str = key(str)
    bias_correction: Any = key(bool, dict, _NONE)
    mode: str = key(str)
    tensors: int = key(int)


@dataclass(frozen=True, kw_only=True)
class ArtifactSection(Section):
    """``artifact``: the JSON form of :class:`edge_resnet.backends.base.Artifact`."""

    backend: str = key(str, required=True)
    precision: str = key(str, required=True)
    files: dict[str, str] = key(dict, required=True)
    info: dict[str, Any] = key(dict)
    device_build: dict[str, str] = key(dict)


@dataclass(frozen=True, kw_only=True)
class BudgetSection(Section):
    """``budget``: the drift budget a build met (edge_resnet.budget) and how."""

    max_drop: float = key(int, float)
    val: str = key(str)
    val_count: int | None = key(int, _NONE)
    max_rebuilds: int = key(int)
    sensitivity_images: int = key(int)
    metric: str = key(str)
    drop: float = key(int, float)
    passed: bool = key(bool)
    validation: str | None = key(str, _NONE)
    attempts: list[dict[str, Any]] = key(list)
    ranking: dict[str, Any] | None = key(dict, _NONE)


@dataclass(frozen=True, kw_only=True)
class IntegritySection(Section):
    """``integrity``: the hash of the manifest's canonical form (edge_resnet.bundle.manifest_digest)."""

    algorithm: str = key(str)
    manifest_sha256: str = key(str)


@dataclass(frozen=True, kw_only=True)
class Manifest(Section):
    """The whole manifest, sections in the order compile writes them (``BundleWriter.finish`` adds
    ``format_version``, ``files`` and ``integrity``). ``preprocess`` and ``target`` are typed by
    :class:`edge_resnet.data.PreprocessSpec` and :class:`edge_resnet.targets.TargetProfile`."""

    created: str = key(str)
    model: ModelSection = key(dict, required=True, section=ModelSection)
    precision: str = key(str)
    preprocess: dict[str, Any] = key(dict, required=True)
    inputs: dict[str, Any] = key(dict)
    labels: str | None = key(str, _NONE)
    graphs: GraphsSection = key(dict, required=True, section=GraphsSection)
    calibration: CalibrationSection | None = key(dict, _NONE, section=CalibrationSection)
    quantization: QuantizationSection | None = key(dict, _NONE, section=QuantizationSection)
    kept_float: list[str] = key(list)
    target: dict[str, Any] = key(dict, required=True)
    artifact: ArtifactSection = key(dict, required=True, section=ArtifactSection)
    tools: dict[str, str] = key(dict)
    host: dict[str, str] = key(dict)
    budget: BudgetSection | None = key(dict, _NONE, section=BudgetSection)
    format_version: int = key(int)
    files: dict[str, str] = key(dict, required=True)
    integrity: IntegritySection = key(dict, section=IntegritySection)

    @classmethod
    def from_dict(cls, d: Any, where: str, prefix: str = "") -> Manifest:
        if not isinstance(d, dict):
            raise BundleError(f"{where} is {type_name(d)}, not the JSON object edge-resnet writes", FIX_RECOMPILE)
        return super().from_dict(d, where, prefix)
