"""The drift budget at compile time: build, validate, and keep the most sensitive layers float until the
artifact's drift is within ``--max-drop`` points.

    compile_with_budget(source, CompileOptions(...), DriftBudget(0.5, "digits:test"), out)

The loop:

1. Build into a staging directory next to the output (calibrating every tensor any exclusion could
   need, once), validate on ``--val`` against the float reference. Within budget: publish, done.
2. Otherwise rank the quantizable layers by **sensitivity: the output SQNR of the model with only that
   layer quantized** (everything else float), on ``sensitivity_images`` images of the validation data.
3. Keep layers float in that order, a few at a time (1, 1, 1, then 2, 4, 8, ...: few layers for an
   easy case, a bounded number of rebuilds for a hard one), rebuilding from the same float graph and
   statistics (no re-export, no re-calibration) and re-validating, until the budget is met.

Why "only this layer quantized" and not "only this layer kept float": in the u8s8 format (ONNX
Runtime) a tensor between two int8 ops is quantized by *both* (the producer's output Q/DQ and the
consumer's input Q/DQ), so keeping either one float alone removes nothing, and a leave-one-out ranking
sees no gain from either. Quantizing one layer alone exposes each side of a bad tensor. It is also a
clean per-layer signal (not the small difference of two noisy figures). Cost: one Q/DQ graph and one
ONNX Runtime session per layer (~30 for ResNet-18, ~70 for ResNet-50) on ``sensitivity_images``
images: seconds for ResNet-18 at 32 px, a few minutes for ResNet-50 at 224 px on 2 cores, paid only
when the first build misses the budget.

The float model has 0 drop by definition, so a non-negative budget can always be met by keeping
everything float; that build is the ``--fp32`` baseline, not an INT8 one. The loop therefore fails
(:class:`BudgetExceeded`, nothing written) when only one quantized layer would be left, or after
``max_rebuilds`` rebuilds. A negative budget (INT8 more accurate than float) is rejected up front.
The bundle is published atomically only once the budget is met, with ``kept_float``, a ``budget``
record in the manifest and the final ``validation.json``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_resnet.backends.base import get_backend
from edge_resnet.bundle import (
    MANIFEST,
    Bundle,
    BundleWriter,
    clean_stale_staging,
    load_bundle,
    make_staging_dir,
)
from edge_resnet.compile import (
    CompileOptions,
    CompileResult,
    ModelSource,
    compile_bundle,
    compile_inputs,
    float_graph_for,
)
from edge_resnet.data import Dataset, open_dataset
from edge_resnet.data.recipes import DEFAULT_SEED
from edge_resnet.errors import BudgetExceeded, EdgeResnetError
from edge_resnet.manifest import ABSENT, BudgetSection
from edge_resnet.quant.ptq import calibrated_quantizers
from edge_resnet.quant.qdq import QuantConfig
from edge_resnet.targets import get_target, resolve_weight_range
from edge_resnet.types import Precision, QuantMode
from edge_resnet.validate.layers import LayerError, layer_sensitivity
from edge_resnet.validate.run import (
    LAYER_IMAGES,
    FloatReference,
    ValidationResult,
    layer_errors,
    validate_bundle,
)

log = logging.getLogger(__name__)

VALIDATION_JSON = "validation.json"
RANKING_METHOD = "output SQNR with only that layer quantized (Q/DQ graph in ONNX Runtime)"


@dataclass(frozen=True)
class DriftBudget:
    max_drop: float  # points: of top-1 (labelled validation data), else of top-1 agreement
    val: str  # validation data source (any --data spelling)
    val_count: int | None = None
    max_rebuilds: int = 8
    sensitivity_images: int = 32
    batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "val": self.val, "val_count": self.val_count,
                "max_rebuilds": self.max_rebuilds, "sensitivity_images": self.sensitivity_images}


@dataclass
class Attempt:
    kept_float: list[str]
    drop: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kept_float": list(self.kept_float), "drop": self.drop, "passed": self.passed}


@dataclass
class _Loop:
    """State of one budget run."""

    budget: DriftBudget
    data: Dataset
    reference: FloatReference
    progress: bool = True
    seed: int = 0
    attempts: list[Attempt] = field(default_factory=list)
    ranking: list[LayerError] = field(default_factory=list)


def step_sizes() -> Iterator[int]:
    """Layers kept float per rebuild: 1, 1, 1, 2, 4, 8, ..."""
    yield from (1, 1, 1)
    n = 2
    while True:
        yield n
        n *= 2


class CachingReference(FloatReference):
    """The float reference, memoized per batch: rebuilds validate on the same batches again.

    Memory: the reference outputs of the validation set (images x outputs x 4 bytes).
    """

    def __init__(self, float_model: Path) -> None:
        super().__init__(float_model)
        self._cache: dict[bytes, np.ndarray] = {}

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        key = hashlib.blake2b(x.tobytes(), digest_size=16).digest() + str(x.shape).encode()
        if key not in self._cache:
            self._cache[key] = super().infer(x)
        return self._cache[key]


# ------------------------------------------------------------------------------------------- checks


def _check_request(source: ModelSource, options: CompileOptions, budget: DriftBudget) -> None:
    if not math.isfinite(budget.max_drop):
        raise EdgeResnetError(f"a drift budget of {budget.max_drop} points is not a number of points",
                              "use a finite budget >= 0, e.g. 0.5")
    if budget.max_drop < 0:
        raise BudgetExceeded(
            f"a drift budget of {budget.max_drop} points asks the INT8 build to beat the float model; keeping "
            "layers float can only bring it to the float model's own accuracy (a drop of 0)",
            "use a budget >= 0 points")
    if options.precision is not Precision.INT8:
        raise EdgeResnetError(f"--max-drop applies to INT8 builds, not {options.precision.value}",
                              "drop --max-drop, or build with --int8")
    if not source.onnx and not source.include_top:
        raise EdgeResnetError("a drift budget needs top-1 accuracy or top-1 agreement, and a model without its "
                              "classifier (--no-top) outputs features", "drop --max-drop, or keep the classifier")
    if budget.max_rebuilds < 0 or budget.sensitivity_images < 1:
        raise EdgeResnetError("max_rebuilds must be >= 0 and sensitivity_images >= 1")
    profile = get_target(options.target)
    if profile.quant_mode is not QuantMode.EXPLICIT:
        raise EdgeResnetError(f"target {profile.name} quantizes implicitly (calibration cache): layers cannot be kept "
                              "float from the Q/DQ graph, so the drift budget cannot be enforced",
                              "use a target with explicit quantization, or validate the engine on the device")
    if not get_backend(profile.backend).available():
        raise EdgeResnetError(f"--max-drop validates the artifact on this machine, and the {profile.backend.value} "
                              f"backend of target {profile.name} is not installed here",
                              "install it, or compile without --max-drop and run `edge-resnet validate` on the device")


# ------------------------------------------------------------------------------------------- loop


def _validate(state: _Loop, bundle: Bundle, kept: list[str]) -> ValidationResult:
    result = validate_bundle(bundle, state.data, max_drop=state.budget.max_drop, per_layer=False,
                             progress=state.progress, batch_size=state.budget.batch_size, reference=state.reference)
    assert result.budget is not None
    state.attempts.append(Attempt(list(kept), result.budget.drop, result.budget.passed))
    log.info("kept float %s: %s", kept or "nothing", result.budget.describe())
    return result


def _rank(state: _Loop, first: CompileResult, options: CompileOptions) -> list[LayerError]:
    assert first.stats is not None
    profile = get_target(options.target)
    sample = open_dataset(state.budget.val, first.bundle.spec, count=state.budget.sensitivity_images, seed=_seed(options))
    x = np.concatenate([b.x for b in sample.batches(state.budget.batch_size)])
    model, weight_range = first.float_graph.model, resolve_weight_range(profile)
    config = QuantConfig(profile.activation_format, tuple(options.exclude), weight_range)
    amax, ranges = calibrated_quantizers(model, first.stats, config, options.calibration)  # the shipped quantizers
    ranking = layer_sensitivity(model, amax, profile.activation_format, x, exclude=options.exclude,
                                progress=options.progress, weight_range=weight_range, ranges=ranges)
    log.info("most sensitive layers: %s", ", ".join(f"{e.layer} ({e.sqnr_db:.1f} dB)" for e in ranking[:5]))
    return ranking


def _too_far(state: _Loop, result: ValidationResult, kept: list[str], why: str, fix: str) -> BudgetExceeded:
    assert result.budget is not None
    b = result.budget
    metric = "top-1 drop" if b.metric == "top1" else "disagreement with the float model"
    return BudgetExceeded(
        f"the {metric} is {b.drop:.2f} points, over the budget of {b.max_drop:.2f}, with {len(kept)} layer(s) kept "
        f"float ({', '.join(kept) or 'none'}): {why}; no bundle was written", fix)


def compile_with_budget(source: ModelSource, options: CompileOptions, budget: DriftBudget, out_dir: str | Path,
                        input_size: int = 224) -> CompileResult:
    """Compile, validate, keep layers float until the drift fits ``budget``; publish atomically."""
    _check_request(source, options, budget)
    options = replace(options, extra_inputs=(*options.extra_inputs, ("--val", budget.val)))
    # fails fast: an output that exists, holds an input, or cannot be written
    writer = BundleWriter(out_dir, force=options.force, inputs=compile_inputs(source, options))
    base = replace(options, force=False)
    writer.out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(writer.out)
    staging = make_staging_dir(writer.out, "budget")
    try:
        fg = float_graph_for(source, input_size)
        current = compile_bundle(source, base, staging / "attempt-0", input_size, float_graph=fg, reusable_stats=True)
        data = open_dataset(budget.val, current.bundle.spec, count=budget.val_count, seed=_seed(options))
        state = _Loop(budget, data, CachingReference(current.bundle.float_model()), options.progress, _seed(options))
        result = _validate(state, current.bundle, [])
        if not result.budget or not result.budget.passed:
            if budget.max_rebuilds > 0:  # the ranking is only worth its cost when there will be rebuilds
                state.ranking = _rank(state, current, options)
            current, result = _fall_back(state, current, result, source, base, staging, input_size)
        return _publish(writer, current, result, state)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fall_back(state: _Loop, first: CompileResult, result: ValidationResult, source: ModelSource,
               base: CompileOptions, staging: Path, input_size: int) -> tuple[CompileResult, ValidationResult]:
    remaining = [e.layer for e in state.ranking]
    kept: list[str] = []
    current = first
    steps = step_sizes()
    for rebuild in range(1, state.budget.max_rebuilds + 1):
        take = min(next(steps), len(remaining) - 1)
        if take <= 0:
            raise _too_far(state, result, kept, "keeping the last quantized layer float too would leave the float "
                           "model (which has 0 drop by definition), not an INT8 build",
                           "raise --max-drop, or ship the float model (--fp32/--fp16)")
        kept += remaining[:take]
        remaining = remaining[take:]
        log.info("rebuild %d: keeping %s float", rebuild, ", ".join(kept))
        options = replace(base, exclude=tuple(base.exclude) + tuple(kept))
        previous = current.bundle.path
        current = compile_bundle(source, options, staging / f"attempt-{rebuild}", input_size,
                                 float_graph=first.float_graph, stats=first.stats, calibration=first.calibration)
        if previous != first.bundle.path:
            shutil.rmtree(previous, ignore_errors=True)  # disk stays bounded: first + latest
        result = _validate(state, current.bundle, kept)
        if result.budget and result.budget.passed:
            return current, result
    raise _too_far(state, result, kept, f"the budget was not met within {state.budget.max_rebuilds} rebuilds",
                   "raise --max-drop or --max-rebuilds, or calibrate on more representative data (--calib, "
                   "--calib-count) or with another --method")


def _publish(writer: BundleWriter, staged: CompileResult, result: ValidationResult, state: _Loop) -> CompileResult:
    """Move the staged bundle into the output atomically, with the budget record and validation.json."""
    bundle = staged.bundle
    sample = open_dataset(state.budget.val, bundle.spec, count=LAYER_IMAGES, seed=state.seed)
    result.per_layer = layer_errors(bundle, [b.x for b in sample.batches(state.budget.batch_size)],
                                    result.kept_float, progress=state.progress)
    result.bundle = str(writer.out)
    result.bundle_sha256 = None  # written inside the bundle, before its manifest (and so its hash) exists
    assert result.budget is not None
    record = BudgetSection(
        **state.budget.to_dict(), metric=result.budget.metric, drop=result.budget.drop, passed=True,
        validation=VALIDATION_JSON, attempts=[a.to_dict() for a in state.attempts],
        ranking={"method": RANKING_METHOD, "images": state.budget.sensitivity_images,
                 "layers": [e.to_dict() for e in state.ranking[:10]]} if state.ranking else None,
    )
    # the staged manifest with the budget record; finish() writes format_version, files and integrity again
    sections = replace(bundle.sections, budget=record, format_version=ABSENT, files=ABSENT, integrity=ABSENT)
    manifest = sections.to_dict()
    with writer as w:
        assert w.dir is not None
        for entry in bundle.path.iterdir():
            if entry.name != MANIFEST:
                os.replace(entry, w.dir / entry.name)
        result.write_json(w.dir / VALIDATION_JSON)
        path = w.finish(manifest)
    log.info("wrote bundle %s (%s; kept float: %s)", path, result.budget.describe(),
             ", ".join(result.kept_float) or "none")
    return replace(staged, bundle=load_bundle(path), validation=result)


def _seed(options: CompileOptions) -> int:
    return DEFAULT_SEED if options.seed is None else options.seed
