"""OpenVINO backend: a Q/DQ (or float) ONNX -> OpenVINO IR (model.xml + model.bin) -> CompiledModel.

openvino is imported inside functions only, so this module imports without it.

What we rely on, and where it comes from:

* ``save_model`` compresses floating-point weights to FP16 unless told otherwise (openvino.save_model API docs:
  ``compress_to_fp16`` defaults to True). INT8 and FP32 builds pass False; an INT8 IR must never have its
  weights squeezed through FP16, FP16 builds pass True.
* The CPU plugin runs float parts of a model in bf16 on CPUs with native bf16 unless INFERENCE_PRECISION_HINT
  says otherwise ("Precision Control" guide): on a CPU whose OPTIMIZATION_CAPABILITIES list BF16 a float
  ResNet compiles to bf16 kernels by default, and an ``f16`` hint also ends up bf16. So FP32 artifacts (the float baseline) set ``f32``; INT8 artifacts set the profile's fallback precision
  for the layers outside Q/DQ. ``describe()`` reports what the device really chose.
* The compiled model's runtime graph (``get_runtime_model()``) carries per-primitive rt_info: ``layerType``,
  ``runtimePrecision``, ``primitiveType``, ``outputPrecisions``, ``originalLayersNames``, ``execOrder``
  (ov::exec_model_info). That is what the int8 coverage is read from.
* Thread safety: an InferRequest holds its input/output tensors, so two threads must not share one
  (openvinotoolkit/openvino#2349). ``OpenVINORunner.infer`` takes an idle request from a small pool, creating one
  when all are busy, so concurrent callers each run on their own request of the same CompiledModel.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_resnet.backends.base import (
    Artifact,
    Backend,
    FrameInput,
    Runner,
    ThroughputConfig,
    import_library,
)
from edge_resnet.backends.onnx_facts import OnnxFacts, inspect_onnx
from edge_resnet.bundle import confined
from edge_resnet.errors import BackendError
from edge_resnet.interrupts import deferred_interrupt
from edge_resnet.targets import BatchRange, TargetProfile
from edge_resnet.types import BackendName, Precision

log = logging.getLogger(__name__)

XML_FILE = "model.xml"
BIN_FILE = "model.bin"
INT8_PRECISIONS = frozenset({"u8", "i8"})
CONV_LAYER_TYPES = frozenset({"Convolution"})  # layerType of convolutions in the runtime graph

# profile.performance_hint -> OpenVINO PERFORMANCE_HINT value
PERFORMANCE_HINTS: dict[str, str] = {
    "latency": "LATENCY",
    "throughput": "THROUGHPUT",
    "cumulative_throughput": "CUMULATIVE_THROUGHPUT",
}
# never compress an int8 IR's weights to fp16; only an FP16 build asks for it
COMPRESS_TO_FP16: dict[Precision, bool] = {Precision.INT8: False, Precision.FP16: True, Precision.FP32: False}
# INFERENCE_PRECISION_HINT for the float parts of the model
INFERENCE_PRECISION: dict[Precision, str] = {Precision.FP32: "f32", Precision.FP16: "f16"}
# device names OpenVINO knows; the virtual ones dispatch to others and are not in available_devices
KNOWN_DEVICES = frozenset({"CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI", "BATCH"})
VIRTUAL_DEVICES = frozenset({"AUTO", "HETERO", "MULTI", "BATCH"})

# ------------------------------------------------------------------------------------------------ import


def import_openvino() -> ModuleType:
    return import_library("openvino", "pip install 'edge-resnet[openvino]' (or pip install openvino), or use the onnxruntime target")


def _version(ov: ModuleType) -> str:
    return str(ov.get_version()).split("-")[0]


def _ov_message(exc: BaseException) -> str:
    """The useful line of an OpenVINO exception (they start with C++ source locations)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1]


# ----------------------------------------------------------------------------------------------- devices


def _base_device(device: str) -> str:
    """ "GPU.1" -> "GPU", "HETERO:GPU,CPU" -> "HETERO"."""
    return device.split(":", 1)[0].split(".", 1)[0].strip().upper()


def check_device_name(device: str) -> None:
    if _base_device(device) not in KNOWN_DEVICES:
        raise BackendError(f"OpenVINO has no device called {device!r}",
                           f"use one of {sorted(KNOWN_DEVICES)} in the profile's device field")


def device_available(core: Any, device: str) -> bool:
    base = _base_device(device)
    if base in VIRTUAL_DEVICES:
        return True
    available = list(core.available_devices)
    return device in available or base in {_base_device(d) for d in available}


