"""Channels-last (NHWC) graphs -> the canonical NCHW graph, Transposes absorbed.

Keras 3 (``model.export(..., format="onnx")``) and tf2onnx write NHWC graphs: an NHWC input and a
Transpose pair around every convolution (ONNX's Conv is NCHW). Putting one more Transpose in front
of such a graph would leave all of them in place. Instead this pass *anchors* the graph's boundary in
NCHW with exact identities, and ONNX Runtime's transpose optimiser (the offline basic-level pass that
runs next, :mod:`edge_resnet.graph.ort_optimize`) cancels the Transpose pairs inside:

- the input becomes NCHW, followed by ``Transpose(perm=[0, 2, 3, 1])`` back to the NHWC tensor the
  graph expects;
- a spatial reduction of an NHWC tensor (Keras' global pooling, ``ReduceMean(axes=[1, 2])``) becomes
  ``Transpose(perm=[0, 3, 1, 2])`` + the same reduction over axes [2, 3]: equal for any tensor, and
  it gives the optimiser the NCHW end it needs (it only moves a Transpose when that cancels one);
- a 4-D output (a feature map) gets ``Transpose(perm=[0, 3, 1, 2])``, so features come out NCHW as
  from every other bundle.

:func:`check_no_transposes` then proves the result has no Transpose left, or names the ones that
stayed: a graph whose inside is not NHWC throughout (an "odd layout") is refused, not half converted.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_resnet.errors import GraphError
from edge_resnet.graph.names import FreshNames
from edge_resnet.graph.passes import PassOutput, copy_model

log = logging.getLogger(__name__)

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
_SPATIAL_REDUCES = frozenset({"ReduceMean", "ReduceMax"})
_LAYOUT_FREE = frozenset({"Identity"})  # ops looked through to find the first real use of the input


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    return next(v for v in model.graph.input if v.name not in inits)


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _first_uses(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    """Nodes reading ``name``, looking through Identity and Casts to the same type."""
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.value_info)}
    out, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n in model.graph.node:
            if t not in n.input:
                continue
            to = next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None
            if n.op_type in _LAYOUT_FREE or (to is not None and to == elem.get(t)):
                elem[n.output[0]] = elem.get(t, 0)
                todo.append(n.output[0])
            else:
                out.append(n)
    return out


def channels_last(model: onnx.ModelProto) -> bool:
    """True for an NHWC image input: read from the graph (its first use is a Transpose to NCHW), else
    from the shape (N, H, W, C with C in 1/3/4 and H not)."""
    vi = image_input(model)
    dims = _dims(vi)
    if len(dims) != 4:
        return False
    uses = _first_uses(model, vi.name)
    if uses and all(n.op_type == "Transpose" for n in uses):
        perms = {tuple(helper.get_attribute_value(a)) for n in uses for a in n.attribute if a.name == "perm"}
        if perms == {NHWC_TO_NCHW}:
            return True
    return dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4)


def input_shape_text(model: onnx.ModelProto) -> str:
    return _show(_dims(image_input(model)))


def _permute_shape(vi: onnx.ValueInfoProto, perm: tuple[int, ...]) -> None:
    dims = list(vi.type.tensor_type.shape.dim)
    copies = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for c, p in zip(copies, perm, strict=True):
        c.CopyFrom(dims[p])
    del vi.type.tensor_type.shape.dim[:]
    vi.type.tensor_type.shape.dim.extend(copies)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - ranks are a hint; without them no reduce is anchored
        inferred = model
    g = inferred.graph
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*g.input, *g.value_info, *g.output)
            if vi.type.tensor_type.HasField("shape")}


def _reduce_axes(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1]:
        for t in model.graph.initializer:
            if t.name == node.input[1]:
                return [int(v) for v in numpy_helper.to_array(t).ravel()]
        for n in model.graph.node:
            if n.op_type == "Constant" and n.output[0] == node.input[1]:
                return [int(v) for v in numpy_helper.to_array(n.attribute[0].t).ravel()]
    return None


def to_nchw(model: onnx.ModelProto) -> PassOutput:
    """The NCHW-anchored graph (see the module docstring); unchanged for an NCHW graph."""
    if not channels_last(model):
        return PassOutput(model)
    out = copy_model(model)
    g = out.graph
    names = FreshNames(g)
    ranks = _ranks(model)
    changes: list[str] = []
    new_nodes: list[onnx.NodeProto] = []

    vi = next(v for v in g.input if v.name == image_input(out).name)
    nhwc = names.new(f"{vi.name}_nhwc")
    for n in g.node:
        n.input[:] = [nhwc if i == vi.name else i for i in n.input]
    new_nodes.append(helper.make_node("Transpose", [vi.name], [nhwc], name=names.new("nchw_input/to_nhwc"),
                                      perm=list(NCHW_TO_NHWC)))
    shape_before = _dims(vi)
    _permute_shape(vi, NHWC_TO_NCHW)
    changes.append(f"input '{vi.name}' {_show(shape_before)} (NHWC) -> {_show(_dims(vi))} (NCHW)")

    body: list[onnx.NodeProto] = []
    anchored: list[str] = []
    for n in g.node:
        axes = _reduce_axes(model, n) if n.op_type in _SPATIAL_REDUCES else None
        if axes is None or ranks.get(n.input[0]) != 4 or sorted(a % 4 for a in axes) != [1, 2]:
            body.append(n)
            continue
        keepdims = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        nchw = names.new(f"{n.input[0]}_nchw")
        body.append(helper.make_node("Transpose", [n.input[0]], [nchw], name=names.new(f"{n.name or n.op_type}/to_nchw"),
                                     perm=list(NHWC_TO_NCHW)))
        n.input[0] = nchw
        _set_axes(g, n, [2, 3], names)
        body.append(n)
        if keepdims:  # (N, C, 1, 1) -> the (N, 1, 1, C) the rest of the graph expects
            reduced = names.new(f"{n.output[0]}_nchw")
            body.append(helper.make_node("Transpose", [reduced], [n.output[0]], name=names.new(f"{n.name}/to_nhwc"),
                                         perm=list(NCHW_TO_NHWC)))
            n.output[0] = reduced
        anchored.append(n.op_type)
    if anchored:
        what = ", ".join(f"{k} {v}" for k, v in sorted(Counter(anchored).items()))
        changes.append(f"global pooling over NHWC axes [1, 2] -> over NCHW axes [2, 3] ({what})")

    output_map = None
    for o in g.output:
        if ranks.get(o.name) != 4 and len(o.type.tensor_type.shape.dim) != 4:
            continue
        inner = names.new(f"{o.name}_nhwc")
        for n in body:
            n.output[:] = [inner if t == o.name else t for t in n.output]
            n.input[:] = [inner if t == o.name else t for t in n.input]
        body.append(helper.make_node("Transpose", [inner], [o.name], name=names.new(f"{o.name}/to_nchw"),
                                     perm=list(NHWC_TO_NCHW)))
        shape_before = _dims(o)
        _permute_shape(o, NHWC_TO_NCHW)
        changes.append(f"output '{o.name}' {_show(shape_before)} (NHWC) -> {_show(_dims(o))} (NCHW)")
        output_map = _to_nhwc
    del g.node[:]
    g.node.extend(new_nodes + body)
    del g.value_info[:]  # NHWC shapes of renamed tensors; shape inference gives them again
    return PassOutput(out, changes, input_perm=NHWC_TO_NCHW, output_map=output_map)


def _to_nhwc(y: np.ndarray) -> np.ndarray:
    return y.transpose(NCHW_TO_NHWC)


def _set_axes(g: onnx.GraphProto, node: onnx.NodeProto, axes: list[int], names: FreshNames) -> None:
    for a in node.attribute:
        if a.name == "axes":
            del a.ints[:]
            a.ints.extend(axes)
            return
    t = numpy_helper.from_array(np.array(axes, dtype=np.int64), names.new(f"{node.name or node.op_type}.axes"))
    g.initializer.append(t)
    node.input[1] = t.name


def check_no_transposes(model: onnx.ModelProto, source_shape: str) -> None:
    """GraphError naming the Transposes left in a graph that was NHWC: its inside is in another layout."""
    left = [n for n in model.graph.node if n.op_type == "Transpose"]
    if not left:
        return
    consumers = {i: n for n in model.graph.node for i in n.input}
    where = []
    for n in left[:3]:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        user = consumers.get(n.output[0])
        where.append(f"Transpose{perm} before {user.op_type} '{user.name}'" if user is not None
                     else f"Transpose{perm} at output '{n.output[0]}'")
    more = f" and {len(left) - 3} more" if len(left) > 3 else ""
    raise GraphError(
        f"the graph's input is channels-last {source_shape}, but its inside does not follow one NHWC layout: "
        f"{len(left)} Transpose(s) remain after rewriting it to NCHW ({'; '.join(where)}{more})",
        "export the model with an NCHW input (tf2onnx: --inputs-as-nchw <input name>; torch: an (N, C, H, W) "
        "example input), or from Keras with model.export(path, format='onnx') on an unmodified model")


def _show(dims: list[int | None]) -> str:
    return "[" + ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(dims)) + "]"
