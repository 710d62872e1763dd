"""Decomposed BatchNorm (``Sub``/``Mul``/``Add``/``Div`` by constants) -> one ``Mul`` + ``Add``.

Keras, tf2onnx and hand-built graphs write inference BatchNorm as elementwise ops with constants,
e.g. ``(x - mean) * (gamma / sqrt(var + eps)) + beta``. ONNX Runtime folds a ``Mul`` or an ``Add``
by a per-channel constant into the Conv before it, but not a ``Sub`` or a ``Div``, and it stops at the
first one. This pass rewrites every chain of such ops (each intermediate used only by the next) into
its closed form ``x * s + t`` (``s``, ``t`` computed in float64): a Conv followed by it is then folded
by ORT's ConvMulFusion/ConvAddFusion, and one that follows a residual Add (pre-activation blocks)
stays as the per-channel ``Mul`` + ``Add`` the zoo's own v2 graphs have.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_resnet.graph.names import FreshNames
from edge_resnet.graph.passes import PassOutput, copy_model
from edge_resnet.graph.prune import drop_unused_initializers

_AFFINE = frozenset({"Add", "Sub", "Mul", "Div"})


class _Index:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.names = FreshNames(graph)

    def affine(self, n: onnx.NodeProto) -> tuple[str, float | np.ndarray, float | np.ndarray] | None:
        """(data input, scale, shift) when ``n`` is x*s+t for one non-constant x and a float constant."""
        if n.op_type not in _AFFINE or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            return None
        a, b = n.input
        ca, cb = self.consts.get(a), self.consts.get(b)
        if (ca is None) == (cb is None):
            return None
        if ca is not None and n.op_type in ("Sub", "Div"):
            return None  # c - x, c / x: not x * s + t with x first
        x, c = (b, ca) if ca is not None else (a, cb)
        if c.dtype.kind != "f":
            return None
        c = c.astype(np.float64)
        if n.op_type == "Div":
            return None if np.any(c == 0) else (x, 1.0 / c, 0.0)  # x / 0 is no affine map
        return {"Add": (x, 1.0, c), "Sub": (x, 1.0, -c), "Mul": (x, c, 0.0)}[n.op_type]

    def single_next(self, n: onnx.NodeProto) -> onnx.NodeProto | None:
        out = n.output[0]
        users = self.consumers.get(out, [])
        if out in self.outputs or len(users) != 1 or self.affine(users[0]) is None:
            return None
        return users[0] if self.affine(users[0])[0] == out else None

    def new(self, base: str) -> str:
        return self.names.new(base)


def collapse_affine(model: onnx.ModelProto) -> PassOutput:
    out = copy_model(model)
    g = out.graph
    idx = _Index(g)
    in_chain: set[int] = set()
    replace: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    chains = 0
    for n in g.node:
        if id(n) in in_chain or idx.affine(n) is None:
            continue
        chain = [n]
        while (nxt := idx.single_next(chain[-1])) is not None:
            chain.append(nxt)
        in_chain.update(id(c) for c in chain)
        if [c.op_type for c in chain] in (["Add"], ["Mul"], ["Mul", "Add"]):
            continue  # already x * s, x + t or x * s + t
        x = idx.affine(chain[0])[0]
        scale: np.ndarray | float = 1.0
        shift: np.ndarray | float = 0.0
        for c in chain:
            _, s, t = idx.affine(c)
            scale, shift = np.multiply(scale, s), np.add(np.multiply(shift, s), t)
        dtype = _elem_dtype(idx, chain)
        y = chain[-1].output[0]
        base = chain[0].name or chain[0].output[0]
        nodes = []
        s_arr, t_arr = np.asarray(scale), np.asarray(shift)
        has_mul, has_add = not np.all(s_arr == 1), not np.all(t_arr == 0)
        src = x
        if has_mul:
            s_name = idx.new(f"{base}.scale")
            new_inits.append(numpy_helper.from_array(s_arr.astype(dtype), s_name))
            mul_out = idx.new(f"{base}_scaled") if has_add else y
            nodes.append(helper.make_node("Mul", [src, s_name], [mul_out], name=idx.new(f"{base}/mul")))
            src = mul_out
        if has_add or not has_mul:
            t_name = idx.new(f"{base}.shift")
            new_inits.append(numpy_helper.from_array(t_arr.astype(dtype), t_name))
            nodes.append(helper.make_node("Add", [src, t_name], [y], name=idx.new(f"{base}/add")))
        replace[id(chain[0])] = nodes
        for c in chain[1:]:
            replace[id(c)] = []
        chains += 1
    if not chains:
        return PassOutput(model)
    kept = []
    for n in g.node:
        kept.extend(replace.get(id(n), [n]))
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(new_inits)
    drop_unused_initializers(g)
    return PassOutput(out, [f"{chains} chains of Sub/Mul/Add/Div by constants (decomposed BatchNorm) -> x * scale + shift"])


def _elem_dtype(idx: _Index, chain: list[onnx.NodeProto]) -> np.dtype:
    for c in chain:
        for i in c.input:
            if i in idx.consts:
                return idx.consts[i].dtype
    return np.dtype(np.float32)