def require_device(core: Any, device: str) -> None:
    """BackendError naming the devices that are present when ``device`` is not."""
    check_device_name(device)
    if not device_available(core, device):
        available = ", ".join(core.available_devices) or "none"
        raise BackendError(
            f"OpenVINO device {device!r} is not available on this machine (available: {available})",
            "run on a machine with that device (and its driver), or compile for a profile whose device is listed",
        )


# -------------------------------------------------------------------------------------------------- ONNX


def check_precision(facts: OnnxFacts, precision: Precision, onnx_path: Path) -> None:
    if precision == Precision.INT8 and not facts.has_qdq:
        raise BackendError(f"{onnx_path} has no QuantizeLinear nodes, so an INT8 build has no scales",
                           "quantize the model first (edge-resnet quantize) and pass the Q/DQ ONNX")
    if precision != Precision.INT8 and facts.has_qdq:
        raise BackendError(f"{onnx_path} is a Q/DQ graph but precision {precision.value} was asked for",
                           "pass the float ONNX for a float build, or build with precision int8")


def batch_dimension(ov: ModuleType, batch: BatchRange) -> Any:
    """Static when the profile allows one batch size (NPU), else bounded dynamic min..max."""
    return ov.Dimension(batch.min) if batch.min == batch.max else ov.Dimension(batch.min, batch.max)


def convert(ov: ModuleType, onnx_path: Path, batch: BatchRange) -> Any:
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # openvino raises its own Error / RuntimeError types
        raise BackendError(f"OpenVINO {_version(ov)} could not convert {onnx_path}: {_ov_message(exc)}",
                           "check the ONNX with onnx.checker; re-export it with a supported opset") from exc
    param = model.inputs[0]
    shape = param.get_partial_shape()
    shape[0] = batch_dimension(ov, batch)
    try:
        model.reshape({param.get_any_name(): shape})
    except Exception as exc:
        raise BackendError(f"OpenVINO cannot set the batch of {onnx_path} to {batch.min}..{batch.max}: "
                           f"{_ov_message(exc)}", "export the ONNX with a dynamic batch axis") from exc
    return model


# -------------------------------------------------------------------------------------- runtime precisions


@dataclass(frozen=True)
class RuntimeLayer:
    """One primitive of a compiled model's runtime graph."""

    name: str
    layer_type: str
    runtime_precision: str  # "u8", "i8", "f32", "bf16", ...
    primitive: str  # e.g. "brgconv_avx512_I8"
    output_precisions: str
    original_layers: str  # the IR layers fused into this primitive


def _compiled_of(runner_or_compiled: Any) -> Any:
    return getattr(runner_or_compiled, "compiled", runner_or_compiled)


def _rt(info: Any, key: str) -> str:
    return str(info[key].astype(str)) if key in info else ""


def runtime_layers(runner_or_compiled: Any, layer_types: frozenset[str] | None = CONV_LAYER_TYPES) -> list[RuntimeLayer]:
    """The runtime graph's primitives of ``layer_types`` (all when None), in execution order."""
    out = []
    for op in _compiled_of(runner_or_compiled).get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = _rt(info, "layerType")
        if layer_types is None or layer_type in layer_types:
            out.append(RuntimeLayer(op.get_friendly_name(), layer_type, _rt(info, "runtimePrecision"),
                                    _rt(info, "primitiveType"), _rt(info, "outputPrecisions"),
                                    _rt(info, "originalLayersNames")))
    return out


def runtime_precisions(runner_or_compiled: Any) -> dict[str, str]:
    """Convolution name -> the precision it runs in (``u8``/``i8`` when int8)."""
    return {layer.name: layer.runtime_precision for layer in runtime_layers(runner_or_compiled)}


def runtime_primitives(runner_or_compiled: Any) -> dict[str, str]:
    """Convolution name -> the kernel the plugin picked (e.g. ``brgconv_avx512_I8``)."""
    return {layer.name: layer.primitive for layer in runtime_layers(runner_or_compiled)}


def int8_coverage(runner_or_compiled: Any) -> tuple[int, int]:
    """(convolutions running in u8/i8, all convolutions) of the compiled model."""
    precisions = runtime_precisions(runner_or_compiled).values()
    return sum(p in INT8_PRECISIONS for p in precisions), len(precisions)


