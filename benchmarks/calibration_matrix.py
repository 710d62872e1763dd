"""Calibration fidelity on several digits-trained ResNets: our methods (with and without bias
correction) against ONNX Runtime ``quantize_static`` (MinMax, Percentile, Entropy), NNCF and
ModelOpt (max, entropy), on the same BN-folded float ONNX, the same calibration images and the same
held-out split.

    python benchmarks/calibration_matrix.py --cases resnet18@32 resnet50@32 [--json out.json]
    python benchmarks/calibration_matrix.py --thresholds resnet18@32   # ModelOpt, tensor by tensor
    python benchmarks/calibration_matrix.py --timing resnet50@32       # time/memory vs ORT MinMax

Executor: every quantized graph runs in ONNX Runtime with graph optimizations disabled, so each
DequantizeLinear -> float op -> QuantizeLinear runs as written: the exact Q/DQ semantics, the same
for every contender. (At ORT_ENABLE_ALL, ORT fuses DQ->Conv->Q into QLinearConv, whose u8s8
kernels on x86 without VNNI saturate int16 intermediates: that measures the kernel, not the
calibration.) Metrics against the float model on digits:test (540 images): logit SQNR
(10 log10 of signal over error power, all logits), mean and min cosine of the logits, top-1
agreement.

ModelOpt runs in its own venv (``--modelopt-python``, default /work/venvs/modelopt/bin/python; rows
are skipped when it is missing). ``--before DIR`` adds our rows computed by another source tree
(e.g. ``git archive`` of an older commit), for before/after tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = ["minmax", "percentile", "entropy", "mse"]
PEERS = ["ort-minmax", "ort-percentile", "ort-entropy", "nncf", "modelopt-max", "modelopt-entropy"]
MODELOPT_PYTHON = "/work/venvs/modelopt/bin/python"
CALIB_BATCH = 32


@dataclass
class Case:
    model: str
    size: int

    @classmethod
    def parse(cls, text: str) -> Case:
        model, _, size = text.partition("@")
        return cls(model, int(size or 32))

    @property
    def label(self) -> str:
        return f"{self.model}@{self.size}"


# ------------------------------------------------------------------------------------------ data


def prepare(case: Case, calib_count: int, work: Path) -> tuple[Path, Path, np.ndarray, np.ndarray, float]:
    """Float ONNX (BN folded, our canonical form), calibration .npy, held-out split, float top-1."""
    from edge_resnet.data import open_dataset
    from edge_resnet.graph.export import export_onnx
    from edge_resnet.graph.load import load_onnx, save_onnx
    from edge_resnet.graph.prepare import prepare_float_graph
    from edge_resnet.models import build_model, load_weights
    from edge_resnet.train import DigitsRecipe, train_digits

    recipe = DigitsRecipe(model=case.model, input_size=case.size)
    trained = train_digits(recipe, progress=False)
    net = build_model(case.model, num_classes=10)
    load_weights(net, trained.checkpoint)
    raw = work / "exported.onnx"
    export_onnx(net, str(raw), case.size)
    float_path = work / "float.onnx"
    save_onnx(prepare_float_graph(load_onnx(str(raw))).model, float_path)
    spec = recipe.spec()

    def arrays(src: str, count: int | None) -> tuple[np.ndarray, np.ndarray]:
        ds = open_dataset(src, spec, count=count)
        xs, ys = zip(*[(b.x, b.y) for b in ds.batches(256)], strict=True)
        return np.concatenate(xs), np.concatenate(ys)

    calib, _ = arrays("digits:train", calib_count)
    calib_path = work / "calib.npy"
    np.save(calib_path, calib)
    x, y = arrays("digits:test", None)
    return float_path, calib_path, x, y, trained.test_accuracy


def run_exact(model_path: Path | str, x: np.ndarray) -> np.ndarray:
    """The exact Q/DQ executor: ONNX Runtime, CPU, graph optimizations disabled."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i: i + 128]})[0] for i in range(0, len(x), 128)])


