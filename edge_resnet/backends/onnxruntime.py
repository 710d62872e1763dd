"""ONNX Runtime backend (CPU execution provider): the artifact is the ONNX itself.

What we rely on, and where it comes from:

* ORT's QDQ transformers fuse DQ -> Conv -> Q into QLinearConv and DQ -> Add -> Q into QLinearAdd only when a
  QuantizeLinear directly follows the op. edge-resnet's u8s8 placement has those Q/DQ on op outputs, its s8s8
  placement (op inputs only, for TensorRT) does not: a u8s8 ResNet gets QLinearConv and QLinearAdd, an s8s8
  one none (counts in benchmarks/README.md). (The activation type alone is not the cause: a lone int8 DQ -> Conv -> Q
  does fuse, ORT on x86 turning it into uint8 itself.) That is why the ``onnxruntime`` profile is u8s8.
* ``compile`` also saves ORT's optimized graph for inspection, at ORT_ENABLE_EXTENDED: above that level the
  NCHWc/NHWC layout transformers rewrite the graph for this machine's CPU, and ORT warns that such a saved model
  "may contain hardware specific optimizations, and should only be used in the same environment the model was
  optimized in" (onnxruntime/core/session/inference_session.cc). The QDQ fusions already happen at EXTENDED.
  ``load`` always starts from the original model.onnx, at ORT_ENABLE_ALL, on the machine that runs it.
* Thread safety: ``InferenceSession.run`` may be called from several threads at once on one session
  (microsoft/onnxruntime#114; ORT's own TensorRT-EP fix #19301 restates "InferenceSession::Run() is guaranteed to
  be thread-safe"), so the runner shares one session and takes no lock.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
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
from edge_resnet.targets import TargetProfile
from edge_resnet.types import ActivationFormat, BackendName, Precision

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
OPTIMIZED_FILE = "model.ort-optimized.onnx"
CONV_OPS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger"})  # any domain
PROVIDERS = ["CPUExecutionProvider"]

# ------------------------------------------------------------------------------------------------ import


def import_onnxruntime() -> ModuleType:
    return import_library("onnxruntime", "pip install onnxruntime (a dependency of edge-resnet: reinstall the package)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -------------------------------------------------------------------------------------------------- ONNX


# element type of the activation QuantizeLinear outputs -> the activation format it means
_FORMAT_OF_DTYPE: dict[str, ActivationFormat] = {"uint8": ActivationFormat.U8S8, "int8": ActivationFormat.S8S8}


def activation_format_of(facts: OnnxFacts) -> str | None:
    """The graph's activation format ("u8s8"/"s8s8"), "mixed", or None for a float graph."""
    formats = {_FORMAT_OF_DTYPE[d].value for d in facts.activation_dtypes if d in _FORMAT_OF_DTYPE}
    return formats.pop() if len(formats) == 1 else ("mixed" if formats else None)


_PRECISION_CHECKS: dict[Precision, tuple[bool | None, str, str]] = {
    # precision -> (needs Q/DQ: True, must not have it: False, either: None; problem; fix)
    Precision.INT8: (True, "has no QuantizeLinear nodes, so an INT8 build has no scales",
                     "quantize the model first (edge-resnet quantize --target onnxruntime) and pass the Q/DQ ONNX"),
    Precision.FP32: (False, "is a Q/DQ graph but precision fp32 was asked for",
                     "pass the float ONNX for a float build, or build with precision int8"),
}


def check_precision(facts: OnnxFacts, precision: Precision, onnx_path: Path) -> None:
    if precision == Precision.FP16:
        raise BackendError("the ONNX Runtime CPU backend has no FP16 path (most CPU kernels are float32 only)",
                           "build with precision fp32 or int8, or use an OpenVINO/TensorRT target for FP16")
    needs_qdq, problem, fix = _PRECISION_CHECKS[precision]
    if facts.has_qdq != needs_qdq:
        raise BackendError(f"{onnx_path} {problem}", fix)