def coverage_summary(runner_or_compiled: Any) -> dict[str, Any]:
    layers = runtime_layers(runner_or_compiled)
    n_int8, n = int8_coverage(runner_or_compiled)
    return {"int8_convs": n_int8, "convs": n,
            "conv_primitives": dict(Counter(f"{x.runtime_precision}:{x.primitive}" for x in layers))}


# ---------------------------------------------------------------------------------------- runtime config


def performance_hint(name: str) -> str:
    try:
        return PERFORMANCE_HINTS[name.lower()]
    except KeyError:
        raise BackendError(f"unknown OpenVINO performance hint {name!r}",
                           f"use one of {sorted(PERFORMANCE_HINTS)}") from None


def inference_precision_for(precision: Precision, fallback: Precision) -> str | None:
    """The INFERENCE_PRECISION_HINT of an artifact: its own for float builds, the fallback's for INT8."""
    return INFERENCE_PRECISION.get(fallback if precision == Precision.INT8 else precision)


def runtime_config(core: Any, device: str, hint: str, threads: int | None,
                   inference_precision: str | None) -> dict[str, Any]:
    """compile_model properties, without the ones the device does not support (logged)."""
    wanted: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint(hint)}
    if threads:
        wanted["INFERENCE_NUM_THREADS"] = int(threads)
    if inference_precision:
        wanted["INFERENCE_PRECISION_HINT"] = inference_precision
    if _base_device(device) in VIRTUAL_DEVICES:
        return wanted
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:  # a plugin that cannot answer: pass everything and let compile_model judge
        return wanted
    for key in sorted(set(wanted) - supported):
        log.warning("OpenVINO %s does not support %s; ignoring it", device, key)
    return {k: v for k, v in wanted.items() if k in supported}


def compile_for(core: Any, model: Any, device: str, config: dict[str, Any], what: str) -> Any:
    try:
        return core.compile_model(model, device, config)
    except Exception as exc:
        raise BackendError(f"OpenVINO could not compile {what} for {device}: {_ov_message(exc)}",
                           "check the device driver; try the CPU profile to see whether the model itself is at fault") from exc


# ------------------------------------------------------------------------------------------------ runner


