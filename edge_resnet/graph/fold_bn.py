"""Fold inference-mode BatchNormalization into the Conv that feeds it.

For a Conv ``z = W * x + b`` followed by ``y = gamma * (z - mean) / sqrt(var + eps) + beta``, with
``s = gamma / sqrt(var + eps)`` per output channel c::

    W'[c] = W[c] * s[c]        b'[c] = (b[c] - mean[c]) * s[c] + beta[c]

A BatchNormalization that does not follow a foldable Conv (pre-activation ResNet v2 blocks, where it
follows a residual Add or the stem) is kept and reported; by default it becomes ``Mul(s) + Add(shift)``
with (C, 1, 1) constants, which every backend fuses and which has no training-mode semantics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edge_resnet.errors import GraphError
from edge_resnet.graph.index import DEFAULT_DOMAINS, GraphIndex, node_uses
from edge_resnet.graph.names import FreshNames

log = logging.getLogger(__name__)

_STAT_NAMES = ("scale", "B", "mean", "var")


@dataclass
class FoldSummary:
    """What :func:`fold_batchnorm` did. ``str(summary)`` is the line the CLI prints."""

    folded: list[tuple[str, str]] = field(default_factory=list)  # (BatchNormalization, Conv) names
    kept: list[tuple[str, str]] = field(default_factory=list)  # (BatchNormalization, reason)
    converted_to_affine: list[str] = field(default_factory=list)  # kept ones rewritten as Mul + Add
    notes: list[str] = field(default_factory=list)  # anything else worth a log line

    def __str__(self) -> str:
        head = f"folded {len(self.folded)} BatchNormalization into Conv, kept {len(self.kept)}"
        if not self.kept:
            return head
        affine = set(self.converted_to_affine)
        lines = [head + ":"]
        for bn, reason in self.kept:
            how = "converted to Mul+Add" if bn in affine else "left as BatchNormalization"
            lines.append(f"  {bn}: {reason}; {how}")
        return "\n".join(lines)


def fold_batchnorm(
    model: onnx.ModelProto, *, convert_kept_to_affine: bool = True
) -> tuple[onnx.ModelProto, FoldSummary]:
    """Fold every BatchNormalization that directly follows a Conv into that Conv.

    Returns a new model (``model`` is not modified) and a summary. BatchNormalizations that cannot
    be folded are reported in ``summary.kept`` with the reason and, when their statistics are
    constants and ``convert_kept_to_affine``, replaced by a per-channel Mul + Add.
    Raises GraphError for a BatchNormalization in training mode whose batch-statistics outputs
    are used, and for weights still in unloaded external data.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    summary = FoldSummary()
    bns = [i for i, n in enumerate(out.graph.node) if _is_bn(n)]
    if not bns:
        return out, summary

    g = GraphIndex(out.graph)
    decisions: list[_Decision] = [_decide(g, i, summary) for i in bns]

    types: dict[str, tuple[int, int | None]] | None = None
    if convert_kept_to_affine and any(p.kind == "affine" for p in decisions):
        types = _infer_types(model)
    _apply(out.graph, g, decisions, summary, types or {}, convert_kept_to_affine)

    for bn, conv in summary.folded:
        log.debug("folded %s into %s", bn, conv)
    for bn, reason in summary.kept:
        log.debug("kept BatchNormalization %s: %s", bn, reason)
    for note in summary.notes:
        log.warning("%s", note)  # a semantic change (training -> inference) or a BN left as is
    log.info("%s", str(summary).splitlines()[0])
    return out, summary


# --- the arithmetic, float64 in and out (tests patch these to prove they can catch a wrong fold) ---


