"""Our TensorRT (``jetson`` profile) Q/DQ placement against NVIDIA Model Optimizer's ONNX PTQ, on the same float
ONNX and the same calibration images: which tensors each quantizes, which layers read them, the placement diff, the
scales, and the fidelity of both against the float model on digits:test (ONNX Runtime, CPU).

ModelOpt runs in its own interpreter (it must not be installed into the project's venv): ``--modelopt-python`` or
``$EDGE_RESNET_MODELOPT_PYTHON``; ``benchmarks/modelopt_venv.sh`` builds such a venv (the CPU recipe of issue 12).
Its command is the one NVIDIA documents for INT8 PTQ:

    python -m modelopt.onnx.quantization --onnx_path float.onnx --quantize_mode int8 \\
        --calibration_method max|entropy --calibration_eps cpu --high_precision_dtype fp32 \\
        --calibration_data_path calib.npy --output_path modelopt.onnx

    python benchmarks/modelopt_compare.py [--models resnet18,resnet50-v1,resnet50-v2] [--methods max,entropy]

The models are trained on scikit-learn's digits here (cached in $EDGE_RESNET_CACHE), at 32x32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# our calibration method for each ModelOpt one: "max" is the absolute maximum (our minmax), "entropy" the KL one
METHODS = {"max": "minmax", "entropy": "entropy"}
# Differences we know, with the source of ModelOpt's rule: (predicate on a diff row, explanation)
MODELOPT_SMALL_GEMM = (
    "ModelOpt keeps a Gemm/MatMul float when one inference at its calibration batch shows a GEMV (an output dim of 1) "
    "or N or K < 16 (modelopt/onnx/quantization/graph_utils.py find_nodes_from_matmul_to_exclude, _MIN_MATMUL_DIM = "
    "16: no Tensor Core gain, Q/DQ cost in TensorRT). It calibrates this dynamic-batch ONNX at batch 1 "
    "(calib_utils.CalibrationDataProvider splits the data by the model's batch dim), so M = 1, and the digits head has "
    "N = 10. Our TensorRT profiles build the classifier for batches up to the profile's max (8 for jetson), where it "
    "is a GEMM, and quantize all inputs of weighted ops (TensorRT's Q/DQ placement recommendation); with 1000 classes "
    "and --calibration_shapes input:8x3xHxW ModelOpt quantizes it too (ResNet-18: identical placement)")


# ----------------------------------------------------------------------------------------- placement


@dataclass
class Placement:
    """Per activation tensor quantized: the nodes reading its DequantizeLinear; and the layers whose weights are."""

    activations: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # tensor -> {(op, node name)}
    weights: set[str] = field(default_factory=set)  # names of Conv/Gemm nodes whose weight comes from a DQ
    scales: dict[str, float] = field(default_factory=dict)


def placement(path: str) -> Placement:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)

    def constant(name: str):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    out = Placement()
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            x = n.input[0]
            if constant(x) is not None:  # a weight quantized in the graph
                continue
            readers: set[tuple[str, str]] = set()
            for dq in consumers[n.output[0]]:
                if dq.op_type != "DequantizeLinear":
                    continue
                readers |= {(c.op_type, c.name) for c in consumers[dq.output[0]]}
            out.activations[x] = readers
            scale = constant(n.input[1])
            if scale is not None:
                out.scales[x] = float(np.asarray(scale).reshape(-1)[0])
        elif n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            src = producer.get(n.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                out.weights.add(n.name)
    return out


def gemm_dims(path: str) -> dict[str, tuple[int, int]]:
    """Gemm node -> (K, N) from its weight (for ModelOpt's GEMV / small-GEMM rule)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Gemm" and n.input[1] in inits:
            w = inits[n.input[1]]
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out[n.name] = (w.shape[1], w.shape[0]) if trans_b else (w.shape[0], w.shape[1])
    return out


def diff(ours: Placement, theirs: Placement, dims: dict[str, tuple[int, int]]) -> list[dict]:
    """One row per difference, with the known explanation when there is one."""
    rows = []
    small = set(dims)  # every Gemm is a GEMV at ModelOpt's calibration batch of 1 (see MODELOPT_SMALL_GEMM)
    for t in sorted(set(ours.activations) | set(theirs.activations)):
        a, b = ours.activations.get(t), theirs.activations.get(t)
        if a == b:
            continue
        readers = {name for _, name in (a or set()) ^ (b or set())}
        why = MODELOPT_SMALL_GEMM if readers and readers <= small else None
        rows.append({"tensor": t, "ours": sorted(op for op, _ in a) if a is not None else None,
                     "modelopt": sorted(op for op, _ in b) if b is not None else None, "why": why})
    for node in sorted(ours.weights ^ theirs.weights):
        rows.append({"tensor": f"{node} (weight)", "ours": node in ours.weights, "modelopt": node in theirs.weights,
                     "why": MODELOPT_SMALL_GEMM if node in small else None})
    return rows


# ------------------------------------------------------------------------------------------- contenders


def run_ours(float_path: str, calib: np.ndarray, method: str, out: str) -> float:
    """Our Q/DQ graph for the jetson profile, from the statistics our TensorRT build calibrates."""
    import onnx

    from edge_resnet.backends.base import get_backend
    from edge_resnet.graph.load import save_onnx
    from edge_resnet.quant.collect import collect_statistics
    from edge_resnet.quant.ptq import CalibrationOptions, quantize_graph
    from edge_resnet.quant.qdq import QuantConfig
    from edge_resnet.targets import get_target

    profile = get_target("jetson")
    model = onnx.load(float_path)
    config = QuantConfig(profile.activation_format)
    t0 = time.perf_counter()
    tensors = get_backend(profile.backend).calibration_tensors(model, profile, config)
    stats = collect_statistics(model, tensors, (calib[i: i + 32] for i in range(0, len(calib), 32)),
                               total_images=len(calib), progress=False)
    qg = quantize_graph(model, stats, config, CalibrationOptions(method=METHODS[method]))
    seconds = time.perf_counter() - t0
    save_onnx(qg.model, out)
    return seconds


def run_modelopt(python: str, float_path: str, calib_path: str, method: str, out: str, log: Path) -> float:
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", float_path, "--quantize_mode", "int8",
           "--calibration_method", method, "--calibration_eps", "cpu", "--high_precision_dtype", "fp32",
           "--calibration_data_path", calib_path, "--output_path", out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not Path(out).is_file():
        raise SystemExit(f"ModelOpt failed ({' '.join(cmd)}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - t0


def fidelity(float_path: str, q_path: str, x: np.ndarray, y: np.ndarray) -> dict:
    from edge_resnet.quant.ptq import run_onnx

    ref, out = run_onnx(float_path, x), run_onnx(q_path, x)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return {"top1": float((out.argmax(1) == y).mean()), "float_top1": float((ref.argmax(1) == y).mean()),
            "agreement": float((ref.argmax(1) == out.argmax(1)).mean()), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min())}


def prepare(model_name: str, input_size: int, calib_count: int, work: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    """The digits-trained model as our BN-folded float ONNX (what the jetson profile quantizes), the calibration
    images as one float32 NCHW .npy (what ModelOpt reads), and digits:test."""
    from edge_resnet.data import open_dataset
    from edge_resnet.graph.export import export_float_graph
    from edge_resnet.graph.load import save_onnx
    from edge_resnet.models import build_model, load_weights
    from edge_resnet.train import DigitsRecipe, train_digits

    recipe = DigitsRecipe(model=model_name, input_size=input_size)
    cache = os.environ.get("EDGE_RESNET_CACHE")
    trained = train_digits(recipe, cache_dir=Path(cache) if cache else None, progress=False)
    model = build_model(model_name, num_classes=10)
    load_weights(model, trained.checkpoint)
    float_path = str(work / f"{model_name}.float.onnx")
    save_onnx(export_float_graph(model.eval(), input_size).model, float_path)
    spec = recipe.spec()

    def arrays(src: str, count: int | None) -> tuple[np.ndarray, np.ndarray]:
        ds = open_dataset(src, spec, count=count)
        xs, ys = zip(*[(b.x, b.y) for b in ds.batches(256)], strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    calib, _ = arrays("digits:train", calib_count)
    calib_path = str(work / "calib.npy")
    np.save(calib_path, calib)
    x, y = arrays("digits:test", None)
    return float_path, calib_path, x, y


# ------------------------------------------------------------------------------------------------ main


def compare(model_name: str, method: str, python: str, args: argparse.Namespace, work: Path) -> dict:
    float_path, calib_path, x, y = prepare(model_name, args.input_size, args.calib_count, work)
    ours_path, mo_path = str(work / f"{model_name}.{method}.ours.onnx"), str(work / f"{model_name}.{method}.mo.onnx")
    calib = np.load(calib_path)
    t_ours = run_ours(float_path, calib, method, ours_path)
    t_mo = run_modelopt(python, float_path, calib_path, method, mo_path, work / f"{model_name}.{method}.mo.log")
    ours, theirs = placement(ours_path), placement(mo_path)
    rows = diff(ours, theirs, gemm_dims(float_path))
    shared = sorted(set(ours.scales) & set(theirs.scales))
    ratios = [ours.scales[t] / theirs.scales[t] for t in shared if theirs.scales[t] > 0]
    return {
        "model": model_name, "method": method, "seconds": {"ours": t_ours, "modelopt": t_mo},
        "quantized_tensors": {"ours": len(ours.activations), "modelopt": len(theirs.activations),
                              "both_same_readers": sum(1 for t in shared if ours.activations[t] ==
                                                       theirs.activations[t])},
        "quantized_weights": {"ours": len(ours.weights), "modelopt": len(theirs.weights)},
        "tensors": {"ours": sorted(ours.activations), "modelopt": sorted(theirs.activations)},
        "diff": rows, "unexplained": [r for r in rows if r["why"] is None],
        "scale_ratio": {"min": min(ratios), "max": max(ratios), "median": float(np.median(ratios))} if ratios else {},
        "fidelity": {"ours": fidelity(float_path, ours_path, x, y), "modelopt": fidelity(float_path, mo_path, x, y)},
    }


def report(r: dict) -> None:
    q, w = r["quantized_tensors"], r["quantized_weights"]
    print(f"\n== {r['model']}, calibration {r['method']} (ours: {METHODS[r['method']]})")
    print(f"quantized activations: ours {q['ours']}, ModelOpt {q['modelopt']}, same tensor and readers "
          f"{q['both_same_readers']}; quantized weights: ours {w['ours']}, ModelOpt {w['modelopt']}")
    print("tensors quantized (ours): " + ", ".join(r["tensors"]["ours"]))
    if r["tensors"]["ours"] != r["tensors"]["modelopt"]:
        print("tensors quantized (ModelOpt): " + ", ".join(r["tensors"]["modelopt"]))
    if r["scale_ratio"]:
        s = r["scale_ratio"]
        print(f"scales ours/ModelOpt on shared tensors: min {s['min']:.4f} median {s['median']:.4f} max {s['max']:.4f}")
    print("placement diff:" + ("" if r["diff"] else " none"))
    said: set[str] = set()
    for d in r["diff"]:
        why = d["why"] or "UNEXPLAINED"
        print(f"  {d['tensor']:<34} ours {d['ours']!s:<22} ModelOpt {d['modelopt']!s:<22}"
              + ("  (same reason)" if why in said else ""))
        if why not in said:
            print(f"  {'':<34} why: {why}")
            said.add(why)
    f = r["fidelity"]
    print(f"{'':<10}{'top-1':>8}{'float':>8}{'agree':>8}{'cos mean':>10}{'cos min':>9}{'time s':>8}")
    for who in ("ours", "modelopt"):
        m = f[who]
        print(f"{who:<10}{m['top1']:>8.4f}{m['float_top1']:>8.4f}{m['agreement']:>8.4f}{m['cosine_mean']:>10.5f}"
              f"{m['cosine_min']:>9.4f}{r['seconds'][who]:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50-v1,resnet50-v2")
    ap.add_argument("--methods", default="max", help="comma-separated: max, entropy")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--modelopt-python", default=os.environ.get("EDGE_RESNET_MODELOPT_PYTHON"),
                    help="the interpreter of a venv with nvidia-modelopt (default: $EDGE_RESNET_MODELOPT_PYTHON)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if not args.modelopt_python:
        raise SystemExit("no ModelOpt interpreter: pass --modelopt-python or set EDGE_RESNET_MODELOPT_PYTHON "
                         "(build one with: bash benchmarks/modelopt_venv.sh .venv-modelopt)")
    check = subprocess.run([args.modelopt_python, "-c", "import modelopt, modelopt.onnx.quantization; "
                            "print(modelopt.__version__)"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"{args.modelopt_python} cannot import modelopt.onnx.quantization:\n{check.stderr[-2000:]}\n"
                         "build a working venv with: bash benchmarks/modelopt_venv.sh .venv-modelopt")
    print(f"ModelOpt {check.stdout.strip()} ({args.modelopt_python}); {args.calib_count} calibration images "
          f"(digits:train), fidelity on digits:test, {args.input_size}x{args.input_size}")
    results = []
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            work = Path(tempfile.mkdtemp(prefix=f"mocompare-{model_name}-"))
            r = compare(model_name, method, args.modelopt_python, args, work)
            report(r)
            results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps({"calib_count": args.calib_count, "input_size": args.input_size,
                                               "results": results}, indent=1))
        print(f"wrote {args.json}")
    if any(r["unexplained"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