def warn_float_convs(facts: OnnxFacts, n_qconv: int, n_conv: int, onnx_path: Path) -> None:
    """An INT8 build whose convolutions did not all fuse into QLinearConv: say why when we know."""
    if n_qconv == n_conv:
        return
    placement = ("; this is an s8s8 graph, whose Q/DQ sit on op inputs only (TensorRT's placement)"
                 if "int8" in facts.activation_dtypes else "")
    log.warning("only %d of %d convolutions of %s became QLinearConv; the rest run in float. ONNX Runtime fuses "
                "DQ -> Conv -> Q only when a QuantizeLinear directly follows the conv%s: quantize for this target "
                "with activation_format u8s8", n_qconv, n_conv, onnx_path, placement)


def copy_model(onnx_path: Path, facts: OnnxFacts, dest: Path) -> None:
    """A single-file copy: external weights are pulled in, so the bundle holds one self-contained file."""
    if not facts.uses_external_data:
        shutil.copyfile(onnx_path, dest)
        return
    import onnx

    try:
        onnx.save(onnx.load(str(onnx_path)), str(dest))
    except Exception as exc:
        raise BackendError(f"cannot copy {onnx_path} with its external data: {exc}",
                           "check that the .data file next to it is complete") from exc


# ----------------------------------------------------------------------------------------- optimization


def op_counts(onnx_path: Path) -> Counter:
    """op type (domain dropped) -> count, over the main graph."""
    import onnx

    return Counter(n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)


def quantized_fraction(counts: Counter) -> tuple[int, int]:
    """(QLinearConv count, all convolution count)."""
    return counts["QLinearConv"], sum(counts[op] for op in CONV_OPS)


def save_optimized(ort: ModuleType, model_path: Path, dest: Path) -> None:
    """ORT's portable (ORT_ENABLE_EXTENDED) optimized graph of ``model_path``, written to ``dest``."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(model_path), so, providers=PROVIDERS)
    except Exception as exc:  # ORT raises its own pybind exception types
        raise BackendError(f"ONNX Runtime {ort.__version__} cannot load {model_path}: {_first_line(exc)}",
                           "check the model with onnx.checker; re-export it with a supported opset") from exc


# ------------------------------------------------------------------------------------------------ runner


class OnnxRuntimeRunner(Runner):
    """One InferenceSession (CPU EP). ``infer`` may be called from several threads at once (see module docs)."""

    thread_safe = True

    def __init__(self, ort: ModuleType, session: Any, precision: Precision, threads: int | None) -> None:
        self._ort = ort
        self.session = session
        self.precision = precision
        self.threads = threads
        node = session.get_inputs()[0]
        self.input_name = node.name
        self.output_name = session.get_outputs()[0].name
        self.sample_shape = tuple(d if isinstance(d, int) else None for d in node.shape[1:])
        self.input_dtype = np.dtype(np.uint8) if node.type == "tensor(uint8)" else np.dtype(np.float32)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise BackendError("this ONNX Runtime runner is closed", "load the artifact again")
        try:
            out = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:
            raise BackendError(f"ONNX Runtime inference failed: {_first_line(exc)}") from exc
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": BackendName.ONNXRUNTIME.value,
            "onnxruntime_version": self._ort.__version__,
            "providers": list(self.session.get_providers()),
            "precision": self.precision.value,
            "intra_op_num_threads": self.threads,  # None: ORT's default (one per physical core)
            "inter_op_num_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL",
        }

    def parallel_requests(self) -> int:
        """One single-threaded inference per core this process may run on."""
        from edge_resnet.host_cpu import available_cores

        return available_cores()

    def throughput_configured(self) -> bool:
        return self.threads == 1

    def close(self) -> None:
        self.session = None


# ----------------------------------------------------------------------------------------------- bundle


def artifact_model(bundle_dir: Path, artifact: Artifact) -> Path:
    """The artifact's model.onnx: present, and of the size compile wrote (when it recorded it)."""
    if "model" not in artifact.files:
        raise BackendError("the ONNX Runtime artifact lists no model file", "re-run compile for this target")
    path = confined(bundle_dir, artifact.files["model"], "ONNX Runtime model file")
    if not path.is_file():
        raise BackendError(f"the bundle has no ONNX Runtime model file {path}", "re-run compile for this target")
    expected, actual = artifact.info.get("file_bytes", {}).get("model"), path.stat().st_size
    if expected is not None and actual != expected:
        raise BackendError(f"{path} is {actual} bytes but compile wrote {expected}: truncated or modified",
                           "copy the bundle again, or re-run compile for this target")
    return path