def fidelity(ref: np.ndarray, out: np.ndarray) -> dict:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    noise = float(((out - ref) ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)
    return {"sqnr_db": sqnr, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "agreement": float((ref.argmax(1) == out.argmax(1)).mean())}


# ------------------------------------------------------------------------------------ contenders


def ours(float_path: Path, calib: np.ndarray, fmt: str, out_dir: Path, methods: list[str], tag: str = "ours") -> dict[str, Path]:
    """One statistics pass, then every method with and without bias correction (when available)."""
    import onnx

    from edge_resnet.graph.load import save_onnx
    from edge_resnet.quant import ptq as pipeline
    from edge_resnet.quant.collect import collect_statistics
    from edge_resnet.quant.qdq import QuantConfig, required_tensors
    from edge_resnet.types import ActivationFormat

    model = onnx.load(str(float_path))
    config = QuantConfig(ActivationFormat(fmt))
    has_bc = "bias_correction" in pipeline.CalibrationOptions.__dataclass_fields__
    kwargs = {"bias_correction": True} if has_bc else {}
    stats = collect_statistics(model, required_tensors(model, config),
                               (calib[i: i + CALIB_BATCH] for i in range(0, len(calib), CALIB_BATCH)), progress=False, **kwargs)
    outs = {}
    for method in methods:
        for bc in ((False, True) if has_bc else (None,)):
            opts = pipeline.CalibrationOptions(method=method, **({} if bc is None else {"bias_correction": bc}))
            try:
                qg = pipeline.quantize_graph(model, stats, config, opts)
            except Exception as exc:  # noqa: BLE001 - an unknown method in an older tree
                print(f"{tag}-{method}: {exc}", file=sys.stderr)
                continue
            name = f"{tag}-{method}" + ("" if bc is None else ("+bc" if bc else ""))
            if method == pipeline.DEFAULT_METHOD.value and bc in (None, getattr(pipeline, "DEFAULT_BIAS_CORRECTION", None)):
                name += " (default)"
            path = out_dir / f"{name.split(' ')[0]}.onnx"
            save_onnx(qg.model, path)
            outs[name] = path
    return outs


def ort_quantize(method: str, float_path: Path, calib: np.ndarray, out: Path) -> None:
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

    pre = str(out) + ".pre.onnx"
    quant_pre_process(str(float_path), pre, skip_optimization=False)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    quantize_static(pre, str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method])


def nncf_quantize(float_path: Path, calib: np.ndarray, out: Path) -> None:
    import nncf
    import onnx

    model = onnx.load(str(float_path))
    ds = nncf.Dataset([calib[i: i + 1] for i in range(len(calib))], lambda x: {"input": x})
    onnx.save(nncf.quantize(model, ds, subset_size=len(calib)), str(out))


_MODELOPT_SCRIPT = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
quantize(sys.argv[1], quantize_mode="int8", calibration_data=np.load(sys.argv[2]), calibration_method=sys.argv[3],
         output_path=sys.argv[4], high_precision_dtype="fp32", calibration_eps=["cpu"], log_level="ERROR")
