"""Run in a ModelOpt venv (see calibration_matrix.py --thresholds): ModelOpt's own entropy
calibrator on activations dumped by calibration_matrix.py.

    python modelopt_entropy_worker.py DUMP_DIR OUT.json [--batch 32]

DUMP_DIR holds one ``<i>.npy`` per tensor (all calibration images, in order) and ``names.json``.
Per tensor: HistogramCalibrator.collect over batches of ``--batch`` images (as ModelOpt streams
them; 0 = the whole set in one call), then compute_amax("entropy") at stride 1.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from modelopt.torch.quantization.calib.histogram import HistogramCalibrator

ap = argparse.ArgumentParser()
ap.add_argument("dump")
ap.add_argument("out")
ap.add_argument("--batch", type=int, default=0)
args = ap.parse_args()
names = json.loads((Path(args.dump) / "names.json").read_text())
out_path = Path(args.out)
done = json.loads(out_path.read_text()) if out_path.exists() else {}
for i, name in enumerate(names):
    if name in done:
        continue
    x = np.load(Path(args.dump) / f"{i}.npy", mmap_mode="r")
    c = HistogramCalibrator(num_bits=8, unsigned=False)
    step = args.batch or len(x)
    for s in range(0, len(x), step):
        c.collect(torch.from_numpy(np.ascontiguousarray(x[s:s + step])))
    t0 = time.time()
    amax = float(c.compute_amax("entropy"))
    done[name] = {"amax": amax, "bins": int(c._calib_hist.numel()), "bin_width": float(c._calib_bin_edges[1] - c._calib_bin_edges[0]),
                  "seconds": time.time() - t0}
    out_path.write_text(json.dumps(done, indent=1))
    print(f"{i + 1}/{len(names)} {name}: {amax:.6g} ({time.time() - t0:.0f} s)", flush=True)
