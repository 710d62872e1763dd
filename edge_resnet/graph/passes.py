"""Verified graph rewrites: every pass is checked against its input on a probe batch.

A pass takes a model and returns a :class:`PassOutput`: the new model, what it changed (one line
each), and how its input and output relate to the old ones when a pass changes them on purpose
(the layout pass makes an NHWC input NCHW; the head pass drops a trailing Softmax). The runner feeds
the same probe batch to both graphs in ONNX Runtime with its own graph optimisations off (so the
graphs are compared as they are written, not as ORT would rewrite them) and refuses a rewrite whose
output moved by more than a float32 reassociation can explain.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edge_resnet.errors import GraphError

log = logging.getLogger(__name__)

# max |new - old| / max |old| on the probe batch: BN folding in float64 and re-rounding to float32
# through ~50 layers stays below 1e-5; a wrong rewrite is off by orders of magnitude more.
TOLERANCE = 1e-4
PROBE_BATCH = 2
PROBE_SIZE = 224  # height/width of the probe for graphs with a dynamic spatial size
PROBE_SEED = 0


@dataclass
class PassOutput:
    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)  # empty: the pass found nothing to do
    notes: list[str] = field(default_factory=list)  # what it left as it is, and why
    input_perm: tuple[int, ...] | None = None  # new input = old input transposed by this
    output_map: Callable[[np.ndarray], np.ndarray] | None = None  # new output -> comparable with the old
    adopt: bool = False  # take the new model even without listed changes (renames only)


@dataclass
class StepReport:
    """One pass: what it changed, the op counts around it, and its measured error."""

    name: str
    changes: list[str]
    ops_before: Counter
    ops_after: Counter
    error: float | None = None  # relative, against the pass's input on the probe batch
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"pass": self.name, "changes": list(self.changes), "notes": list(self.notes),
                "ops_before": dict(self.ops_before),
                "ops_after": dict(self.ops_after), "error": self.error}


@dataclass
class CanonReport:
    """What canonicalisation did to a graph; ``str()`` is what ``compile``/``quantize``/``fold-bn`` print."""

    steps: list[StepReport] = field(default_factory=list)
    ops_before: Counter = field(default_factory=Counter)
    ops_after: Counter = field(default_factory=Counter)
    error: float | None = None  # end to end, against the original graph

    @property
    def changed(self) -> bool:
        return any(s.changes for s in self.steps)

    def __str__(self) -> str:
        if not self.changed:
            return "canonical form: nothing to rewrite"
        err = f", output within {self.error:.1e} of the original (relative, probe batch)" if self.error is not None else ""
        lines = [f"canonical form: {sum(self.ops_before.values())} -> {sum(self.ops_after.values())} nodes{err}",
                 f"  ops before: {format_ops(self.ops_before)}", f"  ops after:  {format_ops(self.ops_after)}"]
        for s in self.steps:
            lines += [f"  {s.name}: {c}" for c in s.changes]
            lines += [f"  {s.name}: {c}" for c in s.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ops_before": dict(self.ops_before), "ops_after": dict(self.ops_after), "error": self.error,
                "steps": [s.to_dict() for s in self.steps if s.changes or s.notes]}


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def format_ops(ops: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------------------- probing


def run_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The graph's first output on ``x`` in ONNX Runtime with no graph optimisations (the graph as written)."""

    from edge_resnet.ort_session import cpu_session

    try:
        sess = cpu_session(model, optimization="ORT_DISABLE_ALL")
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types; name the problem ourselves
        raise GraphError(f"ONNX Runtime cannot run the graph: {_one_line(e)}",
                         "check the model with onnx.checker.check_model(model, full_check=True)") from e


def probe_input(model: onnx.ModelProto) -> np.ndarray:
    """A seeded random batch for the graph's image input (dynamic dimensions get probe sizes)."""
    inits = {t.name for t in model.graph.initializer}
    vi = next(v for v in model.graph.input if v.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim]
    shape = [dims[0] or PROBE_BATCH] + [d or PROBE_SIZE for d in dims[1:]]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.random.default_rng(PROBE_SEED).standard_normal(shape).astype(dtype)


def relative_error(new: np.ndarray, old: np.ndarray) -> float:
    if new.shape != old.shape:
        return float("inf")
    scale = float(np.abs(old).max()) if old.size else 0.0
    return float(np.abs(new.astype(np.float64) - old).max() / max(scale, 1e-12)) if old.size else 0.0


class Probe:
    """The probe batch and the current graph's output on it, carried from pass to pass."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.x = probe_input(model)
        self.y = run_reference(model, self.x)
        self.original_y = self.y
        self.maps: list[Callable[[np.ndarray], np.ndarray]] = []  # new output -> original output

    def check(self, name: str, out: PassOutput) -> float:
        x = self.x if out.input_perm is None else np.ascontiguousarray(self.x.transpose(out.input_perm))
        y = run_reference(out.model, x)
        mapped = out.output_map(y) if out.output_map is not None else y
        err = relative_error(mapped, self.y)
        if not err <= TOLERANCE:
            raise GraphError(
                f"canonicalisation pass '{name}' changed the model's output (relative error {err:.2e} on a probe "
                f"batch, limit {TOLERANCE:.0e}); the rewrite is wrong for this graph: {'; '.join(out.changes)}",
                "report this graph to the edge-resnet developers; meanwhile export the model in NCHW with "
                "BatchNorm, plain Conv padding and a Gemm head")
        self.x, self.y = x, y
        if out.output_map is not None:
            self.maps.append(out.output_map)
        return err

    def end_to_end(self) -> float:
        y = self.y
        for m in reversed(self.maps):
            y = m(y)
        return relative_error(y, self.original_y)


Pass = Callable[[onnx.ModelProto], PassOutput]


def run_passes(model: onnx.ModelProto, passes: list[tuple[str, Pass]], verify: bool = True) -> tuple[onnx.ModelProto, CanonReport]:
    """Apply ``passes`` in order, each verified against its input; returns the model and the report."""
    report = CanonReport(ops_before=op_counts(model))
    probe: Probe | None = None  # made at the first change: until then the model is the original
    for name, fn in passes:
        before = op_counts(model)
        out = fn(model)
        step = StepReport(name, out.changes, before, op_counts(out.model), notes=out.notes)
        if out.changes:
            if verify:
                probe = probe or Probe(model)
                step.error = probe.check(name, out)
            model = out.model
            log.debug("%s: %s (error %s)", name, "; ".join(out.changes), step.error)
        elif out.adopt:
            model = out.model
        report.steps.append(step)
    report.ops_after = op_counts(model)
    if probe is not None:
        report.error = probe.end_to_end()
    return model, report


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
