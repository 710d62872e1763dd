"""The one small interface every backend implements (after Polygraphy's loader/runner split).

    backend.compile(qdq_onnx, profile, out_dir, precision) -> Artifact   # build, write files
    backend.load(artifact_dir, artifact) -> Runner                        # deserialize
    runner.infer(batch) -> logits or features                             # run

and two hooks ``compile`` calls, with defaults here, for backends whose bundle needs more than one artifact
(TensorRT: a device-side build script, a calibration cache, DeepStream files):

    backend.calibration_tensors(model, profile, config) -> tensors calibration must measure
    backend.prepare_bundle(context) -> Artifact                          # default: compile the backend input

Heavy libraries (openvino, tensorrt, cuda) are imported inside the backend modules' functions,
never at import time, so `import edge_resnet` works without them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_resnet.errors import BackendError, BackendUnavailable, BundleError
from edge_resnet.targets import TargetProfile
from edge_resnet.types import ActivationFormat, BackendName, Precision

if TYPE_CHECKING:
    import onnx

    from edge_resnet.data.preprocess import ChannelOrder, PreprocessSpec
    from edge_resnet.quant.qdq import QuantConfig


@dataclass
class Artifact:
    """What a backend wrote into a bundle: file names relative to the bundle directory."""

    backend: BackendName
    precision: Precision
    files: dict[str, str]  # role -> relative path, e.g. {"engine": "model.plan"}
    info: dict[str, Any] = field(default_factory=dict)  # versions, device, int8 coverage, ...
    # role -> relative path of files the *device* writes later (e.g. {"engine": "model.plan", "record":
    # "engine.json"}): declared at compile time, so the manifest names every path the bundle may hold
    device_build: dict[str, str] = field(default_factory=dict)

    @property
    def runnable(self) -> bool:
        """False when the artifact must be built on its device before it runs (a TensorRT bundle prepared on
        a host without a GPU); the backend records it as ``info["runnable"]``, with ``reason`` and ``how_to_build``."""
        return bool(self.info.get("runnable", True))

    def to_dict(self) -> dict[str, Any]:
        d = {"backend": self.backend.value, "precision": self.precision.value, "files": self.files, "info": self.info}
        if self.device_build:
            d["device_build"] = dict(self.device_build)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        return cls(BackendName(d["backend"]), Precision(d["precision"]), dict(d["files"]), dict(d.get("info", {})),
                   dict(d.get("device_build") or {}))


@dataclass
class BundleContext:
    """What ``compile`` hands a backend's :meth:`Backend.prepare_bundle`: the graphs written so far and what
    they were made from. Paths are inside ``out_dir``."""

    profile: TargetProfile
    out_dir: Path
    precision: Precision
    graphs: dict[str, Path]  # "float", and "int8" when a Q/DQ graph was made
    spec: Any  # PreprocessSpec
    labels: list[str]
    output_name: str = "logits"  # "logits" (classifier) or "features"
    stats: Any = None  # ActivationStats of the calibration (INT8 only)
    calibration: Any = None  # CalibrationOptions
    quantizers: dict[str, tuple[float, int]] = field(default_factory=dict)  # Q/DQ tensor -> (scale, zero point)

    @property
    def backend_input(self) -> Path:
        return self.graphs.get("int8", self.graphs["float"])


@dataclass(frozen=True)
class FrameInput:
    """The load option ``frame_input``: the runner takes uint8 ``N x S x S x 3`` frames (resized and cropped,
    channels in ``order``) and does the conversion to float, the channel swap, the spec's mean/std and
    HWC -> NCHW inside the model, where the backend can fuse them. Backends that can declare
    ``Backend.takes_frames = True``."""

    spec: PreprocessSpec
    order: ChannelOrder

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.spec.input_size, self.spec.input_size, 3)


@dataclass(frozen=True)
class FramesDeclaration:
    """What the manifest says of an artifact's uint8 frame input: its channel order and where it comes from."""

    channel_order: str
    how: str


AT_LOAD = FramesDeclaration("chosen at load (edge_resnet.runtime.load order=..., default bgr)",
                            "added at load: backends.base.FrameInput")