class _RequestPool:
    """Idle InferRequests of one CompiledModel; a caller gets one to itself for the duration of a call."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    @contextmanager
    def acquire(self) -> Iterator[Any]:
        with self._lock:
            request = self._idle.pop() if self._idle else None
        if request is None:
            request = self._compiled.create_infer_request()
        try:
            yield request
        finally:
            with self._lock:
                self._idle.append(request)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


@dataclass
class RunnerSettings:
    device: str
    precision: Precision
    performance_hint: str
    config: dict[str, Any] = field(default_factory=dict)


class OpenVINORunner(Runner):
    """A compiled IR. ``compiled`` is the openvino CompiledModel, for advanced use.

    Thread safety: ``infer`` may be called from several threads at once; each call runs on its own
    InferRequest (taken from a pool, created on demand), all sharing the one CompiledModel.
    """

    thread_safe = True

    def __init__(self, ov: ModuleType, compiled: Any, settings: RunnerSettings) -> None:
        self._ov = ov
        self.compiled = compiled
        self.settings = settings
        port = compiled.input(0)
        self.input_name = port.get_any_name()
        shape = port.get_partial_shape()
        batch = shape[0]
        self.min_batch = max(1, int(batch.get_min_length()))
        self.max_batch = int(batch.get_max_length()) if batch.get_max_length() > 0 else None  # None: unbounded
        self.sample_shape = tuple(int(d.get_length()) for d in list(shape)[1:])
        self.input_dtype = np.dtype(np.uint8) if port.get_element_type() == ov.Type.u8 else np.dtype(np.float32)
        self._pool = _RequestPool(compiled)

    # ---- synchronous

    def infer_impl(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        if n < self.min_batch:  # a static-batch IR (NPU): pad, then drop the padding
            chunk = np.concatenate([chunk, np.zeros((self.min_batch - n, *self.sample_shape), self.input_dtype)])
        with self._pool.acquire() as request:
            try:
                out = request.infer({0: chunk})[0]
            except RuntimeError as exc:
                raise BackendError(f"OpenVINO inference failed: {_ov_message(exc)}") from exc
        return np.asarray(out[:n], dtype=np.float32)

    # ---- asynchronous

    def optimal_requests(self) -> int:
        try:
            return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except Exception:
            return 1

    def throughput_configured(self) -> bool:
        return str(self.settings.performance_hint).lower() == "throughput"

    # ---- introspection

    def _property(self, name: str) -> Any:
        try:
            return self.compiled.get_property(name)
        except Exception:  # not every device reports every property
            return None

    def describe(self) -> dict[str, Any]:
        precision = self._property("INFERENCE_PRECISION_HINT")
        return {
            "backend": BackendName.OPENVINO.value,
            "openvino_version": _version(self._ov),
            "device": self.settings.device,
            "precision": self.settings.precision.value,
            "performance_hint": str(self._property("PERFORMANCE_HINT") or self.settings.performance_hint),
            "inference_precision": precision.to_string() if hasattr(precision, "to_string") else precision,
            "threads": self._property("INFERENCE_NUM_THREADS"),
            "num_streams": self._property("NUM_STREAMS"),
            "optimal_requests": self._property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
            "batch": [self.min_batch, self.max_batch],
            "config": dict(self.settings.config),
        }

    def close(self) -> None:
        self._pool.clear()


# ----------------------------------------------------------------------------------------------- bundle


def artifact_files(bundle_dir: Path, artifact: Artifact) -> tuple[Path, Path]:
    """The IR files of ``artifact``: present, and of the size compile wrote (when it recorded it)."""
    sizes = artifact.info.get("file_bytes", {})
    paths = []
    for role in ("xml", "bin"):
        if role not in artifact.files:
            raise BackendError(f"the OpenVINO artifact lists no {role} file", "re-run compile for this target")
        path = confined(bundle_dir, artifact.files[role], f"OpenVINO {role} file")
        if not path.is_file():
            raise BackendError(f"the bundle has no OpenVINO {role} file {path}", "re-run compile for this target")
        expected, actual = sizes.get(role), path.stat().st_size
        if expected is not None and actual != expected:
            raise BackendError(f"{path} is {actual} bytes but compile wrote {expected}: truncated or modified",
                               "copy the bundle again, or re-run compile for this target")
        paths.append(path)
    return paths[0], paths[1]


def save_ir(ov: ModuleType, model: Any, xml: Path, compress: bool) -> None:
    try:
        ov.save_model(model, str(xml), compress_to_fp16=compress)
    except Exception as exc:  # OpenVINO reports a failed write (full disk, file size limit) as its own error
        raise BackendError(f"OpenVINO could not write the IR {xml} (+ .bin): {_ov_message(exc)}",
                           "check that the disk has room and the output folder is writable") from exc


def read_ir(core: Any, xml: Path, bin_path: Path) -> Any:
    try:
        return core.read_model(str(xml), str(bin_path))
    except Exception as exc:
        raise BackendError(f"OpenVINO cannot read {xml.name} + {bin_path.name} in {xml.parent}: {_ov_message(exc)}",
                           "the IR is corrupt or from an incompatible OpenVINO: re-run compile for this target") from exc


def with_frame_input(ov: ModuleType, model: Any, frame_input: FrameInput) -> Any:
    """``model`` taking uint8 N x S x S x 3 frames: OpenVINO's PrePostProcessor converts, swaps channels and
    normalises inside the model. The steps are the spec's own float32 ones in its order (``/ 255``,
    ``- mean``, ``/ std``); the plugin may still fuse them (into the first FakeQuantize of an INT8 model),
    so results can differ from the host path in the last bit before the first quantizer."""
    from openvino.preprocess import ColorFormat, PrePostProcessor

    spec = frame_input.spec
    color = {"rgb": ColorFormat.RGB, "bgr": ColorFormat.BGR}
    try:
        ppp = PrePostProcessor(model)
        entry = ppp.input()
        entry.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
            .set_color_format(color[frame_input.order.value])
        entry.model().set_layout(ov.Layout("NCHW"))
        steps = entry.preprocess()
        steps.convert_element_type(ov.Type.f32)
        if frame_input.order is not spec.channel_order:
            steps.convert_color(color[spec.channel_order.value])
        steps.scale(255.0).mean(list(spec.mean)).scale(list(spec.std))
        return ppp.build()
    except Exception as exc:
        raise BackendError(f"OpenVINO could not add the frame input to the model: {_ov_message(exc)}",
                           "load without frame_input and pass float32 NCHW batches") from exc


# ----------------------------------------------------------------------------------------------- backend


class OpenVINOBackend(Backend):
    name = BackendName.OPENVINO
    library = "openvino"
    load_options = {"inference_precision": (str, type(None)), "frame_input": (FrameInput, type(None))}
    takes_frames = True

    def throughput_config(self) -> ThroughputConfig:
        """OpenVINO's THROUGHPUT hint and its number of requests, as ``benchmark_app`` runs it."""
        return ThroughputConfig({"hint": "throughput"})

    def compile(self, onnx_path: Path, profile: TargetProfile, out_dir: Path, precision: Precision) -> Artifact:
        """ONNX -> IR in ``out_dir``; the int8 coverage is measured when the profile's device is present.

        Ctrl-C is deferred until each OpenVINO call returns (see edge_resnet.interrupts): OpenVINO's
        conversion would swallow it and the build would go on."""
        ov = import_openvino()
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        check_device_name(profile.device)
        facts = inspect_onnx(onnx_path, "OpenVINO")
        check_precision(facts, precision, onnx_path)
        with deferred_interrupt("the OpenVINO conversion"):
            model = convert(ov, onnx_path, profile.batch)
        out_dir.mkdir(parents=True, exist_ok=True)
        compress = COMPRESS_TO_FP16[precision]
        with deferred_interrupt("OpenVINO's save_model"):
            save_ir(ov, model, out_dir / XML_FILE, compress)
        files = {"xml": XML_FILE, "bin": BIN_FILE}
        inference_precision = inference_precision_for(precision, profile.fallback_precision)
        info: dict[str, Any] = {
            "openvino_version": _version(ov),
            "device": profile.device,
            "performance_hint": profile.performance_hint,
            "threads": profile.threads,
            "inference_precision": inference_precision,
            "compress_to_fp16": compress,
            "activation_format": profile.activation_format.value if precision == Precision.INT8 else None,
            "batch": [profile.batch.min, profile.batch.max],
            "input_name": facts.input_name,
            "file_bytes": {role: (out_dir / f).stat().st_size for role, f in files.items()},
        }
        with deferred_interrupt("the OpenVINO compilation"):
            info.update(self._build_coverage(ov, out_dir, profile, precision, inference_precision))
        log.info("wrote OpenVINO IR %s (%s)", out_dir / XML_FILE, info)
        return Artifact(self.name, precision, files, info)

    def _build_coverage(self, ov: ModuleType, out_dir: Path, profile: TargetProfile, precision: Precision,
                        inference_precision: str | None) -> dict[str, Any]:
        if precision != Precision.INT8:
            return {}
        core = ov.Core()
        if not device_available(core, profile.device):
            log.warning("OpenVINO device %s is not on this machine: int8 coverage is measured at load time",
                        profile.device)
            return {"int8_convs": None, "convs": None}
        config = runtime_config(core, profile.device, profile.performance_hint, profile.threads, inference_precision)
        compiled = compile_for(core, read_ir(core, out_dir / XML_FILE, out_dir / BIN_FILE), profile.device, config,
                               str(out_dir / XML_FILE))
        summary = coverage_summary(compiled)
        if summary["int8_convs"] < summary["convs"]:
            log.warning("only %d of %d convolutions run in int8 on %s: %s", summary["int8_convs"], summary["convs"],
                        profile.device, summary["conv_primitives"])
        return summary

    def load(self, bundle_dir: Path, artifact: Artifact, threads: int | None = None, hint: str | None = None,
             frame_input: FrameInput | None = None, **options: Any) -> OpenVINORunner:
        """Compile the IR for the artifact's device. ``threads``/``hint`` override the profile's; option
        ``inference_precision`` overrides the artifact's INFERENCE_PRECISION_HINT ("" lets the device choose).
        ``frame_input``: the compiled model takes uint8 frames (:func:`with_frame_input`)."""
        ov = import_openvino()
        xml, bin_path = artifact_files(Path(bundle_dir), artifact)
        device = str(artifact.info.get("device", "CPU"))
        core = ov.Core()
        require_device(core, device)
        hint = hint or str(artifact.info.get("performance_hint", "latency"))
        precision_hint = options.get("inference_precision", artifact.info.get("inference_precision"))
        if precision_hint is None and artifact.precision != Precision.INT8:
            precision_hint = INFERENCE_PRECISION.get(artifact.precision)
        config = runtime_config(core, device, hint, threads or artifact.info.get("threads"), precision_hint or None)
        model = read_ir(core, xml, bin_path)
        if frame_input is not None:
            model = with_frame_input(ov, model, frame_input)
        compiled = compile_for(core, model, device, config, str(xml))
        return OpenVINORunner(ov, compiled, RunnerSettings(device, artifact.precision, hint, config))
