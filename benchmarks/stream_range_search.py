"""Prototype (issue 16, not wired into the product yet): residual-stream range search: each stream tensor's clipping range chosen by the error it causes at the logits.

Why: mse picks each tensor's range by the tensor's own squared error. On a ResNet's residual stream (the
identity input of every residual Add, and the Add's output) that is the wrong measure: the stream carries a
tensor's quantization error through every later block unchanged, and its clipping error is one-signed on the
largest activations, so it adds up down the identity paths where rounding noise partly averages out. Own-error
mse therefore clips the stream too hard on some models and not on others (benchmarks/README.md, "Three more
cases": one stream tensor alone was worth +1.6 dB of logit SQNR; no fixed floor under mse wins every model).

How: one Q/DQ graph whose stream quantizers' scales and zero points are graph inputs, run by ONNX Runtime as
written (no fusion, the exact Q/DQ semantics) on the first ``PROBE_IMAGES`` calibration images. Starting from
the calibrator's ranges, each stream tensor in graph order tries ``max(range, f * observed range)`` for each
``f`` in ``FRACTIONS``; a candidate is kept when it lowers the squared logit error against the float model. The
other tensors keep their own-error ranges. The cost is one small batch per candidate, whatever the size of the
calibration set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edge_resnet.graph.index import GraphIndex
from edge_resnet.quant.qdq import (
    QuantConfig,
    activation_inputs,
    fusable_conv_branch,
    insert_qdq,
    quantized_nodes,
    quantizer_for,
    scale_source,
)

log = logging.getLogger(__name__)

PROBE_IMAGES = 64
"""Calibration images the search scores candidates on (the first ones of the set)."""
FRACTIONS = (0.85, 0.95, 1.0)
"""Floors tried under each stream tensor's range, as fractions of its observed range (1.0: no clipping)."""

Ranges = dict[str, tuple[float, float]]


def residual_stream_tensors(model: onnx.ModelProto, config: QuantConfig) -> list[str]:
    """The calibrated tensors (scale sources) on the residual stream, in graph order: the identity input of
    each quantized residual Add and, where the format quantizes outputs, the Add's output."""
    g = GraphIndex(model)
    nodes = quantized_nodes(model, config)
    names = {n.name for n in nodes}
    stream: dict[str, None] = {}
    for node in nodes:
        if node.op_type != "Add":
            continue
        skip = fusable_conv_branch(g, node, names) if config.rule.fuse_residual else None
        for t in activation_inputs(g, node):
            if t != skip:
                stream[scale_source(g, t)] = None
        if config.rule.quantize_outputs and node.output[0] not in g.outputs:
            stream[scale_source(g, node.output[0])] = None
    order = {t: i for i, t in enumerate(_tensor_order(model))}
    return sorted(stream, key=lambda t: order.get(t, -1))


def _tensor_order(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]


@dataclass
class SearchRecord:
    """What the search did: per stream tensor the fraction of the observed range kept (None: the
    calibrator's own range), and the probe's logit error before and after."""

    tensors: dict[str, float | None] = field(default_factory=dict)
    error_before: float = 0.0
    error_after: float = 0.0
    candidates: int = 0
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        changed = {t: f for t, f in self.tensors.items() if f is not None}
        return {"images": self.images, "stream_tensors": len(self.tensors), "candidates": self.candidates,
                "changed": changed, "logit_error_before": self.error_before, "logit_error_after": self.error_after}


class _Probe:
    """The Q/DQ graph with the stream quantizers as inputs, and the float logits to score it against."""

    def __init__(self, model: onnx.ModelProto, config: QuantConfig, amax: dict[str, float], ranges: Ranges,
                 stream: list[str], probe: np.ndarray, threads: int | None) -> None:
        from edge_resnet.ort_session import cpu_session

        qmodel, _ = insert_qdq(model, amax, config, ranges)
        g = GraphIndex(model)
        self.feeds: dict[str, list[tuple[str, str]]] = {t: [] for t in stream}  # source -> (scale, zero point) inputs
        inits = {i.name: i for i in qmodel.graph.initializer}
        moved: set[str] = set()
        for node in qmodel.graph.node:
            if node.op_type != "QuantizeLinear" or not node.name.startswith("_qdq/"):
                continue
            src = scale_source(g, node.input[0])
            if src in self.feeds and node.input[1] in inits:
                self.feeds[src].append((node.input[1], node.input[2]))
                moved.update(node.input[1:3])
        kept = [i for i in qmodel.graph.initializer if i.name not in moved]
        del qmodel.graph.initializer[:]
        qmodel.graph.initializer.extend(kept)
        for name in sorted(moved):
            qmodel.graph.input.append(helper.make_tensor_value_info(name, inits[name].data_type, []))
        self.zp_dtype = np.uint8 if config.rule.np_dtype is np.uint8 else np.int8
        self.input = model.graph.input[0].name
        self.x = np.ascontiguousarray(probe, dtype=np.float32)
        self.ref = cpu_session(model, threads=threads).run(None, {self.input: self.x})[0].astype(np.float64)
        self.session = cpu_session(qmodel, optimization="ORT_DISABLE_ALL", threads=threads)
        self.output = qmodel.graph.output[0].name

    def error(self, quantizers: dict[str, tuple[float, int]]) -> float:
        feed: dict[str, np.ndarray] = {self.input: self.x}
        for src, names in self.feeds.items():
            scale, zp = quantizers[src]
            for s_name, z_name in names:
                feed[s_name] = np.asarray(scale, dtype=np.float32)
                feed[z_name] = np.asarray(zp, dtype=self.zp_dtype)
        out = self.session.run([self.output], feed)[0].astype(np.float64)
        return float(np.square(out - self.ref).sum())


