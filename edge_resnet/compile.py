"""``edge-resnet compile``: model -> float graph -> calibration -> Q/DQ graph -> target artifact,
written as one atomic bundle with a manifest."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_resnet.backends.base import BundleContext, declared_inputs, get_backend
from edge_resnet.bundle import Bundle, BundleWriter, load_bundle, sha256_file
from edge_resnet.data import PreprocessSpec, open_dataset
from edge_resnet.data.recipes import calibration_sample
from edge_resnet.errors import DataError, EdgeResnetError, QuantizationError
from edge_resnet.graph.finite import check_finite
from edge_resnet.graph.load import describe_input, load_onnx, require_image_input, save_onnx
from edge_resnet.graph.prepare import FloatGraph, prepare_float_graph
from edge_resnet.manifest import (
    ABSENT,
    ArtifactSection,
    CalibrationSection,
    GraphsSection,
    Manifest,
    ModelSection,
    QuantizationSection,
)
from edge_resnet.quant.calibrators import CalibrationMethod
from edge_resnet.quant.collect import ActivationStats, collect_statistics
from edge_resnet.quant.exclude import check_exclude
from edge_resnet.quant.ptq import CalibrationOptions, calibrate, options_dict, quantize_graph
from edge_resnet.quant.qdq import QuantConfig, activation_scale
from edge_resnet.targets import TargetProfile, get_target, resolve_weight_range
from edge_resnet.types import Precision, QuantMode

log = logging.getLogger(__name__)

FLOAT_ONNX = "model.float.onnx"
INT8_ONNX = "model.int8.onnx"
SCALES = "scales.json"
LABELS = "labels.txt"
RANDOM_CALIB = "random"


@dataclass(frozen=True)
class ModelSource:
    """A zoo model (name, variant, weights...) or an ONNX file."""

    name: str | None = "resnet50"
    variant: str | None = None
    weights: str | None = None
    num_classes: int = 1000
    include_top: bool = True
    pooling: str | None = None
    onnx: str | None = None
    head: str | None = None  # --head: classifier | embedding | features (None: read from the graph)

    def describe(self) -> dict[str, Any]:
        if self.onnx:
            return {"source": "onnx", "onnx": str(self.onnx), "onnx_sha256": sha256_file(Path(self.onnx))}
        return {"source": "zoo", "name": self.name, "variant": self.variant or "v1.5", "num_classes": self.num_classes,
                "include_top": self.include_top, "pooling": self.pooling or ("avg" if self.include_top else "none"),
                "weights": str(self.weights) if self.weights else None,
                "weights_sha256": sha256_file(Path(self.weights)) if self.weights else None}


@dataclass(frozen=True)
class CompileOptions:
    target: str = "cpu"
    precision: Precision = Precision.INT8
    calib: str | None = None
    calib_count: int | None = None  # None: the recipe's, else DEFAULT_CALIB_COUNT
    seed: int | None = None  # None: the recipe's, else DEFAULT_SEED
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    exclude: tuple[str, ...] = ()
    spec: PreprocessSpec | None = None  # None: the ImageNet convention at the model's input size
    # with spec None: PreprocessSpec fields (mean, std, resize, channel_order) over that convention
    preprocess_overrides: tuple[tuple[str, Any], ...] = ()
    labels: tuple[str, ...] | None = None
    force: bool = False
    progress: bool = True
    # other files the build reads (role, path), e.g. ("--labels", "names.txt"): -o must not hold them
    extra_inputs: tuple[tuple[str, str], ...] = ()
    ray: Any = None  # distributed.cluster.RayOptions: the calibration pass on a Ray cluster (same statistics)


@dataclass
class CompileResult:
    bundle: Bundle
    float_graph: FloatGraph
    stats: ActivationStats | None
    report: Any = None
    calibration: dict[str, Any] | None = None  # the calibration record (with the data's class names)
    validation: Any = None  # ValidationResult of a build with a drift budget


# ---------------------------------------------------------------------------------------------- steps


def float_graph_for(source: ModelSource, input_size: int) -> FloatGraph:
    """The canonical float graph of ``source``, refused when it is not a 3-channel image model or has
    non-finite weights or outputs."""
    check_input_size(input_size)
    if source.onnx:
        fg = prepare_float_graph(load_onnx(source.onnx), head=source.head)  # an NHWC graph becomes NCHW here
        require_image_input(fg.model, source.onnx)
        check_finite(fg.model, f"--onnx {source.onnx}", input_size)
        return fg
    from edge_resnet.graph.export import export_float_graph
    from edge_resnet.models.from_weights import build_from_options  # torch is imported here, not before

    model, _ = build_from_options(source.name or "resnet50", source.variant, source.weights, source.num_classes,
                                  not source.include_top, source.pooling)
    fg = export_float_graph(model, input_size, head=source.head)
    check_finite(fg.model, f"the model ({source.name}{', weights ' + str(source.weights) if source.weights else ''})",
                 input_size)
    return fg


def check_input_size(size: int) -> None:
    from edge_resnet.data.preprocess import MAX_INPUT_SIZE

    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= MAX_INPUT_SIZE:
        raise EdgeResnetError(f"input size {size!r} is out of range", f"use an input size from 32 to {MAX_INPUT_SIZE}")


def _spec_for(fg: FloatGraph, options: CompileOptions, input_size: int = 224,
              source: ModelSource | None = None) -> PreprocessSpec:
    """The preprocessing: ``options.spec``, else the ImageNet convention at the graph's own input size (the
    ``input_size`` asked for when the graph's is dynamic; a Keras checkpoint's own convention) with
    ``options.preprocess_overrides``."""
    info = describe_input(fg.model)
    if options.spec is not None:
        if info.height is not None and info.height != options.spec.input_size:
            raise EdgeResnetError(f"the graph's input is {info.height}x{info.width}, the preprocessing makes "
                                  f"{options.spec.input_size}x{options.spec.input_size}",
                                  f"pass --input-size {info.height}")
        return options.spec
    size = info.height or input_size
    if source is not None and source.weights and not source.onnx:  # a Keras checkpoint: Keras's preprocessing
        from edge_resnet.models.from_weights import checkpoint_preprocessing

        spec = checkpoint_preprocessing(source.weights, size)
    else:
        spec = PreprocessSpec(input_size=size, resize=max(size, round(size * 256 / 224)))
    return replace(spec, **dict(options.preprocess_overrides)) if options.preprocess_overrides else spec


def compile_inputs(source: ModelSource, options: CompileOptions) -> dict[str, str]:
    """The files and folders a build reads, by option: the output must not hold any of them."""
    inputs = {"--weights": source.weights, "--onnx": source.onnx, "--calib": options.calib,
              **dict(options.extra_inputs)}
    return {k: str(v) for k, v in inputs.items() if v and Path(str(v)).expanduser().exists()}


def check_labels(labels: tuple[str, ...] | None, fg: FloatGraph) -> None:
    n = _num_outputs(fg.model)
    if labels is not None and n is not None and len(labels) != n:
        raise DataError(f"--labels has {len(labels)} class names and the model has {n} outputs",
                        f"give one name per output, one per line ({n} lines)")
    if n == 1:
        log.warning("the model has a single output: softmax scores of one logit are always 1.0, so the bundle "
                    "cannot rank classes (a binary classifier needs 2 outputs; or read the raw score with infer())")


def _random_batches(spec: PreprocessSpec, count: int, seed: int, batch: int):
    """Seeded random inputs for latency-only builds (``--calib random``): never for accuracy."""
    rng = np.random.default_rng(seed)
    for i in range(0, count, batch):
        yield rng.standard_normal((min(batch, count - i), 3, spec.input_size, spec.input_size)).astype(np.float32)


def _calibration_tensors(fg: FloatGraph, profile: TargetProfile, config: QuantConfig) -> list[str]:
    """The tensors the target's backend needs statistics of (its hook; e.g. TensorRT: every activation)."""
    return get_backend(profile.backend).calibration_tensors(fg.model, profile, config)


