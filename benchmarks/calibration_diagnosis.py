"""Why mse falls behind max on a case of calibration_matrix.py: which tensors' ranges cost the most at the logits,
and what a floor on mse's range under the observed max would give.

    python benchmarks/calibration_diagnosis.py --case resnet18@64 --swap s8s8
    python benchmarks/calibration_diagnosis.py --case resnet18@64 --case resnet18@32 --floors 0.85 0.9 0.95

Same preparation and exact executor as calibration_matrix.py (digits-trained model, 512 calibration images, the
540 held-out images, ONNX Runtime with graph optimizations off), bias correction off so only the ranges differ.
``--swap FMT``: our mse graph with one tensor at a time given its minmax range instead; the SQNR change per tensor.
``--floors``: every tensor's range max(mse, p * minmax), per format.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import calibration_matrix as cm  # noqa: E402


def _setup(case: cm.Case, work: Path, fmt: str) -> tuple:
    import onnx

    from edge_resnet.quant import ptq
    from edge_resnet.quant.collect import collect_statistics
    from edge_resnet.quant.qdq import QuantConfig, required_tensors
    from edge_resnet.types import ActivationFormat

    float_path, calib_path, x, _y, _acc = cm.prepare(case, 512, work)
    calib = np.load(calib_path)
    model = onnx.load(str(float_path))
    config = QuantConfig(ActivationFormat(fmt))
    stats = collect_statistics(model, required_tensors(model, config),
                               (calib[i: i + cm.CALIB_BATCH] for i in range(0, len(calib), cm.CALIB_BATCH)),
                               progress=False)
    mse = ptq.calibrated_quantizers(model, stats, config, ptq.CalibrationOptions(method="mse", bias_correction=False))
    mm = ptq.calibrated_quantizers(model, stats, config, ptq.CalibrationOptions(method="minmax", bias_correction=False))
    return model, config, cm.run_exact(float_path, x), x, mse, mm


def _score(model, config, ref, x, amax, ranges, work: Path) -> dict:
    import onnx

    from edge_resnet.quant.qdq import insert_qdq

    q, _ = insert_qdq(model, amax, config, ranges)
    path = work / "q.onnx"
    onnx.save(q, path)
    f = cm.fidelity(ref, cm.run_exact(path, x))
    return {"sqnr_db": round(f["sqnr_db"], 2), "agreement": round(f["agreement"] * len(x))}


def swap(case: cm.Case, fmt: str, work: Path) -> dict:
    model, config, ref, x, (a_mse, r_mse), (a_mm, r_mm) = _setup(case, work, fmt)
    base = _score(model, config, ref, x, a_mse, r_mse, work)
    rows = []
    for t in a_mse:
        a, r = dict(a_mse), dict(r_mse)
        a[t] = a_mm[t]
        if t in r_mm:
            r[t] = r_mm[t]
        else:
            r.pop(t, None)
        s = _score(model, config, ref, x, a, r, work)
        rows.append({"tensor": t, "mse_over_max": round(a_mse[t] / a_mm[t], 3),
                     "delta_db": round(s["sqnr_db"] - base["sqnr_db"], 2)})
        print(f"{rows[-1]['delta_db']:+6.2f} dB  {t}  (mse/max {rows[-1]['mse_over_max']})", flush=True)
    return {"case": case.label, "format": fmt, "mse": base,
            "minmax": _score(model, config, ref, x, a_mm, r_mm, work), "tensors": rows}


def floors(case: cm.Case, ps: list[float], work: Path) -> dict:
    out = {"case": case.label}
    for fmt in ("s8s8", "u8s8"):
        model, config, ref, x, (a_mse, r_mse), (a_mm, r_mm) = _setup(case, work, fmt)
        res = {"mse": _score(model, config, ref, x, a_mse, r_mse, work),
               "minmax": _score(model, config, ref, x, a_mm, r_mm, work)}
        for p in ps:
            a = {t: max(v, p * a_mm[t]) for t, v in a_mse.items()}
            r = {t: (min(lo, p * r_mm[t][0]), max(hi, p * r_mm[t][1])) for t, (lo, hi) in r_mse.items()}
            res[f"max(mse, {p} x max)"] = _score(model, config, ref, x, a, r, work)
        out[fmt] = res
        print(case.label, fmt, res, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--swap", default=None, metavar="FORMAT")
    ap.add_argument("--floors", nargs="*", type=float, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.case):
            case, work = cm.Case.parse(text), Path(tmp) / str(i)
            work.mkdir()
            if args.swap:
                report.append(swap(case, args.swap, work))
            if args.floors:
                report.append(floors(case, args.floors, work))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
