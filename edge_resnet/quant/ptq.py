"""Float ONNX graph + calibration data -> Q/DQ ONNX graph (the algorithm; backends come later)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edge_resnet.data import Dataset
from edge_resnet.graph.index import GraphIndex
from edge_resnet.quant.bias_correction import correct_biases
from edge_resnet.quant.calibrators import RANGE_CALIBRATORS, CalibrationMethod, compute_amax
from edge_resnet.quant.collect import ActivationStats, collect_statistics
from edge_resnet.quant.qdq import (
    FORMAT_RULES,
    QDQReport,
    QuantConfig,
    insert_qdq,
    is_nonnegative,
    required_tensors,
    signed_tensors,
)
from edge_resnet.types import ActivationFormat

log = logging.getLogger(__name__)

# Measured in benchmarks/quantize_compare.py (ResNet-18/50 trained on digits, 512 images):
# see the README of benchmarks/ for the figures behind this choice.
DEFAULT_METHOD = CalibrationMethod.MSE
DEFAULT_BATCH = 32
# On by default, by the calibration matrix (benchmarks/README.md: with it our default meets the
# peers on more cases); its statistics come from the first BIAS_IMAGES images, so its time does
# not grow with the set. --no-bias-correction turns it off.
DEFAULT_BIAS_CORRECTION = True


@dataclass(frozen=True)
class CalibrationOptions:
    method: CalibrationMethod = DEFAULT_METHOD
    percentile: float | None = None  # for the percentile method; None: its default (99.99)
    batch_size: int = DEFAULT_BATCH
    threads: int | None = None
    bias_correction: bool = DEFAULT_BIAS_CORRECTION

    def __post_init__(self) -> None:
        if not isinstance(self.method, CalibrationMethod):  # a method name
            object.__setattr__(self, "method", CalibrationMethod(str(self.method).strip().lower()))

    def params(self) -> dict[str, float]:
        if self.method is CalibrationMethod.PERCENTILE and self.percentile is not None:
            return {"percentile": self.percentile}
        return {}


@dataclass
class QuantizedGraph:
    model: onnx.ModelProto
    amax: dict[str, float]
    report: QDQReport
    stats: ActivationStats
    options: CalibrationOptions
    config: QuantConfig
    timings: dict[str, float] = field(default_factory=dict)
    bias_correction: dict | None = None  # what bias correction did (None: off)
    choices: dict[str, dict] = field(default_factory=dict)  # tensor -> the calibrator and parameters that gave its amax
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # asymmetric tensors -> (lo, hi)

    def save_scales(self, path: str | Path) -> None:
        """Per-tensor amax, and the (scale, zero point) written into the graph for each Q/DQ tensor."""
        data = {"method": self.options.method.value, "format": self.config.activation_format.value,
                "amax": self.amax, "ranges": {t: list(r) for t, r in self.ranges.items()},
                "quantizers": {t: {"scale": s, "zero_point": z} for t, (s, z) in self.report.quantizers.items()},
                "calibrators": self.choices, "bias_correction": self.bias_correction}
        Path(path).write_text(json.dumps(data, indent=1))


def calibrate(model: onnx.ModelProto, data: Dataset, config: QuantConfig = QuantConfig(),
              options: CalibrationOptions = CalibrationOptions(), formats: tuple[ActivationFormat, ...] | None = None,
              progress: bool = True, tensors: list[str] | None = None) -> ActivationStats:
    """The statistics of one calibration pass over ``data``: of ``tensors``, by default those the Q/DQ
    placement of ``config`` (or of every format in ``formats``) needs."""
    if tensors is None:
        tensors = required_tensors(model, config, formats)
    batches = (b.x for b in data.batches(options.batch_size))
    return collect_statistics(model, tensors, batches, total_images=len(data), threads=options.threads, progress=progress,
                              bias_correction=options.bias_correction)


def quantize_graph(model: onnx.ModelProto, stats: ActivationStats, config: QuantConfig = QuantConfig(),
                   options: CalibrationOptions = CalibrationOptions()) -> QuantizedGraph:
    t0 = time.perf_counter()
    params = tensor_params(model, stats, config, options)
    amax, ranges = calibrated_quantizers(model, stats, config, options, params)
    qmodel, report = insert_qdq(model, amax, config, ranges)
    qmodel.producer_name = "edge-resnet"
    choices = {t: {"method": options.method.value, **p} for t, p in params.items()}
    for t, (lo, hi) in ranges.items():
        choices[t] = {"method": options.method.value, "asymmetric": True, "range": [lo, hi]}
    bias_record = None
    if options.bias_correction:
        if stats.bias is None:
            log.warning("bias correction is on but these statistics were collected without it: skipped")
            bias_record = {"corrected": 0, "skipped": "statistics collected without bias correction"}
        else:
            bias_record = correct_biases(model, qmodel, stats.bias).to_dict()
    timings = {"calibration_s": stats.seconds, "quantize_s": time.perf_counter() - t0}
    log.debug("%s", report)
    return QuantizedGraph(qmodel, amax, report, stats, options, config, timings, bias_record, choices, ranges)


def calibrated_quantizers(model: onnx.ModelProto, stats: ActivationStats, config: QuantConfig,
                          options: CalibrationOptions, params: dict[str, dict] | None = None
                          ) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Every tensor's amax and the signed tensors' asymmetric ranges: what ``insert_qdq`` takes."""
    params = params if params is not None else tensor_params(model, stats, config, options)
    amax = {t: compute_amax(h, options.method, **params[t]) for t, h in stats.hists.items()}
    return amax, signed_ranges(model, stats, config, options)