def quant_config(profile: TargetProfile, exclude: tuple[str, ...] = ()) -> QuantConfig:
    """The Q/DQ configuration of a build for ``profile`` on this host (its weight range resolved)."""
    return QuantConfig(profile.activation_format, tuple(exclude), resolve_weight_range(profile), profile.fuse_residual)


def reusable_tensors(fg: FloatGraph, profile: TargetProfile) -> list[str]:
    """Tensors whose statistics serve any later ``exclude`` list: without exclusions, and for both formats
    (keeping the conv of a TensorRT-fused residual add float gives the add's conv branch its own Q/DQ)."""
    return get_backend(profile.backend).reusable_tensors(fg.model, profile)


def calibrate_for(fg: FloatGraph, profile: TargetProfile, spec: PreprocessSpec, options: CompileOptions,
                  reusable: bool = False) -> tuple[ActivationStats, dict[str, Any]]:
    if options.calib is None:
        raise DataError("--int8 needs calibration data, and none was given",
                        "pass --calib with an image folder, list, .npy/.npz, video or digits:train; "
                        "--calib random builds for latency measurements only")
    config = QuantConfig(profile.activation_format, options.exclude)
    tensors = reusable_tensors(fg, profile) if reusable else _calibration_tensors(fg, profile, config)
    bs = options.calibration.batch_size
    sample = calibration_sample(options.calib, options.calib_count, options.seed)
    if options.calib == RANDOM_CALIB:
        log.warning("calibrating on random inputs: this bundle is for latency measurements only, not accuracy")
        stats = collect_statistics(fg.model, tensors, _random_batches(spec, sample.count, sample.seed, bs),
                                   total_images=sample.count, progress=options.progress,
                                   bias_correction=options.calibration.bias_correction)
        return stats, {"source": RANDOM_CALIB, "random": True, "count": sample.count, "seed": sample.seed}
    data = open_dataset(sample.source, spec, count=sample.count, seed=sample.seed, stride=sample.stride)
    if options.ray is not None:
        from edge_resnet.distributed.calibrate import collect_statistics_on_ray

        stats = collect_statistics_on_ray(fg.model, tensors, data, bs, options.ray, progress=options.progress,
                                          bias_correction=options.calibration.bias_correction)
    else:
        stats = calibrate(fg.model, data, options=options.calibration, progress=options.progress, tensors=tensors)
    record = {"source": sample.source, **sample.record(), "random": False, "count": stats.images, "seed": sample.seed,
              "skipped": data.skipped, "description": data.description, "class_names": data.class_names}
    return stats, record


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("edge-resnet", "onnx", "onnxruntime", "onnxscript", "numpy", "torch", "openvino", "tensorrt", "nncf"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------------------------------------- compile


def _reuse_stats(stats: ActivationStats, fg: FloatGraph, profile: TargetProfile, options: CompileOptions) -> None:
    config = QuantConfig(profile.activation_format, options.exclude)
    missing = [t for t in _calibration_tensors(fg, profile, config) if t not in stats.hists]
    if missing:
        raise QuantizationError(f"the calibration statistics passed in lack {len(missing)} tensors this build needs "
                                f"(e.g. {missing[0]})", "calibrate with reusable=True, or let compile calibrate")


def compile_bundle(source: ModelSource, options: CompileOptions, out_dir: str | Path,
                   input_size: int = 224, *, float_graph: FloatGraph | None = None,
                   stats: ActivationStats | None = None, calibration: dict[str, Any] | None = None,
                   reusable_stats: bool = False) -> CompileResult:
    """Build one bundle (a drift budget is one level up: :func:`edge_resnet.budget.compile_with_budget`).

    For rebuilds of the same model: ``float_graph`` skips the export, ``stats`` (with its ``calibration``
    record, both from a previous CompileResult) skips calibration; ``reusable_stats`` calibrates every tensor any ``exclude``
    list may need, so those stats can be reused with other exclusions.
    """
    profile = get_target(options.target)
    # fails fast: an output that exists, holds an input, or cannot be written
    writer = BundleWriter(out_dir, force=options.force, inputs=compile_inputs(source, options))
    fg = float_graph or float_graph_for(source, input_size)
    spec = _spec_for(fg, options, input_size, source)
    check_exclude(fg.model, options.exclude)
    check_labels(options.labels, fg)
    precision = options.precision
    calib_record, qgraph = None, None
    if precision is Precision.INT8:
        if stats is not None:
            _reuse_stats(stats, fg, profile, options)
            calib_record = dict(calibration or {"source": "statistics passed in", "random": False,
                                                "count": stats.images})
        else:
            stats, calib_record = calibrate_for(fg, profile, spec, options, reusable=reusable_stats)
        if profile.quant_mode is QuantMode.EXPLICIT:
            qgraph = quantize_graph(fg.model, stats, quant_config(profile, options.exclude), options.calibration)

    with writer as w:
        assert w.dir is not None
        save_onnx(fg.model, w.dir / FLOAT_ONNX)
        graphs = {"float": FLOAT_ONNX}
        quantization: dict[str, Any] = {}
        if qgraph is not None:
            save_onnx(qgraph.model, w.dir / INT8_ONNX)
            qgraph.save_scales(w.dir / SCALES)
            graphs["int8"] = INT8_ONNX
            quantization = {"format": profile.activation_format.value, "quantized": dict(qgraph.report.quantized),
                            "kept_float": qgraph.report.kept_float, "exclude": list(options.exclude),
                            "weight_range": qgraph.config.weight_range.value,
                            "bias_correction": qgraph.bias_correction}
        elif stats is not None:  # implicit TensorRT: scales for the calibration cache
            amax = stats.amax(options.calibration.method, **options.calibration.params())
            _write_scales(w.dir / SCALES, amax, options.calibration.method)
            quantization = {"mode": "implicit", "tensors": len(amax)}
        full_record = dict(calib_record) if calib_record else None
        labels = _labels(options, fg, calib_record)  # (drops class_names from the record)
        (w.dir / LABELS).write_text("\n".join(labels) + "\n", encoding="utf-8")
        context = BundleContext(profile, w.dir, precision, {role: w.dir / name for role, name in graphs.items()},
                                spec, labels, fg.output_name, stats, options.calibration,
                                dict(qgraph.report.quantizers) if qgraph is not None else {})
        artifact = get_backend(profile.backend).prepare_bundle(context)
        where = "the manifest compile writes"
        model = {**source.describe(), "output": fg.output_name, "kind": fg.kind.value,
                 **({"canonical": fg.canon.to_dict()} if fg.canon.changed else {}),
                 "input": {"name": describe_input(fg.model).name, "shape": [None, 3, spec.input_size, spec.input_size]},
                 "bn_fold": {"folded": len(fg.fold.folded), "kept": [b for b, _ in fg.fold.kept]}}
        calib = {**calib_record, **options_dict(options.calibration), "scales": SCALES} if calib_record else None
        manifest = Manifest(
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            model=ModelSection.from_dict(model, where, "model."),
            precision=precision.value,
            preprocess=spec.to_dict(),
            inputs=declared_inputs(get_backend(profile.backend), spec, describe_input(fg.model).name, artifact),
            labels=LABELS,
            graphs=GraphsSection(**graphs),
            calibration=CalibrationSection.from_dict(calib, where, "calibration.") if calib else None,
            quantization=QuantizationSection(**quantization) if quantization else ABSENT,
            kept_float=list(qgraph.report.kept_float) if qgraph is not None else [],
            target=profile.to_dict(),
            artifact=ArtifactSection.from_dict(artifact.to_dict(), where, "artifact."),
            tools=tool_versions(),
            host={"machine": platform.machine(), "system": platform.system(), "processor": platform.processor()},
        ).to_dict()
        path = w.finish(manifest)
    log.info("wrote bundle %s", path)
    return CompileResult(load_bundle(path), fg, stats if precision is Precision.INT8 else None,
                         qgraph.report if qgraph else None, full_record)


def _write_scales(path: Path, amax: dict[str, float], method: CalibrationMethod) -> None:
    import json

    # the same layout as QuantizedGraph.save_scales; implicit TensorRT uses signed int8, zero point 0
    path.write_text(json.dumps({"method": method.value, "format": "s8s8", "amax": amax,
                                "quantizers": {t: {"scale": activation_scale(a), "zero_point": 0} for t, a in amax.items()}},
                               indent=1))


def _labels(options: CompileOptions, fg: FloatGraph, calib_record: dict | None) -> list[str]:
    """--labels, else the class folders of a labelled calibration set when they match the outputs."""
    n = _num_outputs(fg.model)
    if options.labels:
        return list(options.labels)
    names = (calib_record or {}).pop("class_names", None)
    if names and n == len(names):
        return list(names)
    return [f"class_{i}" for i in range(n)] if n else []


def _num_outputs(model: onnx.ModelProto) -> int | None:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].dim_value else None
