"""Side by side, in one run: edge-resnet's calibrate+quantize (each method) vs ONNX Runtime's
``quantize_static`` (MinMax, Percentile; per-channel QDQ) and NNCF's ``quantize``, on the same
digits-trained ResNet and the same calibration images.

Each contender runs in its own fresh process, so its peak RSS (VmHWM: Linux keeps ru_maxrss across
exec, so that would report the parent's) is its own; wall time is the calibrate+quantize call
(imports excluded). Contenders run in interleaved rounds and the median time is reported, so a
burst of load from elsewhere on the machine does not land on one contender only. Fidelity is measured on digits:test in ONNX Runtime
against the float model: top-1 agreement, mean cosine of logits, top-1 accuracy.

    python benchmarks/quantize_compare.py --model resnet50 --calib-count 512 [--json out.json]

Needs the `bench` extra (nncf, psutil). This machine is shared and noisy: read the ratios, which
are measured in the same run, rather than the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONTENDERS = ["ours-minmax", "ours-percentile", "ours-entropy", "ours-mse", "ort-minmax", "ort-percentile", "nncf"]


# ------------------------------------------------------------------------------------------- workers


def _ours(method: str, float_path: str, calib: np.ndarray, out: str, fmt: str) -> None:
    import onnx

    from edge_resnet.graph.load import save_onnx
    from edge_resnet.quant.collect import collect_statistics
    from edge_resnet.quant.ptq import CalibrationOptions, quantize_graph
    from edge_resnet.quant.qdq import QuantConfig, required_tensors
    from edge_resnet.types import ActivationFormat

    model = onnx.load(float_path)
    config = QuantConfig(ActivationFormat(fmt))
    bs = 32
    stats = collect_statistics(model, required_tensors(model, config),
                               (calib[i: i + bs] for i in range(0, len(calib), bs)), progress=False)
    qg = quantize_graph(model, stats, config, CalibrationOptions(method=method))
    save_onnx(qg.model, out)


def _ort(method: str, float_path: str, calib: np.ndarray, out: str, fmt: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i: i + 16] for i in range(0, len(calib), 16))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    pre = out + ".pre.onnx"
    quant_pre_process(float_path, pre, skip_optimization=False)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method])


def _nncf(method: str, float_path: str, calib: np.ndarray, out: str, fmt: str) -> None:
    import nncf
    import onnx

    model = onnx.load(float_path)
    ds = nncf.Dataset([calib[i: i + 1] for i in range(len(calib))], lambda x: {"input": x})
    q = nncf.quantize(model, ds, subset_size=len(calib))
    onnx.save(q, out)


WORKERS = {"ours": _ours, "ort": _ort, "nncf": _nncf}


def worker(name: str, float_path: str, calib_path: str, out: str, fmt: str) -> dict:
    calib = np.load(calib_path)
    family, _, method = name.partition("-")
    t0 = time.perf_counter()
    WORKERS[family](method, float_path, calib, out, fmt)
    seconds = time.perf_counter() - t0
    return {"name": name, "seconds": seconds, "peak_rss_mb": _vm_hwm_mb()}


def _vm_hwm_mb() -> float:
    """Peak resident set of this process (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- driver


def fidelity(float_path: str, q_path: str, x: np.ndarray, y: np.ndarray) -> dict:
    from edge_resnet.quant.ptq import run_onnx

    ref, out = run_onnx(float_path, x), run_onnx(q_path, x)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return {"agreement": float((ref.argmax(1) == out.argmax(1)).mean()), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "top1": float((out.argmax(1) == y).mean()),
            "float_top1": float((ref.argmax(1) == y).mean())}


def prepare(model_name: str, input_size: int, calib_count: int, work: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    from edge_resnet.data import open_dataset
    from edge_resnet.graph.export import export_onnx
    from edge_resnet.models import build_model, load_weights
    from edge_resnet.train import DigitsRecipe, train_digits

    recipe = DigitsRecipe(model=model_name, input_size=input_size)
    trained = train_digits(recipe)
    model = build_model(model_name, num_classes=10)
    load_weights(model, trained.checkpoint)
    float_path = str(work / "float.onnx")
    export_onnx(model, float_path, input_size)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--calib-count", type=int, default=512)
    ap.add_argument("--format", default="u8s8", help="our Q/DQ format (ORT and NNCF produce u8 activations)")
    ap.add_argument("--only", nargs="*", default=CONTENDERS)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median time is reported")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, metavar=("NAME", "FLOAT", "CALIB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.format)))
        return

    work = Path(tempfile.mkdtemp(prefix="qcompare-"))
    float_path, calib_path, x, y = prepare(args.model, args.input_size, args.calib_count, work)
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    for rnd in range(args.rounds):
        for name in args.only:
            out = str(work / f"{name}.onnx")
            proc = subprocess.run([sys.executable, __file__, "--format", args.format, "--worker", name, float_path, calib_path, out],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name].append(run)
            print(f"round {rnd + 1}: {name:<16} {run['seconds']:7.2f} s  peak {run['peak_rss_mb']:6.0f} MB", flush=True)
    rows = []
    for name, rs in runs.items():
        if not rs:
            continue
        row = {"name": name, "seconds": float(np.median([r["seconds"] for r in rs])), "seconds_all": [r["seconds"] for r in rs],
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
        row.update(fidelity(float_path, str(work / f"{name}.onnx"), x, y))
        rows.append(row)
    base = next((r for r in rows if r["name"] == "ort-minmax"), None)
    print(f"\n{args.model} @ {args.input_size}px, {args.calib_count} calibration images, median of {args.rounds} rounds, float top-1 "
          f"{rows[0]['float_top1']:.4f} on digits:test ({len(y)} images)")
    print(f"{'contender':<16}{'time s':>8}{'x ORT-MinMax':>14}{'peak RSS MB':>13}{'agreement':>11}{'cos mean':>10}{'cos min':>9}")
    for r in rows:
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        print(f"{r['name']:<16}{r['seconds']:>8.2f}{ratio:>14}{r['peak_rss_mb']:>13.0f}{r['agreement']:>11.4f}"
              f"{r['cosine_mean']:>10.5f}{r['cosine_min']:>9.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "input_size": args.input_size,
                                               "calib_count": args.calib_count, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
