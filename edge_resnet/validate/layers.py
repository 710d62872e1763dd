"""Per-layer quantization error, and per-layer sensitivity for the drift budget.

Both are measured on the **Q/DQ graph in ONNX Runtime** (CPU, fp32 arithmetic around the Q/DQ
pairs), never inside the deployed artifact: OpenVINO and TensorRT fuse and re-order layers and
do not expose their internal tensors. The Q/DQ graph is what every backend compiles from, so its
per-layer error is the best per-layer view there is; the end-to-end figures of ``validate`` come
from the artifact itself.

* :func:`per_layer_errors`: the SQNR of each quantized Conv/Gemm/Add output in the Q/DQ graph
  against the same tensor of the float graph (accumulated error up to that layer). The Q/DQ
  writer keeps node names and output tensor names, so layers are matched by node name.
* :func:`layer_sensitivity`: for each quantizable layer, the SQNR of the model *output* when that
  layer alone is quantized (everything else float). See :mod:`edge_resnet.budget` for
  why this ranking and not "keep only this layer float".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from edge_resnet.quant.qdq import QuantConfig, insert_qdq, quantized_nodes
from edge_resnet.types import ActivationFormat, WeightRange
from edge_resnet.validate.metrics import sqnr_db, sqnr_from_energy

log = logging.getLogger(__name__)

LAYER_OPS = frozenset({"Conv", "Gemm", "Add"})
WEIGHTED = frozenset({"Conv", "Gemm"})
LAYER_BATCH = 8  # images per ORT run when every layer output is exposed (bounds peak memory)


@dataclass(frozen=True)
class LayerError:
    layer: str  # node name = the model's module name, e.g. layer3.2.conv2
    op: str
    sqnr_db: float

    def to_dict(self) -> dict[str, str | float]:
        return {"layer": self.layer, "op": self.op, "sqnr_db": self.sqnr_db}


def _session(model: onnx.ModelProto | Path, outputs: Sequence[str] | None = None):
    """A CPU session, optionally with ``outputs`` as the graph outputs (BASIC optimizations only, so the
    Q/DQ graph keeps its Q/DQ semantics and no exposed tensor is fused away)."""

    from edge_resnet.ort_session import cpu_session

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if outputs is not None:
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        del exposed.graph.output[:]
        for t in outputs:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        model = exposed
    return cpu_session(model, optimization="ORT_ENABLE_BASIC")


def quantized_layers(qdq: onnx.ModelProto, kept_float: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """Conv/Gemm nodes whose weights come through a DequantizeLinear, and Add nodes with a dequantized
    input, minus the layers the bundle kept float (in u8s8 a float layer may still read a DQ output)."""
    producer = {o: n.op_type for n in qdq.graph.node for o in n.output}
    kept = set(kept_float)
    out = []
    for node in qdq.graph.node:
        if node.op_type not in LAYER_OPS or node.name.startswith("_qdq/") or node.name in kept:
            continue
        inputs = node.input[1:2] if node.op_type in WEIGHTED else node.input
        if any(producer.get(i) == "DequantizeLinear" for i in inputs):
            out.append(node)
    return out


def _matched(float_model: onnx.ModelProto, qdq: onnx.ModelProto,
             kept_float: Iterable[str]) -> list[tuple[str, str, str, str]]:
    """(layer, op, float tensor, Q/DQ tensor) for each quantized layer, matched by node name."""
    in_float = {n.name: n for n in float_model.graph.node}
    out = []
    for node in quantized_layers(qdq, kept_float):
        ref = in_float.get(node.name)
        if ref is None or ref.op_type != node.op_type:
            log.warning("layer %s of the Q/DQ graph has no %s of that name in the float graph: skipped",
                        node.name, node.op_type)
            continue
        out.append((node.name, node.op_type, ref.output[0], node.output[0]))
    return out


def per_layer_errors(float_model: onnx.ModelProto | Path, qdq_model: onnx.ModelProto | Path,
                     batches: Iterable[np.ndarray], *, kept_float: Iterable[str] = (),
                     progress: bool = True, total: int | None = None) -> list[LayerError]:
    """SQNR (dB) of every quantized layer's output against the float graph's, worst first.

    Outputs are streamed: per batch, the squared signal and error are summed and the tensors
    dropped, so memory is one batch of activations of the two graphs.
    """
    fm = float_model if isinstance(float_model, onnx.ModelProto) else onnx.load(str(float_model))
    qm = qdq_model if isinstance(qdq_model, onnx.ModelProto) else onnx.load(str(qdq_model))
    layers = _matched(fm, qm, kept_float)
    if not layers:
        return []
    f_sess = _session(fm, [f for _, _, f, _ in layers])
    q_sess = _session(qm, [q for _, _, _, q in layers])
    f_in, q_in = f_sess.get_inputs()[0].name, q_sess.get_inputs()[0].name
    signal = np.zeros(len(layers))
    noise = np.zeros(len(layers))
    bar = tqdm(total=total, unit="img", desc="per-layer error", disable=not progress, leave=False)
    try:
        for x in batches:
            for start in range(0, x.shape[0], LAYER_BATCH):
                chunk = np.ascontiguousarray(x[start:start + LAYER_BATCH], dtype=np.float32)
                refs = f_sess.run(None, {f_in: chunk})
                outs = q_sess.run(None, {q_in: chunk})
                for i, (r, o) in enumerate(zip(refs, outs, strict=True)):
                    r64 = r.astype(np.float64)
                    signal[i] += float(np.square(r64).sum())
                    noise[i] += float(np.square(r64 - o).sum())
                del refs, outs
                bar.update(chunk.shape[0])
    finally:
        bar.close()
    errors = [LayerError(name, op, sqnr_from_energy(s, n)) for (name, op, _, _), s, n in zip(layers, signal, noise, strict=True)]
    return sorted(errors, key=lambda e: e.sqnr_db)


# ---------------------------------------------------------------------------------------- sensitivity


def _run(sess, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.ascontiguousarray(x[i:i + batch])})[0]
                           for i in range(0, x.shape[0], batch)])


def layer_sensitivity(float_model: onnx.ModelProto, amax: dict[str, float], activation_format: ActivationFormat,
                      x: np.ndarray, *, exclude: Sequence[str] = (), progress: bool = True,
                      weight_range: WeightRange = WeightRange.FULL,
                      ranges: dict[str, tuple[float, float]] | None = None) -> list[LayerError]:
    """Output SQNR (dB) of the model with only one layer quantized, for every quantizable layer (Conv, Gemm,
    Add, pooling); most sensitive (lowest SQNR) first. ``exclude``: layers that stay float whatever happens (e.g. --exclude).
    ``ranges``: the asymmetric (lo, hi) of U8S8's signed tensors, as the shipped graph has them.

    Cost: one Q/DQ graph and one ONNX Runtime session per layer, each run on ``x``.
    """
    nodes = quantized_nodes(float_model, QuantConfig(activation_format, tuple(exclude)))
    all_names = [n.name for n in nodes]
    reference = _run(_session(float_model), x)
    out: list[LayerError] = []
    for node in tqdm(nodes, desc="layer sensitivity", unit="layer", disable=not progress, leave=False):
        others = tuple(n for n in all_names if n != node.name) + tuple(exclude)
        qmodel, _ = insert_qdq(float_model, amax, QuantConfig(activation_format, others, weight_range), ranges)
        out.append(LayerError(node.name, node.op_type, sqnr_db(reference, _run(_session(qmodel), x))))
        del qmodel
    return sorted(out, key=lambda e: e.sqnr_db)
