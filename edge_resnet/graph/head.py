"""The head of a graph: classifier, embedding or feature map, read from its structure.

- a rank-2 output computed by a dense layer (``Gemm``, or ``MatMul`` [+ ``Add``]) is a **classifier**,
  whatever its output tensor is called (``logits``, ``prob``, ``output``, ``4057``);
- a rank-2 output of global pooling without a dense layer is an **embedding**;
- a rank-4 output is a **feature map** (N, C, H, W).

``--head`` overrides the reading where the structure allows it (a 1x1-conv classifier ends in global
pooling; a dense projection can serve as an embedding); it cannot make a rank-4 output a classifier.
A trailing ``Softmax`` is removed: bundles output logits and the runtime applies the softmax (its
probabilities are the same, and int8 calibration sees the logits). The output tensor is renamed to
the canonical ``logits`` (classifier) or ``features``.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import onnx

from edge_resnet.errors import BundleError, GraphError
from edge_resnet.graph.passes import PassOutput, copy_model


class HeadKind(str, Enum):
    CLASSIFIER = "classifier"
    EMBEDDING = "embedding"
    FEATURE_MAP = "feature_map"

    @property
    def output_name(self) -> str:
        return "logits" if self is HeadKind.CLASSIFIER else "features"


# --head values -> kind
HEAD_CHOICES: dict[str, HeadKind] = {"classifier": HeadKind.CLASSIFIER, "embedding": HeadKind.EMBEDDING,
                                     "features": HeadKind.FEATURE_MAP}
_RANK_OF = {HeadKind.CLASSIFIER: 2, HeadKind.EMBEDDING: 2, HeadKind.FEATURE_MAP: 4}
_TRANSPARENT = frozenset({"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast"})
_DENSE = frozenset({"Gemm", "MatMul"})
_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool", "MaxPool"})


def parse_head(value: str | HeadKind | None) -> HeadKind | None:
    if value is None or isinstance(value, HeadKind):
        return value
    try:
        return HEAD_CHOICES[value]
    except KeyError:
        raise GraphError(f"unknown head kind {value!r}", f"use one of {', '.join(HEAD_CHOICES)}") from None


def single_output(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    outs = list(model.graph.output)
    if len(outs) != 1:
        found = ", ".join(f"'{o.name}'" for o in outs)
        raise GraphError(f"the graph has {len(outs)} outputs ({found}); expected one (logits or features)",
                         "export the model with a single output, e.g. output_names=['logits'] on one returned tensor")
    return outs[0]


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in (*model.graph.output, *model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no rank then; the caller says so
        return None
    for vi in (*inferred.graph.output, *inferred.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def strip_softmax(model: onnx.ModelProto) -> PassOutput:
    """Drop a Softmax over the classes at the output (rank 2)."""
    out = single_output(model)
    nodes = list(model.graph.node)
    at = next((i for i, n in enumerate(nodes) if out.name in n.output), None)
    if at is None or nodes[at].op_type != "Softmax" or _rank(model, out.name) != 2:
        return PassOutput(model)
    producer = nodes[at]
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1 if _opset(model) >= 13 else 1)
    src = producer.input[0]
    if axis not in (1, -1) or any(src in n.input for i, n in enumerate(nodes) if i != at) or src in {
            o.name for o in model.graph.output}:
        return PassOutput(model)  # another axis, or the logits are used elsewhere too: keep the graph as it is
    m = copy_model(model)
    g = m.graph
    del g.node[at]
    for n in g.node:
        n.output[:] = [out.name if t == src else t for t in n.output]
    stale = [vi for vi in g.value_info if vi.name in (src, out.name)]
    for vi in stale:
        g.value_info.remove(vi)
    return PassOutput(m, [f"removed the Softmax '{producer.name or out.name}' at the output: the bundle outputs "
                          "logits, the runtime applies the softmax"], output_map=_softmax)


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def read_head(model: onnx.ModelProto) -> tuple[HeadKind, str]:
    """The kind the structure says, and why (for messages)."""
    out = single_output(model)
    rank = _rank(model, out.name)
    producers = {o: n for n in model.graph.node for o in n.output}
    n = producers.get(out.name)
    path = []
    while n is not None and n.op_type in _TRANSPARENT:
        path.append(n.op_type)
        n = producers.get(n.input[0])
    if n is not None and n.op_type == "Add":  # MatMul + Add (bias) not fused into a Gemm
        for i in n.input:
            if producers.get(i) is not None and producers[i].op_type == "MatMul":
                n = producers[i]
                break
    op = n.op_type if n is not None else "the graph input"
    if rank == 4:
        return HeadKind.FEATURE_MAP, f"its output '{out.name}' is 4-D (N, C, H, W), computed by {op}"
    if rank == 2 and n is not None and n.op_type in _DENSE:
        return HeadKind.CLASSIFIER, f"its output '{out.name}' is 2-D and computed by a dense layer ({op})"
    if rank == 2 and n is not None and n.op_type in _POOLS:
        return HeadKind.EMBEDDING, f"its output '{out.name}' is 2-D and computed by {op} without a dense layer"
    if rank == 2:
        return HeadKind.EMBEDDING, f"its output '{out.name}' is 2-D, computed by {op} (no dense layer)"
    shown = "of unknown rank" if rank is None else f"{rank}-D"
    raise GraphError(f"the graph's output '{out.name}' is {shown}; expected (N, classes) logits, (N, D) embeddings "
                     "or an (N, C, H, W) feature map", "export the model's logits or pooled features as its output")


class HeadPass:
    """Strip a trailing Softmax, decide the kind (``override`` wins when the ranks agree), rename the output."""

    def __init__(self, override: HeadKind | str | None = None) -> None:
        self.override = parse_head(override)
        self.kind: HeadKind | None = None
        self.reason = ""

    def __call__(self, model: onnx.ModelProto) -> PassOutput:
        stripped = strip_softmax(model)
        m = stripped.model
        kind, why = read_head(m)
        if self.override is not None and self.override is not kind:
            rank = _RANK_OF[kind]
            if _RANK_OF[self.override] != rank:
                flag = next(k for k, v in HEAD_CHOICES.items() if v is self.override)
                raise GraphError(
                    f"--head {flag} contradicts the graph: {why}, which makes it {_A[kind]}; "
                    f"{_A[self.override]} has a {_RANK_OF[self.override]}-D output",
                    f"drop --head (or pass --head {_flag(kind)}), or export the model with the head you want")
            why = f"--head {_flag(self.override)} (the structure reads as {_A[kind]}: {why})"
            kind = self.override
        self.kind, self.reason = kind, why
        name = single_output(m).name
        changes = list(stripped.changes)
        if name != kind.output_name:
            m = rename_tensor(m if stripped.changes else copy_model(m), name, kind.output_name)
            changes.append(f"output '{name}' -> '{kind.output_name}' ({kind.value}: {why})")
        return PassOutput(m, changes, output_map=stripped.output_map)


_A = {HeadKind.CLASSIFIER: "a classifier", HeadKind.EMBEDDING: "an embedding model",
      HeadKind.FEATURE_MAP: "a feature-map model"}


def _flag(kind: HeadKind) -> str:
    return next(k for k, v in HEAD_CHOICES.items() if v is kind)


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """Rename tensor ``old`` to ``new`` everywhere (in place); a tensor already called ``new`` moves aside."""
    g = model.graph
    names = {t for n in g.node for t in (*n.input, *n.output)} | {t.name for t in g.initializer}
    names |= {v.name for v in (*g.input, *g.output, *g.value_info)}
    if new in names:
        aside, k = f"{new}_0", 1
        while aside in names:
            aside, k = f"{new}_{k}", k + 1
        _rename(g, new, aside)
    _rename(g, old, new)
    return model


def _rename(g: onnx.GraphProto, old: str, new: str) -> None:
    for n in g.node:
        n.input[:] = [new if t == old else t for t in n.input]
        n.output[:] = [new if t == old else t for t in n.output]
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.name == old:
            vi.name = new
    for t in g.initializer:
        if t.name == old:
            t.name = new


# manifest model.pooling of an old "features" bundle (no model.kind) -> its kind
_KIND_OF_POOLING = {"avg": HeadKind.EMBEDDING, "max": HeadKind.EMBEDDING, "none": HeadKind.FEATURE_MAP}


def manifest_kind(model: dict) -> HeadKind:
    """The kind a bundle manifest's ``model`` section records; for bundles written before ``model.kind``
    existed, the old reading of the output name (``logits`` = classifier) and the pooling."""
    kind = model.get("kind")
    if kind is not None:
        try:
            return HeadKind(kind)
        except ValueError:
            raise BundleError(f"the bundle's manifest records an unknown model kind {kind!r}",
                             f"expected one of {', '.join(k.value for k in HeadKind)}; compile the bundle again") from None
    if model.get("output", "logits") == "logits":
        return HeadKind.CLASSIFIER
    # an --onnx model records no pooling: assume pooled; embed() checks the output's rank
    return _KIND_OF_POOLING.get(model.get("pooling"), HeadKind.EMBEDDING)