def declared_inputs(backend: Backend, spec: PreprocessSpec, input_name: str,
                    artifact: Artifact | None = None) -> dict[str, Any]:
    """The manifest's ``inputs``: the entry points a bundle's artifact offers at load."""
    size = spec.input_size
    inputs: dict[str, Any] = {"tensor": {
        "name": input_name, "dtype": "float32", "layout": "NCHW", "shape": [None, 3, size, size],
        "channel_order": spec.channel_order.value, "what": "preprocessed: resized, cropped, normalised (preprocess)"}}
    frames = backend.frames_declaration(artifact)
    if frames is not None:
        inputs["frames"] = {
            "dtype": "uint8", "layout": "NHWC", "shape": [None, size, size, 3],
            "channel_order": frames.channel_order,
            "what": "resized and cropped frames (preprocess resize/resampler); the engine converts, swaps channels "
                    f"and normalises ({frames.how})"}
    return inputs


class Runner(ABC):
    """A loaded artifact, split as Polygraphy's BaseRunner: ``infer`` checks a float32 NCHW batch against
    the declared input (``sample_shape``, the batch range) and cuts it to ``max_batch``; the backend's
    ``infer_impl`` runs one such chunk and returns a float32 array. A runner loaded with a
    :class:`FrameInput` takes uint8 N x S x S x 3 frames instead (``input_dtype`` uint8).

    Declared by every backend: ``input_name``, ``input_dtype``, ``sample_shape`` (C, H, W, or
    S, S, 3 for frames; None for a dynamic dim),
    ``min_batch``/``max_batch`` (a static-batch artifact pads smaller chunks up to ``min_batch`` in
    ``infer_impl``; ``max_batch`` None: unbounded), ``thread_safe`` (may ``infer`` be called from
    several threads at once), ``describe()`` and ``optimal_requests()`` (parallel requests that keep
    the device busy, for throughput runs). Backends with a throughput configuration
    (:meth:`Backend.throughput_config`) also say whether a runner was loaded in it
    (``throughput_configured()``) and how many inferences to run on it at once (``parallel_requests()``).
    """

    input_name: str = "input"
    input_dtype: np.dtype = np.dtype(np.float32)
    sample_shape: tuple[int | None, ...] = ()
    min_batch: int = 1
    max_batch: int | None = None
    thread_safe: bool = False
    artifact_noun = "model"  # how the batch error names what was loaded

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        step = self.max_batch or batch.shape[0]
        if batch.shape[0] <= step:
            return self.infer_impl(batch)
        return np.concatenate([self.infer_impl(batch[i:i + step]) for i in range(0, batch.shape[0], step)], axis=0)

    @abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        """One checked chunk: ``input_dtype``, C-contiguous, 1..max_batch images of ``sample_shape``."""

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.uint8 and getattr(batch, "dtype", None) != np.uint8:
            raise BackendError(f"this {self.artifact_noun} takes uint8 frames (N x S x S x 3), got "
                               f"{getattr(batch, 'dtype', type(batch).__name__)}",
                               "pass resized and cropped uint8 frames, or load it without frame_input for "
                               "float32 NCHW batches")
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        shape = self.sample_shape
        if shape and (batch.ndim != 1 + len(shape)
                      or any(d is not None and batch.shape[1 + i] != d for i, d in enumerate(shape))):
            want = " x ".join(str(d) if d is not None else "?" for d in shape)
            raise BackendError(f"input batch has shape {batch.shape}; this {self.artifact_noun} takes N x {want}")
        if batch.ndim == 0 or batch.shape[0] < 1:
            raise BackendError(f"input batch has shape {batch.shape}: no images", "pass at least one image")
        return batch

    @property
    def input_metadata(self) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
        """Polygraphy's TensorMetadata, as a dict: name -> (dtype, shape with None for a dynamic batch)."""
        batch = self.min_batch if self.min_batch == self.max_batch else None
        return {self.input_name: (self.input_dtype, (batch, *self.sample_shape))}

    def describe(self) -> dict[str, Any]:
        return {}

    def optimal_requests(self) -> int:
        return 1

    def parallel_requests(self) -> int:
        """Inferences to run at once on this runner in its backend's throughput configuration."""
        return max(1, int(self.optimal_requests()))

    def throughput_configured(self) -> bool:
        """True when this runner was loaded with its backend's throughput configuration already."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ThroughputConfig:
    """How a backend runs many frames at once (a stream): the ``load`` options of its throughput
    configuration and the most frames one inference call takes (only frames already waiting are batched).

    On a CPU one inference spread over all cores (the latency configuration ``load`` gives by default)
    costs more CPU per frame than one single-threaded inference per core, because the cores synchronise
    inside every layer (figures: benchmarks/README.md). Results do not change between the two
    configurations; the runtime tests check it (stream results == classify results, scores exact).
    """

    load_options: dict[str, Any]  # for Bundle.load_runner
    batch: int = 4


_NONE = type(None)
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true/false", _NONE: "None"}
ANY_OBJECT: tuple[type, ...] = ()  # a load option taking any object (an injected module, for tests)

# options every backend's ``load`` takes (a backend without the notion ignores it): callers such as the
# benchmark pass them to any backend; name -> the types it takes
COMMON_LOAD_OPTIONS: dict[str, tuple[type, ...]] = {"threads": (int, _NONE), "hint": (str, _NONE)}


def check_load_options(backend: Backend, options: dict[str, Any]) -> None:
    """One BackendError for a load option ``backend`` does not declare, or of a type it does not take."""
    if backend.load_options is None:
        return
    allowed = {**COMMON_LOAD_OPTIONS, **backend.load_options}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise BackendError(f"unknown load option(s) {', '.join(unknown)} for the {backend.name.value} backend",
                           f"use {', '.join(sorted(allowed))} (or none)")
    for name, value in options.items():
        types = allowed[name]
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise BackendError(f"load option {name}={value!r} for the {backend.name.value} backend is "
                               f"{_TYPE_NAMES.get(type(value), type(value).__name__)}, expected {want}",
                               f"pass {name} as {want} (or leave it out)")


class Backend(ABC):
    name: BackendName
    library: str  # the Python module the backend needs, e.g. "openvino"
    # the keyword options ``load`` takes besides COMMON_LOAD_OPTIONS, name -> the types each takes; others, and
    # other types, are refused by Bundle.load_runner (check_load_options; None: not declared, nothing checked)
    load_options: dict[str, tuple[type, ...]] | None = None
    takes_frames: bool = False  # load(..., frame_input=FrameInput(...)) gives a runner taking uint8 frames

    def frames_declaration(self, artifact: Artifact | None) -> FramesDeclaration | None:
        """How ``artifact`` takes uint8 frames, for the manifest; None when it cannot."""
        return AT_LOAD if self.takes_frames else None

    def frame_input_problem(self, bundle: Any) -> BundleError | None:
        """Why ``bundle`` (an opened Bundle) cannot be loaded with ``frame_input`` here; None when it can."""
        if self.takes_frames:
            return None
        return BundleError(f"the {self.name.value} backend cannot normalise frames inside the engine",
                           "load with normalize_in_engine=False (the host normalises)")

    def throughput_config(self) -> ThroughputConfig | None:
        """This backend's throughput configuration; None (the default): streams use the model's own
        runner, one frame at a time (TensorRT: one GPU, and its kernels may depend on the batch size)."""
        return None

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

    def calibration_tensors(self, model: onnx.ModelProto, profile: TargetProfile, config: QuantConfig) -> list[str]:
        """The activation tensors calibration must measure for this backend's build."""
        from edge_resnet.quant.qdq import required_tensors

        return required_tensors(model, config)

    def reusable_tensors(self, model: onnx.ModelProto, profile: TargetProfile) -> list[str]:
        """Tensors whose statistics serve any later ``exclude`` list, for both Q/DQ formats."""
        from edge_resnet.quant.qdq import QuantConfig, required_tensors

        return required_tensors(model, QuantConfig(profile.activation_format),
                                formats=(ActivationFormat.S8S8, ActivationFormat.U8S8))

    def prepare_bundle(self, context: BundleContext) -> Artifact:
        """Write this backend's part of a bundle into ``context.out_dir``; the default compiles the backend input."""
        return self.compile(context.backend_input, context.profile, context.out_dir, context.precision)


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
    BackendName.TENSORRT: "edge_resnet.backends.tensorrt.backend:TensorRTBackend",
}


def get_backend(name: BackendName | str) -> Backend:
    try:
        key = BackendName(name)
    except ValueError as exc:
        raise BackendError(f"unknown backend {name!r}", f"use one of {[b.value for b in BackendName]}") from exc
    module_name, cls_name = _REGISTRY[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)()
