"""``Pad`` (zeros) + ``MaxPool`` -> ``MaxPool(pads=...)``, only where that is exact.

MaxPool's own padding never wins a window (it pads with -inf); an explicit zero ``Pad`` does win
wherever a window sees only negative values. The two agree when the pooled tensor is non-negative
by construction -- a ReLU output, e.g. Keras ResNet50's ``conv1_relu -> pool1_pad -> pool1_pool`` --
and every window keeps at least one real element (padding smaller than the kernel, floor mode, no
dilation). Keras ResNet50V2 zero-pads the max pool after an un-activated stem conv: that ``Pad`` is
kept, as it must be. ONNX Runtime and onnx-optimizer would fold both (see
:mod:`edge_resnet.graph.ort_optimize`); none of the tools used here checks the sign, so this pass is ours.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_resnet.graph.passes import PassOutput, copy_model

# ops whose output is non-negative when their (first) input is
_SIGN_PRESERVING = frozenset({"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Flatten", "Reshape",
                              "Identity", "Pad"})


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Index:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def non_negative(self, tensor: str, depth: int = 0) -> bool:
        n = self.producer.get(tensor)
        if n is None or depth > 32:
            return False
        if n.op_type == "Relu":
            return True
        if n.op_type == "Clip":
            lo = self.consts.get(n.input[1]) if len(n.input) > 1 and n.input[1] else _attrs(n).get("min")
            return lo is not None and float(np.min(lo)) >= 0
        if n.op_type == "Pad":
            pad_value = self.pad_value(n)
            return pad_value is not None and pad_value >= 0 and self.non_negative(n.input[0], depth + 1)
        return n.op_type in _SIGN_PRESERVING and self.non_negative(n.input[0], depth + 1)

    def pad_value(self, pad: onnx.NodeProto) -> float | None:
        if len(pad.input) > 2 and pad.input[2]:
            v = self.consts.get(pad.input[2])
            return None if v is None else float(np.asarray(v).ravel()[0])
        return float(_attrs(pad).get("value", 0.0))

    def spatial_pads(self, pad: onnx.NodeProto) -> list[int] | None:
        """Begin/end pads of H, W (ONNX order) of a constant zero Pad that pads nothing else; else None."""
        a = _attrs(pad)
        if a.get("mode", b"constant") not in (b"constant", "constant") or len(pad.input) > 3:
            return None  # other modes; an ``axes`` input (opset 18) is not handled
        pads = a.get("pads") if len(pad.input) < 2 or not pad.input[1] else self.consts.get(pad.input[1])
        if pads is None or self.pad_value(pad) != 0.0:
            return None
        pads = [int(p) for p in np.asarray(pads).ravel()]
        if len(pads) != 8 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[4] or pads[5]:
            return None
        return [pads[2], pads[3], pads[6], pads[7]]


def merge_pad_into_maxpool(model: onnx.ModelProto) -> PassOutput:
    out = copy_model(model)
    g = out.graph
    idx = _Index(g)
    merged, kept = [], []
    remove: set[int] = set()
    for pool in g.node:
        if pool.op_type != "MaxPool" or len(pool.output) > 1:
            continue
        pad = idx.producer.get(pool.input[0])
        if pad is None or pad.op_type != "Pad":
            continue
        extra = idx.spatial_pads(pad)
        a = _attrs(pool)
        kernel = list(a.get("kernel_shape", []))
        if extra is None or len(kernel) != 2:
            continue
        if not idx.non_negative(pad.input[0]):
            kept.append(pool.name or pool.output[0])
            continue
        own = list(a.get("pads", [0, 0, 0, 0]))
        total = [p + q for p, q in zip(own, extra, strict=True)]
        exact_windows = (a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and a.get("ceil_mode", 0) == 0
                         and all(d == 1 for d in a.get("dilations", [1, 1]))
                         and all(total[i] < kernel[i % 2] for i in range(4)))
        if not exact_windows:
            kept.append(pool.name or pool.output[0])
            continue
        pool.input[0] = pad.input[0]
        for attr in list(pool.attribute):
            if attr.name in ("pads", "auto_pad"):
                pool.attribute.remove(attr)
        pool.attribute.append(helper.make_attribute("pads", total))
        if len(idx.consumers.get(pad.output[0], [])) == 1 and pad.output[0] not in idx.outputs:
            remove.add(id(pad))
        merged.append(pool.name or pool.output[0])
    notes = [f"kept Pad before MaxPool {', '.join(kept)}: its input can be negative, so zero padding is not "
             "MaxPool's -inf padding"] if kept else []
    if not merged:
        return PassOutput(model, notes=notes)
    live = [n for n in g.node if id(n) not in remove]
    del g.node[:]
    g.node.extend(live)
    return PassOutput(out, [f"Pad merged into MaxPool {', '.join(merged)} (its input is non-negative: zero padding "
                            "== -inf padding)"], notes=notes)
