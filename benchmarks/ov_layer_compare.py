"""Per-layer comparison of two OpenVINO INT8 artifacts of one model: our `cpu` bundle vs NNCF's.

Both IRs are compiled for the CPU with profiling on (PERF_COUNT), run at one batch size, and the
runtime graph (get_runtime_model() rt_info) and the perf counters (get_profiling_info()) are read
for each. Prints, per layer type of the runtime graph, the node count, executed precision and the
summed time of each side, then the per-layer rows whose type, kernel or precision differ, and the
nodes only one side has (Reorders, FakeQuantize, unfused eltwise).

    python benchmarks/ov_layer_compare.py --model resnet50 --input-size 224 --batch 1 [--iters 200]
    python benchmarks/ov_layer_compare.py --ours BUNDLE_DIR --nncf nncf.xml   # artifacts already built

Builds the same artifacts as latency_compare.py (digits-trained weights, 128 calibration images,
NNCF's overflow fix matching our weight range on this host).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Node:
    name: str
    layer_type: str  # runtime graph layerType
    exec_type: str  # kernel, e.g. brgconv_avx2_I8, jit_avx2_FP32
    precision: str  # runtimePrecision
    ms: float  # mean real_time per inference
    original: str  # IR layers fused into it


def _compile(xml: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(xml)), "CPU",
                              {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})


def _runtime_info(compiled) -> dict[str, tuple[str, str, str]]:
    info = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()

        def get(key: str, rt=rt) -> str:
            return str(rt[key].astype(str)) if key in rt else ""

        info[op.get_friendly_name()] = (get("layerType"), get("runtimePrecision"), get("originalLayersNames"))
    return info


def profile(xmls: list[Path], batch: int, input_size: int, iters: int, threads: int) -> list[dict[str, Node]]:
    """Per-node mean time of each IR; the IRs run alternately, one inference each, so that the shared
    machine's noise lands on all of them alike."""
    compiled = [_compile(x, threads) for x in xmls]
    requests = [c.create_infer_request() for c in compiled]
    x = np.random.default_rng(0).standard_normal((batch, 3, input_size, input_size)).astype(np.float32)
    for request in requests:
        for _ in range(10):
            request.infer({0: x})
    times: list[dict[str, float]] = [defaultdict(float) for _ in xmls]
    exec_types: list[dict[str, str]] = [{} for _ in xmls]
    for _ in range(iters):
        for request, t, e in zip(requests, times, exec_types, strict=True):
            request.infer({0: x})
            for p in request.get_profiling_info():
                t[p.node_name] += p.real_time.total_seconds() * 1e3
                e[p.node_name] = p.exec_type
    out = []
    for c, t, e in zip(compiled, times, exec_types, strict=True):
        nodes = {}
        for name, (layer_type, precision, original) in _runtime_info(c).items():
            if layer_type in ("Parameter", "Result", "Input", "Output", "Const"):
                continue
            nodes[name] = Node(name, layer_type, e.get(name, ""), precision, t.get(name, 0.0) / iters, original)
        out.append(nodes)
    return out


def by_type(nodes: dict[str, Node]) -> dict[str, tuple[int, float, str]]:
    acc: dict[str, list] = defaultdict(lambda: [0, 0.0, defaultdict(int)])
    for n in nodes.values():
        a = acc[n.layer_type]
        a[0] += 1
        a[1] += n.ms
        a[2][n.precision] += 1
    return {k: (c, t, " ".join(f"{p or '-'}:{m}" for p, m in sorted(ps.items()))) for k, (c, t, ps) in acc.items()}


def report(ours: dict[str, Node], peer: dict[str, Node], show_all: bool = False) -> None:
    to, tp = by_type(ours), by_type(peer)
    total_o, total_p = sum(n.ms for n in ours.values()), sum(n.ms for n in peer.values())
    print(f"\n{'layer type':<20}{'ours n':>7}{'ms':>8}  {'precisions':<22}{'nncf n':>7}{'ms':>8}  {'precisions':<22}{'diff ms':>8}")
    for t in sorted(set(to) | set(tp), key=lambda k: -max(to.get(k, (0, 0.0, ""))[1], tp.get(k, (0, 0.0, ""))[1])):
        co, mo, po = to.get(t, (0, 0.0, ""))
        cp, mp, pp = tp.get(t, (0, 0.0, ""))
        print(f"{t:<20}{co:>7}{mo:>8.3f}  {po:<22}{cp:>7}{mp:>8.3f}  {pp:<22}{mo - mp:>+8.3f}")
    print(f"{'total (counters)':<20}{len(ours):>7}{total_o:>8.3f}  {'':<22}{len(peer):>7}{total_p:>8.3f}  {'':<22}{total_o - total_p:>+8.3f}")

    print("\nlayers present on both sides whose kernel or precision differ (or all, with --all):")
    print(f"  {'node':<48}{'type':<14}{'ours kernel/prec':<28}{'ms':>7}  {'nncf kernel/prec':<28}{'ms':>7}")
    for name, o in ours.items():
        p = peer.get(name)
        if p is None:
            continue
        if show_all or (o.exec_type, o.precision, o.layer_type) != (p.exec_type, p.precision, p.layer_type):
            print(f"  {name[-47:]:<48}{o.layer_type:<14}{o.exec_type + '/' + o.precision:<28}{o.ms:>7.3f}  "
                  f"{p.exec_type + '/' + p.precision:<28}{p.ms:>7.3f}")
    print("\nfused into each convolution (ours | nncf), where the lists differ in length:")
    for name, o in ours.items():
        p = peer.get(name)
        if p is not None and o.layer_type == "Convolution" and len(o.original.split(",")) != len(p.original.split(",")):
            print(f"  {name}: {o.original} | {p.original}")
    for label, side, other in (("ours only", ours, peer), ("nncf only", peer, ours)):
        only = [n for k, n in side.items() if k not in other]
        print(f"\n{label}: {len(only)} nodes, {sum(n.ms for n in only):.3f} ms")
        for n in only:
            if n.layer_type == "Reshape" and n.ms < 0.001:  # renamed free reshapes (weights' flatten)
                continue
            print(f"  {n.name[-60:]:<61}{n.layer_type:<16}{n.exec_type + '/' + n.precision:<28}{n.ms:>7.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--calib-count", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ours", type=Path, help="an existing cpu bundle (skips the build)")
    ap.add_argument("--nncf", type=Path, help="an existing NNCF IR .xml (skips the build)")
    ap.add_argument("--save", type=Path, help="keep the built artifacts here (our bundle, nncf.xml)")
    ap.add_argument("--all", action="store_true", help="list every matched layer, not only the differing ones")
    args = ap.parse_args()
    if args.ours and args.nncf:
        ours_xml, nncf_xml = args.ours / "model.xml", args.nncf
        if not ours_xml.is_file():
            ours_xml = next(args.ours.rglob("model.xml"))
    else:
        from latency_compare import build_openvino_pair

        work = args.save or Path(tempfile.mkdtemp(prefix="ovlayers-"))
        ours_xml, nncf_xml = build_openvino_pair(args.model, args.input_size, args.calib_count, work)
    print(f"ours: {ours_xml}\nnncf: {nncf_xml}\nbatch {args.batch}, {args.threads} threads, {args.iters} inferences")
    ours, peer = profile([ours_xml, nncf_xml], args.batch, args.input_size, args.iters, args.threads)
    report(ours, peer, args.all)


if __name__ == "__main__":
    main()