"""


def modelopt_quantize(python: str, method: str, float_path: Path, calib_path: Path, out: Path) -> None:
    proc = subprocess.run([python, "-c", _MODELOPT_SCRIPT, str(float_path), str(calib_path), method, str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])


def peers(names: list[str], float_path: Path, calib_path: Path, out_dir: Path, modelopt_python: str | None,
          reuse: Path | None = None) -> dict[str, Path]:
    calib = np.load(calib_path)
    outs = {}
    for name in names:
        family, _, method = name.partition("-")
        out = out_dir / f"{name}.onnx"
        old = reuse / f"{name}.onnx" if reuse else None
        if old is not None and old.exists() and (reuse / "float.onnx").read_bytes() == float_path.read_bytes():
            out.write_bytes(old.read_bytes())  # the same float graph and calibration set: the same peer output
            outs[name] = out
            print(f"  {name}: reused from {reuse}", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            if family == "ort":
                ort_quantize(method, float_path, calib, out)
            elif family == "nncf":
                nncf_quantize(float_path, calib, out)
            elif family == "modelopt":
                if not modelopt_python or not Path(modelopt_python).exists():
                    print(f"{name}: skipped (no ModelOpt venv)", file=sys.stderr)
                    continue
                modelopt_quantize(modelopt_python, method, float_path, calib_path, out)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other contenders
            print(f"{name} failed: {exc}", file=sys.stderr)
            continue
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        outs[name] = out
    return outs


def before_rows(before: Path, float_path: Path, calib_path: Path, fmt: str, out_dir: Path) -> dict[str, Path]:
    """Our rows as computed by another source tree, in a subprocess with that tree first on the path."""
    env = {**os.environ, "PYTHONPATH": str(before)}
    proc = subprocess.run([sys.executable, __file__, "--before-worker", str(float_path), str(calib_path), fmt, str(out_dir)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"before rows failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {}
    return {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


# ------------------------------------------------------------------------------------------ modes


def matrix(args: argparse.Namespace) -> None:
    results = []
    for case in map(Case.parse, args.cases):
        work = Path(tempfile.mkdtemp(prefix=f"calmatrix-{case.model}-{case.size}-"))
        float_path, calib_path, x, y, float_top1 = prepare(case, args.calib_count, work)
        print(f"\n== {case.label}: float top-1 {float_top1:.4f}, work dir {work}", flush=True)
        files: dict[str, Path] = {}
        if args.before:
            for fmt in args.formats:
                files.update(before_rows(Path(args.before), float_path, calib_path, fmt, work))
        t0 = time.perf_counter()
        for fmt in args.formats:
            files.update(ours(float_path, np.load(calib_path), fmt, work, args.methods, tag=f"ours-{fmt}"))
        print(f"  ours (stats + {len(args.methods)} methods x bias correction on/off): {time.perf_counter() - t0:.1f} s", flush=True)
        reuse = Path(args.reuse_peers) / case.label if args.reuse_peers else None
        files.update(peers(args.peers, float_path, calib_path, work, args.modelopt_python, reuse))
        ref = run_exact(float_path, x)
        rows = []
        for name, path in files.items():
            rows.append({"case": case.label, "name": name, **fidelity(ref, run_exact(path, x))})
        print_case(case, rows, float_top1)
        results.append({"case": case.label, "float_top1": float_top1, "rows": rows})
        if args.json:
            Path(args.json).write_text(json.dumps({"calib_count": args.calib_count, "formats": args.formats,
                                                   "executor": "onnxruntime ORT_DISABLE_ALL", "cases": results}, indent=1))


def print_case(case: Case, rows: list[dict], float_top1: float) -> None:
    best_peer = max((r for r in rows if not r["name"].startswith(("ours", "before"))), key=lambda r: r["sqnr_db"], default=None)
    print(f"{case.label} (float top-1 {float_top1:.4f}; best peer by SQNR: {best_peer['name'] if best_peer else '-'})")
    print(f"{'contender':<34}{'SQNR dB':>9}{'agreement':>11}{'cos mean':>10}{'cos min':>9}")
    for r in rows:
        print(f"{r['name']:<34}{r['sqnr_db']:>9.2f}{r['agreement']:>11.4f}{r['cosine_mean']:>10.5f}{r['cosine_min']:>9.4f}")


def thresholds(args: argparse.Namespace) -> None:
    """Our entropy vs ModelOpt's own calibrator, tensor by tensor, on one model's S8S8 tensors."""
    import onnx

    from edge_resnet.quant.calibrators import _kl_divergences, entropy
    from edge_resnet.quant.collect import _session, collect_statistics
    from edge_resnet.quant.qdq import QuantConfig, required_tensors
    from edge_resnet.types import ActivationFormat

    case = Case.parse(args.thresholds)
    work = Path(args.work or tempfile.mkdtemp(prefix="calthresholds-"))
    work.mkdir(parents=True, exist_ok=True)
    float_path, calib_path, _, _, _ = prepare(case, args.calib_count, work)
    model = onnx.load(str(float_path))
    tensors = required_tensors(model, QuantConfig(ActivationFormat.S8S8))
    calib = np.load(calib_path)
    stats = collect_statistics(model, tensors, (calib[i: i + CALIB_BATCH] for i in range(0, len(calib), CALIB_BATCH)), progress=False)
    dump = work / "dump"
    dump.mkdir(exist_ok=True)
    if not (dump / "names.json").exists():
        sess = _session(model, tensors, None)
        outs = [sess.run(tensors, {"input": calib[i: i + CALIB_BATCH]}) for i in range(0, len(calib), CALIB_BATCH)]
        for i in range(len(tensors)):
            np.save(dump / f"{i}.npy", np.concatenate([o[i] for o in outs]))
        (dump / "names.json").write_text(json.dumps(tensors))
        del outs
    worker = Path(__file__).with_name("modelopt_entropy_worker.py")
    variants = {"whole": 0, "streamed": CALIB_BATCH}
    theirs = {}
    for label, batch in variants.items():
        out = work / f"modelopt-{label}.json"
        subprocess.run([args.modelopt_python, str(worker), str(dump), str(out), "--batch", str(batch)], check=True)
        theirs[label] = json.loads(out.read_text())
    rows = []
    for i, t in enumerate(tensors):
        h = stats.hists[t]
        a = entropy(h)
        row = {"tensor": t, "signed": bool(h.min < 0), "max": h.amax, "ours": a}
        for label, res in theirs.items():
            row[f"modelopt_{label}"] = res[t]["amax"]
            row[f"bins_off_{label}"] = (a - res[t]["amax"]) / res[t]["bin_width"]
        # how close the two minima are: KL at both thresholds on the exact 2048-bin histogram of |x|
        exact, _ = np.histogram(np.abs(np.load(dump / f"{i}.npy")), 2048, range=(0.0, h.amax))
        exact = exact.astype(np.float64)
        exact[0] = exact[1]
        bins = [int(round(v * 2048 / h.amax)) for v in (a, theirs["whole"][t]["amax"])]
        kl = _kl_divergences(exact, np.clip(np.array(bins), 1, 2048), 128)
        row["kl_ours"], row["kl_modelopt"] = float(kl[0]), float(kl[1])
        rows.append(row)
    print(f"{'tensor':<28}{'signed':>7}{'max|x|':>8}{'ours':>8}{'MO whole':>9}{'bins':>6}{'MO stream':>10}{'bins':>6}"
          f"{'KL ours':>10}{'KL MO':>10}")
    for r in rows:
        print(f"{r['tensor'][-28:]:<28}{'yes' if r['signed'] else 'no':>7}{r['max']:>8.4f}{r['ours']:>8.4f}"
              f"{r['modelopt_whole']:>9.4f}{r['bins_off_whole']:>6.0f}{r['modelopt_streamed']:>10.4f}{r['bins_off_streamed']:>6.0f}"
              f"{r['kl_ours']:>10.6f}{r['kl_modelopt']:>10.6f}")
    within = sum(abs(r["bins_off_whole"]) <= 1 for r in rows)
    print(f"within one bin of ModelOpt (whole set): {within} of {len(rows)}; ModelOpt streamed vs whole within one bin: "
          f"{sum(abs(r['modelopt_streamed'] - r['modelopt_whole']) <= theirs['whole'][r['tensor']]['bin_width'] for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"case": case.label, "calib_count": args.calib_count, "rows": rows}, indent=1))


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing_worker(name: str, float_path: str, calib_path: str, out: str, fmt: str) -> None:
    calib = np.load(calib_path, mmap_mode="r")
    t0 = time.perf_counter()
    if name == "ort-minmax":
        ort_quantize("minmax", Path(float_path), calib, Path(out))
    else:
        import onnx

        from edge_resnet.graph.load import save_onnx
        from edge_resnet.quant.collect import collect_statistics
        from edge_resnet.quant.ptq import CalibrationOptions, quantize_graph
        from edge_resnet.quant.qdq import QuantConfig, required_tensors
        from edge_resnet.types import ActivationFormat

        model = onnx.load(float_path)
        config = QuantConfig(ActivationFormat(fmt))
        base, bc = name.removesuffix("+bc"), name.endswith("+bc")  # e.g. ours-default+bc, ours-entropy
        options = CalibrationOptions(**({} if base == "ours-default" else {"method": base.removeprefix("ours-")}),
                                     **({"bias_correction": True} if bc else {}))
        batches = (np.ascontiguousarray(calib[i: i + CALIB_BATCH]) for i in range(0, len(calib), CALIB_BATCH))
        stats = collect_statistics(model, required_tensors(model, config), batches, progress=False,
                                   bias_correction=options.bias_correction)
        save_onnx(quantize_graph(model, stats, config, options).model, out)
    print(json.dumps({"name": name, "seconds": time.perf_counter() - t0, "peak_rss_mb": _vm_hwm_mb()}))


def timing(args: argparse.Namespace) -> None:
    """Calibrate + quantize time and peak RSS, each run in a fresh process, rounds interleaved."""
    case = Case.parse(args.timing)
    work = Path(tempfile.mkdtemp(prefix="caltiming-"))
    float_path, calib_path, _, _, _ = prepare(case, min(args.counts), work)
    base = np.load(calib_path)
    rng = np.random.default_rng(0)
    results = []
    for count in args.counts:
        # digits:train has 1,257 images: larger sets repeat it with random shifts (fresh values)
        reps = [np.roll(base, tuple(rng.integers(-3, 4, 2)), axis=(2, 3)) for _ in range(-(-count // len(base)))]
        path = work / f"calib-{count}.npy"
        np.save(path, np.concatenate(reps)[:count])
        runs: dict[str, list[dict]] = {n: [] for n in args.timing_contenders}
        for rnd in range(args.rounds):
            for name in args.timing_contenders:
                proc = subprocess.run([sys.executable, __file__, "--timing-worker", name, str(float_path), str(path),
                                       str(work / f"{name}.onnx"), args.format], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[name].append(run)
                print(f"{count} images, round {rnd + 1}: {name:<16}{run['seconds']:8.2f} s {run['peak_rss_mb']:7.0f} MB", flush=True)
        for name, rs in runs.items():
            if rs:
                results.append({"count": count, "name": name, "seconds": float(np.median([r["seconds"] for r in rs])),
                                "seconds_all": [r["seconds"] for r in rs], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)})
    print(f"\n{case.label}, format {args.format}, median of {args.rounds} rounds")
    print(f"{'images':>7} {'contender':<16}{'time s':>8}{'x ORT MinMax':>14}{'peak MB':>9}{'x ORT MinMax':>14}")
    for r in results:
        b = next((q for q in results if q["count"] == r["count"] and q["name"] == "ort-minmax"), None)
        tr = f"{r['seconds'] / b['seconds']:.2f}x" if b else "-"
        mr = f"{r['peak_rss_mb'] / b['peak_rss_mb']:.2f}x" if b else "-"
        print(f"{r['count']:>7} {r['name']:<16}{r['seconds']:>8.2f}{tr:>14}{r['peak_rss_mb']:>9.0f}{mr:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"case": case.label, "format": args.format, "rows": results}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=["resnet18@32", "resnet50@32"])
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--peers", nargs="*", default=PEERS)
    ap.add_argument("--calib-count", type=int, default=512)
    ap.add_argument("--format", default="u8s8", help="our Q/DQ format for --timing")
    ap.add_argument("--formats", nargs="*", default=["s8s8", "u8s8"],
                    help="our Q/DQ formats in the matrix: s8s8 (TensorRT placement, vs ModelOpt) and u8s8 (vs ORT, NNCF)")
    ap.add_argument("--before", default=None, help="a source tree whose calibrators give the 'before' rows")
    ap.add_argument("--modelopt-python", default=MODELOPT_PYTHON)
    ap.add_argument("--reuse-peers", default=None, metavar="DIR",
                    help="DIR/<case>/ holds peer outputs of an earlier run on the same float graph: reuse them")
    ap.add_argument("--thresholds", default=None, metavar="CASE", help="compare entropy thresholds with ModelOpt's")
    ap.add_argument("--work", default=None, help="work dir for --thresholds (reused: the ModelOpt part resumes)")
    ap.add_argument("--timing", default=None, metavar="CASE", help="time and peak memory vs ORT MinMax")
    ap.add_argument("--counts", nargs="*", type=int, default=[512, 5000])
    ap.add_argument("--timing-contenders", nargs="*", default=["ours-default", "ours-entropy", "ort-minmax"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--before-worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--timing-worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.before_worker:
        fp, cp, fmt, out = args.before_worker
        files = ours(Path(fp), np.load(cp), fmt, Path(out), METHODS, tag=f"before-{fmt}")
        print(json.dumps({k: str(v) for k, v in files.items()}))
    elif args.timing_worker:
        timing_worker(*args.timing_worker)
    elif args.thresholds:
        thresholds(args)
    elif args.timing:
        timing(args)
    else:
        matrix(args)


if __name__ == "__main__":
    main()