def _fold_params(
    w: np.ndarray,
    b: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight (M, C/group, k...) and bias (M,) with the BatchNormalization folded in."""
    s = gamma / np.sqrt(var + eps)
    w_folded = w * s.reshape((-1,) + (1,) * (w.ndim - 1))  # per output channel, whatever the group
    b_folded = (b - mean) * s + beta
    return w_folded, b_folded


def _affine_params(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with BatchNormalization(x) == x * scale + shift per channel."""
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


# --- planning ---------------------------------------------------------------------------------------


@dataclass
class _Decision:
    """What to do with one BatchNormalization: fold it into its Conv, turn it into Mul + Add, or keep it."""

    bn: int  # index of the BatchNormalization node
    kind: str  # "fold" | "affine" | "keep"
    label: str
    stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # gamma, beta, mean, var
    eps: float = 1e-5
    reason: str = ""
    conv: int | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def _decide(g: GraphIndex, i: int, summary: FoldSummary) -> _Decision:
    bn = g.graph.node[i]
    label = g.label(i)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
    eps = float(attrs.get("epsilon", 1e-5))
    decision = _Decision(bn=i, kind="keep", label=label, eps=eps)

    _check_training_outputs(g, bn, label, attrs, summary)

    if len(bn.input) < 5 or not all(bn.input[:5]):
        decision.reason = f"it has {len(bn.input)} inputs; expected X, scale, B, mean, var"
        return decision
    if attrs.get("spatial", 1) == 0:
        decision.reason = "spatial=0 (statistics per activation, not per channel) cannot fold into a Conv"
        return decision
    stats = []
    for what, name in zip(_STAT_NAMES, bn.input[1:5], strict=True):
        v = g.const(name)
        if v is None:
            decision.reason = f"its {what} '{name}' is computed at run time, not an initializer"
            return decision
        stats.append(v.astype(np.float64))
    gamma, beta, mean, var = stats
    c = gamma.size
    if any(s.ndim != 1 or s.size != c for s in stats):
        decision.reason = (
            f"its scale/B/mean/var have shapes {[tuple(s.shape) for s in stats]}; expected ({c},) each"
        )
        return decision
    decision.stats = (gamma, beta, mean, var)
    decision.kind = "affine"  # unless the checks below find a Conv to fold into

    x = bn.input[0]
    p = g.producer_index.get(x)
    if p is None:
        what = "an initializer" if x in g.initializers else "the graph input"
        decision.reason = f"its input '{x}' is {what}, not a Conv output"
        return decision
    conv = g.graph.node[p]
    conv_label = g.label(p)
    if conv.op_type != "Conv" or conv.domain not in DEFAULT_DOMAINS:
        decision.reason = f"its input comes from {conv.op_type} '{conv_label}', not from a Conv"
        if conv.op_type in ("Add", "Sum"):
            decision.reason += " (BatchNormalization after a residual Add, as in pre-activation ResNets)"
        return decision
    decision.conv = p
    others = [g.label(j) for j in g.consumer_indices.get(x, []) if j != i]
    if others:
        shown = ", ".join(f"'{o}'" for o in others[:3]) + (" ..." if len(others) > 3 else "")
        decision.reason = f"the output of Conv '{conv_label}' is also used by {shown}"
        return decision
    if x in g.outputs:
        decision.reason = f"the output of Conv '{conv_label}' is also a graph output"
        return decision
    if len(conv.input) < 2 or g.const(conv.input[1]) is None:
        decision.reason = f"the weight of Conv '{conv_label}' is computed at run time, not an initializer"
        return decision
    w = g.const(conv.input[1])
    assert w is not None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    b = g.const(conv.input[2]) if has_bias else np.zeros(w.shape[0], dtype=w.dtype)
    if b is None:
        decision.reason = f"the bias of Conv '{conv_label}' is computed at run time, not an initializer"
        return decision
    if not _is_float(w.dtype):
        decision.reason = f"Conv '{conv_label}' has {w.dtype} weights, not float"
        return decision
    if w.ndim < 3 or w.shape[0] != c or b.shape != (c,):
        decision.reason = (
            f"Conv '{conv_label}' has weight {tuple(w.shape)} and bias {tuple(b.shape)}, "
            f"which do not match the {c} channels of the BatchNormalization"
        )
        return decision
    decision.kind = "fold"
    decision.weight, decision.bias = w, b
    decision.reason = ""
    return decision


def _check_training_outputs(
    g: GraphIndex, bn: onnx.NodeProto, label: str, attrs: dict[str, object], summary: FoldSummary
) -> None:
    """Refuse a training-mode BatchNormalization whose batch statistics are read; note unused ones."""
    extra = [o for o in bn.output[1:] if o]
    training = attrs.get("training_mode", 0) == 1 or attrs.get("is_test", 1) == 0
    used = [o for o in extra if g.uses[o] > 0]
    if used:
        readers = sorted({g.label(j) for o in used for j in g.consumer_indices.get(o, [])})
        where = f"by {', '.join(readers)}" if readers else "as graph outputs"
        raise GraphError(
            f"BatchNormalization '{label}' is in training mode: its batch-statistics output(s) "
            f"{', '.join(repr(o) for o in used)} are used {where}, so it cannot be folded for inference",
            "export the model in inference mode: model.eval() and "
            "torch.onnx.export(..., training=torch.onnx.TrainingMode.EVAL)",
        )
    if training or extra:
        summary.notes.append(
            f"BatchNormalization '{label}' was exported in training mode (its batch-statistics outputs are "
            "unused); it now uses its running statistics, i.e. inference semantics"
        )


# --- rewriting --------------------------------------------------------------------------------------


def _apply(
    graph: onnx.GraphProto,
    g: GraphIndex,
    decisions: list[_Decision],
    summary: FoldSummary,
    types: dict[str, tuple[int, int | None]],
    convert_kept_to_affine: bool,
) -> None:
    names = FreshNames(graph)
    by_bn = {p.bn: p for p in decisions}
    replaced: dict[int, list[onnx.NodeProto]] = {}  # node index -> replacement nodes ([] = removed)
    new_inits: list[onnx.TensorProto] = []
    disconnected: list[str] = []  # tensors that may have lost their last reader

    for decision in decisions:
        bn = graph.node[decision.bn]
        if decision.kind == "fold":
            assert decision.conv is not None and decision.weight is not None and decision.bias is not None
            assert decision.stats is not None
            conv = graph.node[decision.conv]
            conv_label = g.label(decision.conv)
            w_name = conv.input[1]
            w64, b64 = _fold_params(
                decision.weight.astype(np.float64), decision.bias.astype(np.float64), *decision.stats, decision.eps
            )
            dtype = decision.weight.dtype
            new_w = _put(g, names, new_inits, w_name, w64.astype(dtype), f"{w_name}_bnfold")
            b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else ""
            b_base = (w_name[: -len("weight")] + "bias") if w_name.endswith("weight") else f"{w_name}_bias"
            new_b = _put(g, names, new_inits, b_name, b64.astype(dtype), b_base)
            disconnected += [n for n in (w_name, b_name) if n and n not in (new_w, new_b)]
            disconnected += list(bn.input[1:5])
            conv.input[1] = new_w
            if len(conv.input) > 2:
                conv.input[2] = new_b
            else:
                conv.input.append(new_b)
            conv.output[0] = bn.output[0]  # the Conv keeps its name and takes over the BN's output
            replaced[decision.bn] = []
            summary.folded.append((decision.label, conv_label))
            continue

        summary.kept.append((decision.label, decision.reason))
        if decision.kind != "affine" or not convert_kept_to_affine:
            _to_inference_mode(bn)
            continue
        assert decision.stats is not None
        elem, rank = types.get(bn.input[0], (0, None))
        if rank is None and decision.conv is not None:
            w = g.const(graph.node[decision.conv].input[1]) if len(graph.node[decision.conv].input) > 1 else None
            rank = w.ndim if w is not None else None
        if rank is None or rank < 2:
            summary.notes.append(f"BatchNormalization '{decision.label}': rank of its input unknown, left as is")
            _to_inference_mode(bn)
            continue
        dtype = _np_dtype(elem)
        if dtype is None:
            gamma = g.const(bn.input[1])
            dtype = gamma.dtype if gamma is not None else np.dtype(np.float32)
        scale, shift = _affine_params(*decision.stats, decision.eps)
        shape = (-1,) + (1,) * (rank - 2)  # (C, 1, 1) for NCHW
        base = bn.name or f"{bn.output[0]}_bn"
        scale_t = numpy_helper.from_array(scale.reshape(shape).astype(dtype), names.new(f"{base}.scale"))
        shift_t = numpy_helper.from_array(shift.reshape(shape).astype(dtype), names.new(f"{base}.shift"))
        new_inits += [scale_t, shift_t]
        scaled = names.new(f"{bn.output[0]}_scaled")
        mul = onnx.helper.make_node(
            "Mul", [bn.input[0], scale_t.name], [scaled], name=names.new(f"{base}_mul")
        )
        add = onnx.helper.make_node(
            "Add", [scaled, shift_t.name], [bn.output[0]], name=names.new(f"{base}_add")
        )
        replaced[decision.bn] = [mul, add]
        disconnected += list(bn.input[1:5])
        summary.converted_to_affine.append(decision.label)

    kept_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        kept_nodes.extend(replaced.get(i, [node]) if i in by_bn else [node])
    del graph.node[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(new_inits)
    _remove_unused(graph, disconnected)


def _to_inference_mode(bn: onnx.NodeProto) -> None:
    """Drop unused batch-statistics outputs and training flags from a BatchNormalization we keep."""
    while len(bn.output) > 1:
        bn.output.pop()
    for a in list(bn.attribute):
        if a.name == "training_mode" and a.i != 0:
            bn.attribute.remove(a)
        elif a.name == "is_test" and a.i == 0:
            a.i = 1


def _put(
    g: GraphIndex,
    names: FreshNames,
    new_inits: list[onnx.TensorProto],
    name: str,
    value: np.ndarray,
    base: str,
) -> str:
    """Store ``value`` under ``name`` when only this Conv reads that initializer, else as a copy."""
    private = (
        name
        and name in g.initializers
        and g.uses[name] == 1
        and name not in g.inputs  # an initializer that is also an input can be overridden
        and name not in g.outputs
    )
    if private:
        t = numpy_helper.from_array(value, name)
        g.initializers[name].CopyFrom(t)
        return name
    t = numpy_helper.from_array(value, names.new(base))
    new_inits.append(t)
    return t.name


def _remove_unused(graph: onnx.GraphProto, candidates: Iterable[str]) -> None:
    """Drop initializers (and Constant/Identity chains) that the rewrite left without a reader."""
    uses: Counter[str] = Counter()
    for node in graph.node:
        uses.update(node_uses(node))
    uses.update(vi.name for vi in graph.output)
    producer = {o: node for node in graph.node for o in node.output if o}
    dead_inits: set[str] = set()
    dead_nodes: set[int] = set()
    todo = list(candidates)
    init_names = {t.name for t in graph.initializer}
    while todo:
        name = todo.pop()
        if not name or uses[name] > 0 or name in dead_inits:
            continue
        if name in init_names:
            dead_inits.add(name)
            continue
        node = producer.get(name)
        if (
            node is not None
            and id(node) not in dead_nodes
            and node.op_type in ("Constant", "Identity")
            and node.domain in DEFAULT_DOMAINS
            and all(uses[o] == 0 for o in node.output)
        ):
            dead_nodes.add(id(node))
            for inp in node.input:
                uses[inp] -= 1
                todo.append(inp)
    if dead_nodes:
        live = [n for n in graph.node if id(n) not in dead_nodes]
        del graph.node[:]
        graph.node.extend(live)
    if dead_inits:
        keep_inits = [t for t in graph.initializer if t.name not in dead_inits]
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
        keep_inputs = [vi for vi in graph.input if vi.name not in dead_inits]
        del graph.input[:]
        graph.input.extend(keep_inputs)
    # value_info of tensors that no longer exist (the Conv outputs that were renamed)
    existing = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    existing |= {o for n in graph.node for o in n.output}
    stale = [vi for vi in graph.value_info if vi.name not in existing]
    for vi in stale:
        graph.value_info.remove(vi)


# --- small helpers ----------------------------------------------------------------------------------


def _is_bn(node: onnx.NodeProto) -> bool:
    return node.op_type == "BatchNormalization" and node.domain in DEFAULT_DOMAINS


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _np_dtype(elem_type: int) -> np.dtype | None:
    if not elem_type:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _infer_types(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """name -> (element type, rank or None), from ONNX shape inference when it succeeds."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001 - inference is only a hint here; we fall back to Conv ranks
        log.debug("shape inference failed (%s); using Conv weight ranks", e)
        inferred = model
    out: dict[str, tuple[int, int | None]] = {}
    g = inferred.graph
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type
        rank = len(tt.shape.dim) if tt.HasField("shape") else None
        out[vi.name] = (tt.elem_type, rank)
    for t in g.initializer:
        out[t.name] = (t.data_type, len(t.dims))
    return out