def signed_ranges(model: onnx.ModelProto, stats: ActivationStats, config: QuantConfig,
                  options: CalibrationOptions) -> dict[str, tuple[float, float]]:
    """(lo, hi) of each signed tensor the format quantizes asymmetrically, when the method gives ranges."""
    calibrator = RANGE_CALIBRATORS.get(options.method)
    if calibrator is None:
        return {}
    tensors = signed_tensors(model, config, list(stats.hists))
    old = [t for t in tensors if stats.hists[t].neg_counts is None]
    if old:
        log.warning("%d tensors' statistics do not tell negative values apart (saved by an older edge-resnet): "
                    "quantized symmetrically; calibrate again for asymmetric ranges", len(old))
    return {t: calibrator(stats.hists[t]) for t in tensors if stats.hists[t].neg_counts is not None}


def tensor_params(model: onnx.ModelProto, stats: ActivationStats, config: QuantConfig,
                  options: CalibrationOptions) -> dict[str, dict]:
    """The calibrator's parameters per tensor: the method's options, and for mse the quantizer the
    tensor really gets. In U8S8 a non-negative tensor is quantized unsigned, 255 steps over
    [0, amax] (``num_bits=9`` in mse's terms, whose grid is symmetric): with the 127 steps of a
    signed quantizer, mse would clip it as if its steps were twice as coarse. Entropy keeps
    TensorRT's 128 levels for every tensor (TensorRT has no unsigned int8)."""
    base = options.params()
    if options.method is not CalibrationMethod.MSE or not FORMAT_RULES[config.activation_format].unsigned_nonnegative:
        return {t: dict(base) for t in stats.hists}
    g = GraphIndex(model)
    return {t: {**base, "num_bits": 9} if is_nonnegative(g, t) else dict(base) for t in stats.hists}


def quantize(model: onnx.ModelProto, data: Dataset, config: QuantConfig = QuantConfig(),
             options: CalibrationOptions = CalibrationOptions(), progress: bool = True) -> QuantizedGraph:
    """Calibrate on ``data`` and return the Q/DQ graph for ``config.activation_format``."""
    stats = calibrate(model, data, config, options, progress=progress)
    return quantize_graph(model, stats, config, options)


def options_dict(options: CalibrationOptions) -> dict:
    d = asdict(options)
    d["method"] = options.method.value
    return d


def run_onnx(model: onnx.ModelProto | str | Path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run a (float or Q/DQ) ONNX model in ONNX Runtime on one batch: the reference executor."""

    from edge_resnet.ort_session import cpu_session

    sess = cpu_session(model, threads=threads)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
