"""Insert QuantizeLinear/DequantizeLinear into a BN-folded float ResNet graph.

Placement (one statistics set, two formats, chosen by the target):

- Weights of every Conv and Gemm: int8, per output channel, symmetric in [-127, 127] (or [-63, 63]
  for x86 CPUs without VNNI, ``WeightRange.REDUCED``: see edge_resnet.host_cpu), stored as int8
  initializers behind a DequantizeLinear (axis = output channel).
- Activations: per-tensor symmetric (no offset: real 0 is integer 0), scale = amax / 127.
  * S8S8 (TensorRT explicit quantization, OpenVINO): int8, zero point 0. Q/DQ on the *inputs* of
    Conv, Gemm and pooling, and on the *residual* input of every Add, following TensorRT's
    placement recommendations: quantize inputs of weighted ops, not their outputs; quantize the
    residual (identity) branch of the add (NVIDIA/TensorRT#1992). The Add's other input, a conv
    output, gets no Q/DQ: TensorRT then fuses Conv + Add + ReLU into one int8 kernel, while a Q/DQ
    there "forces the separation" of conv and add (TensorRT developer guide, Q/DQ placement,
    fig. 9; NVIDIA/TensorRT#3270; ModelOpt's remove_partial_input_qdq). Both inputs of the add
    are therefore int8 in the engine. An Add whose inputs are not conv outputs gets both.
  * U8S8 (ONNX Runtime on x86): uint8, zero point 128, the same input Q/DQ plus a Q/DQ on the
    *outputs* of Conv, Add and pooling: ORT fuses DQ->Conv->Q into QLinearConv and DQ->Add->Q into
    QLinearAdd only when a Q directly follows the op (a ReLU in between leaves the conv in float),
    and it wants the bias as int32 (scale = input scale x weight scale) behind a DequantizeLinear.
    A tensor that is non-negative by construction (a ReLU output, pooled or flattened) uses the
    whole uint8 range with zero point 0 and scale amax / 255 ("unsigned symmetric", as NNCF): one
    more bit than zero point 128, and ORT then drops the ReLU into the quantization. A signed
    tensor (the input, a conv output feeding an Add) is asymmetric when its calibrator gives a
    range (minmax, mse: ``calibrators.RANGE_CALIBRATORS``): scale (hi - lo) / 255 and the zero point
    that maps 0 to an integer, as ONNX Runtime's quantize_static; a skewed tensor otherwise wastes
    up to half its levels. Otherwise zero point 128. TensorRT has no unsigned int8, so S8S8 keeps
    every tensor signed and symmetric.
- Scale-preserving ops (MaxPool, Flatten, Reshape) give their output the scale of their input, so
  backends can run them in int8 without requantizing.
- The graph output stays float (no Q/DQ after the last Gemm).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_resnet.errors import QuantizationError
from edge_resnet.graph.index import GraphIndex
from edge_resnet.graph.prune import drop_dead_nodes, drop_unused_initializers
from edge_resnet.types import ActivationFormat, WeightRange

log = logging.getLogger(__name__)

WEIGHTED_OPS = frozenset({"Conv", "Gemm"})
INT8_OPS = frozenset({"Conv", "Gemm", "Add", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "AveragePool"})
SCALE_PRESERVING = frozenset({"MaxPool", "GlobalMaxPool", "Flatten", "Reshape"})
POOLING_OPS = frozenset({"MaxPool", "GlobalAveragePool", "GlobalMaxPool", "AveragePool"})
# ModelOpt's copy ops (modelopt/onnx/op_types.py, get_copy_ops): a pooling op sees its neighbours through them
COPY_OPS = frozenset({"Flatten", "Transpose", "Concat", "Split", "Squeeze", "Expand", "ReverseSequence", "Reshape", "Tile",
                      "Gather", "Slice", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "OneHot"})
_OUTPUT_QUANTIZED = frozenset({"Conv", "Add", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "AveragePool"})
WEIGHT_QMAX = 127
# the largest |integer weight| of each range (AUTO is resolved by the caller: edge_resnet.targets)
WEIGHT_QMAX_OF: dict[WeightRange, int] = {WeightRange.FULL: WEIGHT_QMAX, WeightRange.REDUCED: 63}
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class FormatRule:
    """How one activation format is written into the graph."""

    dtype: int  # onnx TensorProto element type of quantized activations
    zero_point: int
    quantize_outputs: bool  # also Q/DQ the outputs of Conv/Add/pooling (ORT fusion)
    int32_bias: bool
    fuse_residual: bool = False  # leave the conv-branch input of a residual Add unquantized (TensorRT)
    unsigned_nonnegative: bool = False  # zero point 0, 255 levels for tensors that cannot be negative
    # quantize a pooling op only next to a quantized op (TensorRT/ModelOpt): see pooling_has_quantized_neighbour
    pooling_needs_quantized_neighbour: bool = False
    asymmetric_signed: bool = False  # signed tensors take a calibrated (lo, hi) range and its zero point

    @property
    def np_dtype(self) -> type:
        return np.uint8 if self.dtype == TensorProto.UINT8 else np.int8


FORMAT_RULES: dict[ActivationFormat, FormatRule] = {
    ActivationFormat.S8S8: FormatRule(TensorProto.INT8, 0, quantize_outputs=False, int32_bias=False, fuse_residual=True,
                                      pooling_needs_quantized_neighbour=True),
    ActivationFormat.U8S8: FormatRule(TensorProto.UINT8, 128, quantize_outputs=True, int32_bias=True,
                                      unsigned_nonnegative=True, asymmetric_signed=True),
}


@dataclass(frozen=True)
class QuantConfig:
    activation_format: ActivationFormat = ActivationFormat.S8S8
    exclude: tuple[str, ...] = ()  # node names (module names, e.g. "conv1", "fc") or op types ("Gemm")
    weight_range: WeightRange = WeightRange.FULL
    # None: the format's rule; True: no quantizer on the conv branch of a residual Add (the conv output
    # feeds the add in float), which OpenVINO fuses as Conv + sum + FakeQuantize all the same
    fuse_residual: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_range", WeightRange(self.weight_range))
        if self.weight_range not in WEIGHT_QMAX_OF:
            raise QuantizationError(f"weight range {self.weight_range.value!r} must be resolved before quantizing",
                                    "resolve it with edge_resnet.targets.resolve_weight_range")

    @property
    def weight_qmax(self) -> int:
        return WEIGHT_QMAX_OF[self.weight_range]

    @property
    def rule(self) -> FormatRule:
        rule = FORMAT_RULES[self.activation_format]
        return rule if self.fuse_residual is None else replace(rule, fuse_residual=self.fuse_residual)

    def excludes(self, node: onnx.NodeProto) -> bool:
        return node.name in self.exclude or node.op_type in self.exclude


@dataclass
class QDQReport:
    quantized: Counter = field(default_factory=Counter)  # op type -> count of int8 nodes
    kept_float: list[str] = field(default_factory=list)
    activation_tensors: int = 0
    quantizers: dict[str, tuple[float, int]] = field(default_factory=dict)  # tensor -> (scale, zero point)

    def __str__(self) -> str:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.quantized.items()))
        kept = f"; kept float: {', '.join(self.kept_float)}" if self.kept_float else ""
        return f"quantized {ops} ({self.activation_tensors} activation tensors){kept}"


def fusable_conv_branch(g: GraphIndex, add: onnx.NodeProto, quantized: set[str]) -> str | None:
    """The input of a residual Add that comes straight from a quantized Conv used only there."""
    inputs = activation_inputs(g, add)
    for t in inputs:
        src = g.producer.get(t)
        if src is not None and src.op_type == "Conv" and src.name in quantized and len(g.consumers[t]) == 1:
            other = [i for i in inputs if i != t]
            if other:  # the residual branch keeps its Q/DQ
                return t
    return None


def activation_inputs(g: GraphIndex, node: onnx.NodeProto) -> list[str]:
    if node.op_type in WEIGHTED_OPS or node.op_type in ("MaxPool", "GlobalAveragePool", "GlobalMaxPool", "AveragePool"):
        return [node.input[0]]
    if node.op_type == "Add":
        return [i for i in node.input if i not in g.constants]
    return []


def quantized_nodes(model: onnx.ModelProto, config: QuantConfig, rule: FormatRule | None = None) -> list[onnx.NodeProto]:
    """The nodes whose activation inputs get Q/DQ under ``rule`` (default: the config's)."""
    rule = rule or config.rule
    g = GraphIndex(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in INT8_OPS or config.excludes(node):
            continue
        if node.op_type in WEIGHTED_OPS and (len(node.input) < 2 or node.input[1] not in g.constants):
            continue  # a conv whose weight is computed at run time is not a ResNet layer we quantize
        if node.op_type == "Add" and len(activation_inputs(g, node)) != 2:
            continue  # a bias add, not a residual add
        out.append(node)
    if rule.pooling_needs_quantized_neighbour:
        others = {n.name for n in out if n.op_type not in POOLING_OPS}
        out = [n for n in out if n.op_type not in POOLING_OPS or pooling_has_quantized_neighbour(g, n, others)]
    return out


def pooling_has_quantized_neighbour(g: GraphIndex, pool: onnx.NodeProto, quantized: set[str]) -> bool:
    """ModelOpt's rule for pooling ops (modelopt/onnx/quantization/partitioning.py, find_quantizable_nodes):
    quantize one only when a consumer is quantized, or a producer is, looking through copy ops (and Cast,
    for producers). A MaxPool behind a Pad, between two float ops (ResNet v2's stem: conv1 -> Pad ->
    MaxPool -> the first block's BN), stays float: TensorRT gains no int8 kernel there, and its input,
    a conv output with no BN or ReLU after it, is wide and signed."""

    def consumer_quantized(tensor: str, depth: int = 0) -> bool:
        return depth < 100 and any(
            c.name in quantized or (c.op_type in COPY_OPS and any(consumer_quantized(o, depth + 1) for o in c.output))
            for c in g.consumers.get(tensor, []))

    def producer_quantized(tensor: str, depth: int = 0) -> bool:
        p = g.producer.get(tensor)
        if p is None or depth >= 100:
            return False
        return p.name in quantized or ((p.op_type in COPY_OPS or p.op_type == "Cast")
                                       and any(producer_quantized(i, depth + 1) for i in p.input if i not in g.constants))

    return any(consumer_quantized(o) for o in pool.output) or producer_quantized(pool.input[0])


def required_tensors(model: onnx.ModelProto, config: QuantConfig | None = None,
                     formats: tuple[ActivationFormat, ...] | None = None) -> list[str]:
    """The activation tensors calibration must measure, in graph order.

    With ``formats`` (default: the config's one) the union over them, so one statistics pass can
    serve targets of several formats.
    """
    config = config or QuantConfig()
    fmts = formats or (config.activation_format,)
    rules = [config.rule] if formats is None else [FORMAT_RULES[f] for f in fmts]
    g = GraphIndex(model)
    wanted: dict[str, None] = {}
    in_any = {n.name for r in rules for n in quantized_nodes(model, config, r)}
    nodes = [n for n in model.graph.node if n.name in in_any]
    names = {n.name for n in nodes}
    fuse_all = all(r.fuse_residual for r in rules)
    fused_branches = {fusable_conv_branch(g, n, names) for n in nodes if n.op_type == "Add"} if fuse_all else set()
    for node in nodes:
        skip = fusable_conv_branch(g, node, names) if node.op_type == "Add" and fuse_all else None
        for t in activation_inputs(g, node):
            if t != skip:
                wanted[scale_source(g, t)] = None
        outputs_too = any(r.quantize_outputs for r in rules)
        if outputs_too and node.op_type in _OUTPUT_QUANTIZED and node.output[0] not in g.outputs \
                and node.output[0] not in fused_branches:
            wanted[scale_source(g, node.output[0])] = None
    return list(wanted)


def scale_source(g: GraphIndex, tensor: str) -> str:
    """The tensor whose statistics give this tensor's scale.

    Scale-preserving ops (MaxPool, Flatten) are followed back to their input. A tensor whose only
    consumer is a ReLU (a conv or add output in U8S8) takes the ReLU output's statistics: the
    negative side is zeroed by the ReLU anyway, and DQ -> Relu -> Q with one scale adds no error.
    """
    seen = 0
    while tensor in g.producer and g.producer[tensor].op_type in SCALE_PRESERVING and seen < 100:
        tensor = g.first_input[tensor]
        seen += 1
    users = g.consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type == "Relu" and tensor not in g.outputs:
        return users[0].output[0]
    return tensor


_NONNEG_PASS = frozenset({"MaxPool", "GlobalMaxPool", "GlobalAveragePool", "AveragePool", "Flatten", "Reshape"})


def is_nonnegative(g: GraphIndex, tensor: str) -> bool:
    """True when ``tensor`` cannot be negative: a ReLU output, or pooled/flattened from one."""
    for _ in range(100):
        node = g.producer.get(tensor)
        if node is None:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type not in _NONNEG_PASS:
            return False
        tensor = g.first_input[tensor]
    return False


def quantize_weights(w: np.ndarray, axis: int = 0, qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 in [-qmax, qmax]: returns (int8 weights, float32 scales along ``axis``)."""
    w64 = np.moveaxis(w.astype(np.float64), axis, 0)
    amax = np.abs(w64.reshape(w64.shape[0], -1)).max(axis=1)
    scale = np.maximum(amax / qmax, MIN_SCALE).astype(np.float32)
    shape = (-1,) + (1,) * (w64.ndim - 1)
    q = np.clip(np.rint(w64 / scale.astype(np.float64).reshape(shape)), -qmax, qmax).astype(np.int8)
    return np.moveaxis(q, 0, axis), scale


def asymmetric_quantizer(lo: float, hi: float, levels: int = 255) -> tuple[float, int]:
    """(scale, zero point) of a uint8 quantizer covering ``[lo, hi]`` (lo <= 0 <= hi), 0 exactly representable."""
    scale = float(np.float32(max(float(hi) - float(lo), MIN_SCALE * levels) / levels))
    return scale, int(np.clip(np.rint(-float(lo) / scale), 0, levels))


def signed_tensors(model: onnx.ModelProto, config: QuantConfig, tensors: list[str]) -> list[str]:
    """Of calibrated ``tensors``, those the format quantizes asymmetrically given a range."""
    if not config.rule.asymmetric_signed:
        return []
    g = GraphIndex(model)
    return [t for t in tensors if not is_nonnegative(g, t)]


def quantizer_for(rule: FormatRule, g: GraphIndex, src: str, amax: float,
                  value_range: tuple[float, float] | None = None) -> tuple[float, int]:
    """(scale, zero point) of the quantizer of scale source ``src`` under ``rule``, from its amax and, for a
    signed tensor of an asymmetric format, its (lo, hi) range. The source of a conv output consumed only by
    a ReLU is that ReLU's output: clamping the negatives in Q is then exactly what the ReLU does."""
    if rule.unsigned_nonnegative and is_nonnegative(g, src):
        return activation_scale(amax, 255), 0
    if rule.asymmetric_signed and value_range is not None:
        return asymmetric_quantizer(*value_range)
    return activation_scale(amax), rule.zero_point


def activation_scale(amax: float, levels: int = 127) -> float:
    """Scale of a symmetric quantizer covering [-amax, amax] (levels=127) or [0, amax] (levels=255)."""
    return float(np.float32(max(float(amax), MIN_SCALE * levels) / levels))


def insert_qdq(model: onnx.ModelProto, amax: dict[str, float], config: QuantConfig,
               ranges: dict[str, tuple[float, float]] | None = None) -> tuple[onnx.ModelProto, QDQReport]:
    """Return a Q/DQ copy of ``model`` using per-tensor ``amax`` (from calibration), and ``ranges``
    (lo, hi) for the signed tensors of a format that quantizes them asymmetrically."""
    rule = config.rule
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = GraphIndex(out)
    nodes = quantized_nodes(out, config)
    report = QDQReport()
    report.kept_float = [n.name for n in out.graph.node if n.op_type in INT8_OPS and n not in nodes and config.excludes(n)]
    writer = _Writer(out, g, rule, amax, {n.name for n in nodes}, config.weight_qmax, ranges or {})

    names = {n.name for n in nodes}
    fused = {n.name: fusable_conv_branch(g, n, names) for n in nodes if n.op_type == "Add"} if rule.fuse_residual else {}
    for node in nodes:
        skip = fused.get(node.name)
        for idx, t in enumerate(node.input):
            if t in activation_inputs(g, node) and t != skip:
                node.input[idx] = writer.dequantized(t)
        if node.op_type in WEIGHTED_OPS:
            writer.quantize_weight(node)
        report.quantized[node.op_type] += 1
    if rule.quantize_outputs:
        for node in nodes:
            t = node.output[0]
            if node.op_type in _OUTPUT_QUANTIZED and t not in g.outputs and t not in fused.values():
                dq = writer.dequantized(t)
                for consumer in g.consumers[t]:
                    if consumer.name.startswith("_qdq/"):
                        continue
                    for idx, name in enumerate(consumer.input):
                        if name == t:
                            consumer.input[idx] = dq
    _share_dequantized(g, writer.done, config)
    report.activation_tensors = len(writer.quantizers)
    report.quantizers = dict(writer.quantizers)
    out.graph.initializer.extend(writer.new_inits)
    _toposort(out.graph)
    drop_dead_nodes(out.graph)  # needs topological order
    drop_unused_initializers(out.graph)
    return out, report


def _share_dequantized(g: GraphIndex, done: dict[str, str], config: QuantConfig) -> None:
    """Every other reader of a quantized tensor reads it through the same DequantizeLinear, as ModelOpt's ONNX
    quantizer does (one Q/DQ pair per tensor, all consumers rewired to the DQ; ONNX Runtime's QDQ quantizer
    likewise, ``replace_input_of_all_nodes``). A reader left on the float tensor (in v2 graphs the pre-activation
    BN, as Mul/Add, of a block whose shortcut is quantized) keeps TensorRT from writing int8 straight out of the
    fused producer: it has to keep a float copy. Layers kept float with ``exclude`` keep reading the float tensor."""
    for tensor, dq in done.items():
        for consumer in g.consumers.get(tensor, []):
            if consumer.name.startswith("_qdq/") or config.excludes(consumer):
                continue
            for idx, name in enumerate(consumer.input):
                if name == tensor:
                    consumer.input[idx] = dq


class _Writer:
    def __init__(self, model: onnx.ModelProto, g: GraphIndex, rule: FormatRule, amax: dict[str, float],
                 quantized: set[str], weight_qmax: int = WEIGHT_QMAX,
                 ranges: dict[str, tuple[float, float]] | None = None) -> None:
        self.model, self.g, self.rule, self.amax, self.quantized = model, g, rule, amax, quantized
        self.ranges = ranges or {}
        self.weight_qmax = weight_qmax
        self.done: dict[str, str] = {}
        self.quantizers: dict[str, tuple[float, int]] = {}
        self.new_inits: list[onnx.TensorProto] = []
        self.scales: dict[str, float] = {}

    def quantizer_of(self, tensor: str) -> tuple[float, int]:
        """(scale, zero point) of a tensor's activation quantizer."""
        src = scale_source(self.g, tensor)
        if src not in self.amax:
            raise QuantizationError(
                f"no calibration statistics for tensor {src!r}",
                "calibrate the same float graph that is being quantized",
            )
        return quantizer_for(self.rule, self.g, src, self.amax[src], self.ranges.get(src))

    def _relu_alias(self, tensor: str) -> str | None:
        """For a ReLU output whose input is an int8 op's output quantized unsigned with this very
        scale, that input: Q(Relu(DQ(q))) == q when the zero point is 0, so the ReLU and a second
        Q/DQ pair go away (ORT otherwise keeps a DQ->Q requantization after every QLinearAdd)."""
        relu = self.g.producer.get(tensor)
        if not (self.rule.quantize_outputs and self.rule.unsigned_nonnegative) or relu is None or relu.op_type != "Relu":
            return None
        src = self.g.producer.get(relu.input[0])
        if src is None or src.name not in self.quantized or src.op_type not in _OUTPUT_QUANTIZED:
            return None
        return relu.input[0] if scale_source(self.g, relu.input[0]) == tensor else None

    def dequantized(self, tensor: str) -> str:
        """Name of DQ(Q(tensor)), creating the pair once per tensor."""
        if tensor in self.done:
            return self.done[tensor]
        alias = self._relu_alias(tensor)
        if alias is not None:
            self.done[tensor] = self.dequantized(alias)
            return self.done[tensor]
        scale, zero_point = self.quantizer_of(tensor)
        self.scales[tensor] = scale
        self.quantizers[tensor] = (scale, zero_point)
        s_name, z_name = f"{tensor}_scale", f"{tensor}_zero_point"
        self.new_inits.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), s_name))
        self.new_inits.append(numpy_helper.from_array(np.array(zero_point, dtype=self.rule.np_dtype), z_name))
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        self.model.graph.node.extend([
            helper.make_node("QuantizeLinear", [tensor, s_name, z_name], [q], name=f"_qdq/{tensor}/Q"),
            helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=f"_qdq/{tensor}/DQ"),
        ])
        self.done[tensor] = dq
        return dq

    def quantize_weight(self, node: onnx.NodeProto) -> None:
        w_name = node.input[1]
        w = numpy_helper.to_array(self.g.constants[w_name])
        axis = 0
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis = 0 if attrs.get("transB", 0) else 1  # the output-feature axis of B
        q, scale = quantize_weights(w, axis, self.weight_qmax)
        base = node.name or w_name
        qn, sn, zn = f"{base}.weight_quantized", f"{base}.weight_scale", f"{base}.weight_zero_point"
        self.new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn),
                           numpy_helper.from_array(np.zeros(scale.shape, np.int8), zn)]
        dq = f"{base}.weight_dequantized"
        self.model.graph.node.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], name=f"_qdq/{base}/weight_DQ", axis=axis))
        node.input[1] = dq
        if self.rule.int32_bias and len(node.input) > 2 and node.input[2] in self.g.constants:
            self._quantize_bias(node, scale, base)

    def _quantize_bias(self, node: onnx.NodeProto, w_scale: np.ndarray, base: str) -> None:
        b = numpy_helper.to_array(self.g.constants[node.input[2]]).astype(np.float64)
        x_scale = self.scales.get(node.input[0].removesuffix("_dequantized"))
        if x_scale is None:
            return
        b_scale = (np.float64(x_scale) * w_scale.astype(np.float64)).astype(np.float32)
        q = np.rint(b / np.maximum(b_scale.astype(np.float64), 1e-30))
        if np.abs(q).max(initial=0) >= 2**31 - 1:
            log.warning("bias of %s does not fit int32 at scale %g: kept float", node.name, x_scale)
            return
        qn, sn, zn = f"{base}.bias_quantized", f"{base}.bias_scale", f"{base}.bias_zero_point"
        self.new_inits += [numpy_helper.from_array(q.astype(np.int32), qn), numpy_helper.from_array(b_scale, sn),
                           numpy_helper.from_array(np.zeros(b_scale.shape, np.int32), zn)]
        dq = f"{base}.bias_dequantized"
        self.model.graph.node.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], name=f"_qdq/{base}/bias_DQ", axis=0))
        node.input[2] = dq


