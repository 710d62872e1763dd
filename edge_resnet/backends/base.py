"""The one small interface every backend implements (after Polygraphy's loader/runner split).

    backend.compile(qdq_onnx, profile, out_dir, precision) -> Artifact   # build, write files
    backend.load(artifact_dir, artifact) -> Runner                        # deserialize
    runner.infer(batch) -> logits or features                             # run

Heavy libraries (openvino, tensorrt, cuda) are imported inside the backend modules' functions,
never at import time, so `import edge_resnet` works without them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_resnet.errors import BackendError, BackendUnavailable
from edge_resnet.targets import TargetProfile
from edge_resnet.types import BackendName, Precision


@dataclass
class Artifact:
    """What a backend wrote into a bundle: file names relative to the bundle directory."""

    backend: BackendName
    precision: Precision
    files: dict[str, str]  # role -> relative path, e.g. {"engine": "model.plan"}
    info: dict[str, Any] = field(default_factory=dict)  # versions, device, int8 coverage, ...

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "precision": self.precision.value, "files": self.files, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        return cls(BackendName(d["backend"]), Precision(d["precision"]), dict(d["files"]), dict(d.get("info", {})))


class Runner(ABC):
    """A loaded artifact. ``infer`` takes a float32 NCHW batch and returns a float32 array."""

    input_name: str = "input"

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# options every backend's ``load`` takes (a backend without the notion ignores it): callers such as the
# benchmark pass them to any backend
COMMON_LOAD_OPTIONS = frozenset({"threads", "hint"})


class Backend(ABC):
    name: BackendName
    library: str  # the Python module the backend needs, e.g. "openvino"
    # the keyword options ``load`` takes besides COMMON_LOAD_OPTIONS; others are refused by Bundle.load_runner
    # (None: not declared, nothing checked)
    load_options: frozenset[str] | None = None

    def available(self) -> bool:
        """True when the backend's library can be imported here (without importing it)."""
        import importlib.util

        try:
            return importlib.util.find_spec(self.library) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[library] is None or has no spec
            return False

    @abstractmethod
    def compile(self, onnx_path: Path, profile: TargetProfile, out_dir: Path, precision: Precision) -> Artifact:
        """Build the artifact for ``profile`` from a float or Q/DQ ONNX file, writing into ``out_dir``."""

    @abstractmethod
    def load(self, bundle_dir: Path, artifact: Artifact, **options: Any) -> Runner:
        """Load a previously compiled artifact for inference."""


def import_library(name: str, fix: str) -> ModuleType:
    """Import a backend's library, or raise BackendUnavailable with ``fix``."""
    try:
        return __import__(name)  # as an import statement does (honours import hooks); top-level names only
    except (ImportError, OSError) as exc:  # OSError: a wheel whose shared libraries cannot load
        raise BackendUnavailable(f"the {name} Python package is not installed here (or cannot load: {exc})", fix) from exc


def read_onnx_structure(onnx_path: Path):  # -> onnx.ModelProto
    """The graph of an ONNX file without its weights, read before a backend does: the backends'
    own errors for a missing or corrupt file are obscure."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendError(f"ONNX file {onnx_path} does not exist", "export or quantize the model first")
    try:
        return onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ...
        raise BackendError(f"cannot read ONNX file {onnx_path}: {exc}", "re-export the model") from exc


# name -> "module:Class", imported only when asked for
_REGISTRY: dict[BackendName, str] = {
    BackendName.OPENVINO: "edge_resnet.backends.openvino:OpenVINOBackend",
    BackendName.ONNXRUNTIME: "edge_resnet.backends.onnxruntime:OnnxRuntimeBackend",
    BackendName.TENSORRT: "edge_resnet.backends.tensorrt:TensorRTBackend",
}


def get_backend(name: BackendName | str) -> Backend:
    try:
        key = BackendName(name)
    except ValueError as exc:
        raise BackendError(f"unknown backend {name!r}", f"use one of {[b.value for b in BackendName]}") from exc
    module_name, cls_name = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)()