def session_options(ort: ModuleType, threads: int | None) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    return so


def _with_frame_input(path: Path, frame_input: FrameInput) -> bytes:
    import onnx

    from edge_resnet.graph.input_normalization import with_frame_input

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise BackendError(f"cannot read {path}: {exc}",
                           "the file is corrupt or was modified: copy the bundle again or re-run compile") from exc
    return with_frame_input(model, frame_input.spec, frame_input.order).SerializeToString()


# ----------------------------------------------------------------------------------------------- backend


class OnnxRuntimeBackend(Backend):
    name = BackendName.ONNXRUNTIME
    library = "onnxruntime"
    # and threads (intra-op); a performance hint is ignored
    load_options = {"frame_input": (FrameInput, type(None))}
    takes_frames = True

    def throughput_config(self) -> ThroughputConfig:
        """Sessions of one thread, one per core (``run`` may be called from several threads at once)."""
        return ThroughputConfig({"threads": 1})

    def compile(self, onnx_path: Path, profile: TargetProfile, out_dir: Path, precision: Precision) -> Artifact:
        """Copy the model into ``out_dir`` and save ORT's portable optimized graph next to it, for inspection."""
        ort = import_onnxruntime()
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        facts = inspect_onnx(onnx_path, "ONNX Runtime")
        check_precision(facts, precision, onnx_path)
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / MODEL_FILE
        copy_model(onnx_path, facts, model_path)
        save_optimized(ort, model_path, out_dir / OPTIMIZED_FILE)
        counts = op_counts(out_dir / OPTIMIZED_FILE)
        n_qconv, n_conv = quantized_fraction(counts)
        if precision == Precision.INT8:
            warn_float_convs(facts, n_qconv, n_conv, onnx_path)
        info = {
            "onnxruntime": ort.__version__,
            "qlinearconv": n_qconv,
            "convs": n_conv,
            "qlinearadd": counts["QLinearAdd"],
            "op_counts": dict(sorted(counts.items())),
            "optimized_level": "ORT_ENABLE_EXTENDED",
            "threads": profile.threads,
            "activation_format": activation_format_of(facts),
            "input_name": facts.input_name,
            "file_bytes": {"model": model_path.stat().st_size},
        }
        log.info("ONNX Runtime artifact in %s: %d/%d convs QLinearConv, %d QLinearAdd", out_dir, n_qconv, n_conv,
                 counts["QLinearAdd"])
        return Artifact(self.name, precision, {"model": MODEL_FILE, "optimized": OPTIMIZED_FILE}, info)

    def load(self, bundle_dir: Path, artifact: Artifact, threads: int | None = None,
             frame_input: FrameInput | None = None, **options: Any) -> OnnxRuntimeRunner:
        """An InferenceSession on model.onnx (ORT_ENABLE_ALL). ``threads``: intra-op threads (default: the
        profile's, else ORT's default of one per physical core); inter-op is 1 (sequential).
        ``frame_input``: the session takes uint8 frames, the normalisation ops in front of the model
        (edge_resnet.graph.input_normalization), built in memory: the artifact stays as compiled."""
        ort = import_onnxruntime()
        path = artifact_model(Path(bundle_dir), artifact)
        threads = threads or artifact.info.get("threads")
        model: str | bytes = str(path)
        if frame_input is not None:
            model = _with_frame_input(path, frame_input)
        try:
            session = ort.InferenceSession(model, session_options(ort, threads), providers=PROVIDERS)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile, ... (pybind types)
            raise BackendError(f"ONNX Runtime {ort.__version__} cannot load {path}: {_first_line(exc)}",
                               "the file is corrupt or was modified: copy the bundle again or re-run compile") from exc
        return OnnxRuntimeRunner(ort, session, artifact.precision, threads)