def _toposort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    # Kahn's algorithm, keeping the original order among ready nodes (deterministic)
    waiting_on: dict[str, list[int]] = defaultdict(list)
    missing = []
    for idx, node in enumerate(pending):
        need = {i for i in node.input if i not in available}
        missing.append(need)
        for i in need:
            waiting_on[i].append(idx)
    import heapq

    ready = [idx for idx, need in enumerate(missing) if not need]
    heapq.heapify(ready)
    while ready:
        idx = heapq.heappop(ready)
        ordered.append(pending[idx])
        for o in pending[idx].output:
            for j in waiting_on.pop(o, []):
                missing[j].discard(o)
                if not missing[j]:
                    heapq.heappush(ready, j)
    if len(ordered) != len(pending):
        raise QuantizationError("the Q/DQ graph has a cycle or a dangling input", "report this as a bug")
    del graph.node[:]
    graph.node.extend(ordered)


def count_int8_ops(model: onnx.ModelProto) -> Counter:
    """Ops that run in int8: every activation/weight input comes from a DequantizeLinear, or (the
    conv branch of a TensorRT residual add) straight from an int8 Conv that the add fuses into."""
    producers = {o: n for n in model.graph.node for o in n.output}
    counts: Counter = Counter()

    def int8(name: str, op: str) -> bool:
        src = producers.get(name)
        return src is not None and (src.op_type == "DequantizeLinear" or (op == "Add" and src.op_type == "Conv" and int8(src.input[0], "Conv")))

    for node in model.graph.node:
        if node.op_type in INT8_OPS and node.input:
            ins = [i for i in node.input[:2] if i]
            if all(int8(i, node.op_type) for i in ins):
                counts[node.op_type] += 1
    return counts