def search_stream_ranges(model: onnx.ModelProto, config: QuantConfig, amax: dict[str, float], ranges: Ranges,
                         observed_amax: dict[str, float], observed_ranges: Ranges, probe: np.ndarray,
                         fractions: Sequence[float] = FRACTIONS, threads: int | None = None
                         ) -> tuple[dict[str, float], Ranges, SearchRecord]:
    """``amax`` and ``ranges`` with each residual-stream tensor's range chosen as the module docstring says.

    ``observed_amax`` / ``observed_ranges``: the minmax calibrator's (the largest |x|, ``[min, max]``).
    """
    g = GraphIndex(model)
    stream = [t for t in residual_stream_tensors(model, config) if t in amax]
    record = SearchRecord(tensors={t: None for t in stream}, images=int(probe.shape[0]))
    if not stream:
        return amax, ranges, record
    amax, ranges = dict(amax), dict(ranges)
    probe_graph = _Probe(model, config, amax, ranges, stream, probe, threads)

    def quantizer(t: str, a: float, r: tuple[float, float] | None) -> tuple[float, int]:
        return quantizer_for(config.rule, g, t, a, r)

    current = {t: quantizer(t, amax[t], ranges.get(t)) for t in stream}
    best = record.error_before = probe_graph.error(current)
    for t in stream:
        for f in fractions:
            a = max(amax[t], f * observed_amax[t])
            r = ranges.get(t)
            if r is not None:
                lo, hi = observed_ranges[t]
                r = (min(r[0], f * lo), max(r[1], f * hi))
            trial = quantizer(t, a, r)
            if trial == current[t]:
                continue
            record.candidates += 1
            err = probe_graph.error({**current, t: trial})
            if err < best:
                best, current[t], record.tensors[t] = err, trial, f
                amax[t] = a
                if r is not None:
                    ranges[t] = r
    record.error_after = best
    log.info("residual-stream range search: %d of %d stream tensors widened, probe logit error %.4g -> %.4g "
             "(%d candidates on %d images)", sum(f is not None for f in record.tensors.values()), len(stream),
             record.error_before, record.error_after, record.candidates, record.images)
    return amax, ranges, record



def main() -> None:
    """Score mse, mse + the search, with and without bias correction, on calibration_matrix's cases.

        python benchmarks/stream_range_search.py --case resnet18@64 --case resnet34@32 [--json out.json]
    """
    import argparse
    import json
    import sys
    import tempfile
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import calibration_matrix as cm

    from edge_resnet.quant import ptq
    from edge_resnet.quant.bias_correction import correct_biases
    from edge_resnet.quant.collect import collect_statistics
    from edge_resnet.quant.qdq import required_tensors
    from edge_resnet.types import ActivationFormat

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--probe", nargs="*", type=int, default=[32, 64])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.case):
            case, work = cm.Case.parse(text), Path(tmp) / str(i)
            work.mkdir()
            float_path, calib_path, x, _y, _acc = cm.prepare(case, 512, work)
            model, calib, ref = onnx.load(str(float_path)), np.load(calib_path), cm.run_exact(float_path, x)
            row: dict[str, Any] = {"case": case.label}
            for fmt in ("s8s8", "u8s8"):
                config = QuantConfig(ActivationFormat(fmt))
                stats = collect_statistics(model, required_tensors(model, config),
                                           (calib[j: j + 32] for j in range(0, len(calib), 32)), progress=False,
                                           bias_correction=True)
                a_mse, r_mse = ptq.calibrated_quantizers(model, stats, config, ptq.CalibrationOptions(method="mse"))
                a_mm, r_mm = ptq.calibrated_quantizers(model, stats, config, ptq.CalibrationOptions(method="minmax"))
                variants = {"mse": (a_mse, r_mse, None)}
                for k in args.probe:
                    t0 = time.perf_counter()
                    a, r, rec = search_stream_ranges(model, config, a_mse, r_mse, a_mm, r_mm, calib[:k])
                    variants[f"search{k}"] = (a, r, {**rec.to_dict(), "seconds": round(time.perf_counter() - t0, 1)})
                for name, (a, r, rec) in variants.items():
                    q, _ = insert_qdq(model, a, config, r)
                    for bc in (False, True):
                        qq = onnx.ModelProto()
                        qq.CopyFrom(q)
                        if bc:
                            correct_biases(model, qq, stats.bias)
                        onnx.save(qq, work / "q.onnx")
                        f = cm.fidelity(ref, cm.run_exact(work / "q.onnx", x))
                        key = f"{fmt} {name}" + ("+bc" if bc else "")
                        row[key] = {"sqnr_db": round(f["sqnr_db"], 2), "agreement": round(f["agreement"] * len(x)),
                                    **({"search": rec} if rec and not bc else {})}
                        print(case.label, key, row[key]["sqnr_db"], row[key]["agreement"], flush=True)
            report.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
