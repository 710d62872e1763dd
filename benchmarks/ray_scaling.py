"""Batch inference on Ray: images/s of the local run vs ``--ray`` (1 and 2 actors, one node; 2 nodes).

    python benchmarks/ray_scaling.py [--model resnet50] [--input-size 128] [--images 512] [--rounds 2]

Setup (in --workdir): ``--model`` (random weights, INT8 from ``--calib random``: the cost of inference
does not depend on the weights) compiled for the ``onnxruntime`` target; ``--images`` PNG files
(digits:test drawn at the input size).

1. One node (a local cluster in this process, 2 CPUs), rounds interleaved:
   * local: ``edge-resnet run`` without Ray, i.e. ``model.stream(folder)`` in throughput mode (one
     single-threaded ONNX Runtime session per core) — the baseline;
   * ``--ray local`` with 1 and with 2 actors (one CPU each): ``run_batch`` end to end (actor start,
     bundle shipped and checked, results written to a .parquet file) and its steady state (from the
     first batch back to the last).
2. Two nodes on this machine: ``ray start --head --port P --num-cpus 1`` and ``ray start --address
   127.0.0.1:P --num-cpus 1`` (other ports), then the same batch run with 2 actors (one per node) from
   a driver process that joins with ``--ray 127.0.0.1:P``; the local baseline again beside it. The
   nodes are stopped at the end by the ids of the processes they started (never ``ray stop``, which
   would take down other users' clusters too).
3. The driver's own cost per image: merging a batch's results (ordering, the parquet writer), the
   validation metrics' merge and a ResNet's calibration histograms' merge per batch.

Results: printed, and written to ``results/ray_scaling_<model>.json``. No thresholds: ratios only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ray_scaling")
HERE = Path(__file__).resolve().parent
BATCH = 16


def compile_bundle(out: Path, model: str, size: int) -> Path:
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-c", "from edge_resnet.cli import main; main()", "-q", "compile", "--model", model,
           "--num-classes", "1000", "--input-size", str(size), "--resize", str(size), "--target", "onnxruntime",
           "--calib", "random", "--calib-count", "32", "-o", str(out)]
    log.info("compiling %s", out)
    subprocess.run(cmd, check=True)
    return out


def make_images(folder: Path, count: int, size: int) -> Path:
    from PIL import Image

    from edge_resnet.data import load_digits_split

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == count:
        return folder
    digits, _ = load_digits_split("test")
    for i in range(count):
        d = digits[i % len(digits)]
        d = d.reshape(d.shape[0], d.shape[1], -1)[..., 0]
        d = np.repeat(np.repeat(d, -(-size // 8), 0), -(-size // 8), 1)[:size, :size]
        Image.fromarray(np.stack([d, 255 - d, d // 2], axis=2).astype(np.uint8)).save(folder / f"img{i:05d}.png")
    return folder


# ------------------------------------------------------------------------------------------- contenders


def run_local(bundle: Path, folder: Path) -> dict[str, float]:
    import edge_resnet.runtime as rt

    with rt.load(bundle) as model:
        t = time.perf_counter()
        with model.stream(str(folder), top_k=5) as results:
            n = sum(1 for _ in results)
        dt = time.perf_counter() - t
    return {"images": n, "seconds": dt, "per_s": n / dt}


def run_ray(bundle: Path, folder: Path, cluster: str, actors: int, out: Path) -> dict[str, float]:
    from edge_resnet.distributed.batch_run import run_batch
    from edge_resnet.distributed.cluster import RayOptions

    stamps: list[float] = []
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    s = run_batch(bundle, str(folder), out, RayOptions(cluster, actors=actors), batch_size=BATCH, progress=False,
                  on_batch=lambda seq: stamps.append(time.perf_counter()))
    dt = time.perf_counter() - t
    steady = (s.items - BATCH) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return {"images": s.items, "seconds": dt, "per_s": s.items / dt, "steady_per_s": steady, "nodes": s.nodes,
            "actors": s.actors, "startup_s": stamps[0] - t if stamps else float("nan")}


# --------------------------------------------------------------------------------------- driver costs


def driver_costs(bundle: Path) -> dict[str, float]:
    """Microseconds per image the driver spends on merging (batches of BATCH)."""
    from edge_resnet.distributed.actors import add_confusion, sparse_confusion
    from edge_resnet.distributed.merge import InOrder
    from edge_resnet.distributed.output import ParquetWriter
    from edge_resnet.graph.load import load_onnx
    from edge_resnet.quant.histogram import STATS_NUM_BINS, StreamingHistogram
    from edge_resnet.quant.qdq import QuantConfig, required_tensors
    from edge_resnet.validate.metrics import StreamingMetrics

    rng = np.random.default_rng(0)
    batches = 200
    with tempfile.TemporaryDirectory() as tmp:
        writer = ParquetWriter(Path(tmp) / "r.parquet")
        idx = np.argsort(-rng.standard_normal((BATCH, 1000)), axis=1)[:, :5]
        cols = {"source": [f"/data/images/img{i:05d}.png" for i in range(BATCH)], "frame": np.zeros(BATCH, np.int64),
                "indices": idx, "scores": rng.random((BATCH, 5)), "labels": [[str(j) for j in r] for r in idx.tolist()]}
        order = InOrder(batches)
        t = time.perf_counter()
        for seq in range(batches):
            for _ in order.push(seq, None):
                writer.write(cols)
        writer.abort()
        write_us = (time.perf_counter() - t) / (batches * BATCH) * 1e6

    parts = []
    for _ in range(batches):  # what a ValidateActor returns for a batch of a 1000-class model
        m = StreamingMetrics(1000)
        ref = rng.standard_normal((BATCH, 1000))
        m.update(ref, ref + 0.01, rng.integers(0, 1000, BATCH))
        parts.append((m, sparse_confusion(m)))
    total = StreamingMetrics(1000)
    t = time.perf_counter()
    for m, cells in parts:
        total.merge(m)
        add_confusion(total, cells)
    metrics_us = (time.perf_counter() - t) / (batches * BATCH) * 1e6

    model = load_onnx(bundle / "model.float.onnx")
    tensors = required_tensors(model, QuantConfig())
    hists = []
    for _ in range(20):
        part = {}
        for name in tensors:
            h = StreamingHistogram(STATS_NUM_BINS, name=name)  # the calibration pass's bins
            h.update(rng.standard_normal(256).astype(np.float32) * rng.uniform(0.5, 4))
            part[name] = h
        hists.append(part)
    merged = {name: StreamingHistogram(STATS_NUM_BINS, name=name) for name in tensors}
    t = time.perf_counter()
    for part in hists:
        for name, h in part.items():
            merged[name].merge(h)
    hist_us = (time.perf_counter() - t) / (len(hists) * BATCH) * 1e6
    return {"batch_run_write_us_per_image": write_us, "validate_merge_us_per_image": metrics_us,
            "calibration_merge_us_per_image": hist_us, "calibration_tensors": len(tensors)}


# ---------------------------------------------------------------------------------------- two nodes


def _pids_of(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


class TwoNodes:
    """Two Ray nodes on this machine from `ray start`, with their own temp dir (to find their processes)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.temp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
        self.ray = str(Path(sys.executable).parent / "ray")

    def __enter__(self) -> TwoNodes:
        env = {**os.environ, "RAY_ADDRESS": ""}
        head = [self.ray, "start", "--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false",
                f"--temp-dir={self.temp}", "--node-manager-port=6391", "--object-manager-port=6392",
                "--min-worker-port=20000", "--max-worker-port=20099", "--object-store-memory=200000000"]
        second = [self.ray, "start", f"--address=127.0.0.1:{self.port}", "--num-cpus=1",
                  "--node-manager-port=6393", "--object-manager-port=6394", "--min-worker-port=20100",
                  "--max-worker-port=20199", "--object-store-memory=200000000",
                  "--dashboard-agent-listen-port=52366", "--dashboard-agent-grpc-port=52367",
                  "--metrics-export-port=52368", "--runtime-env-agent-port=52369"]
        for cmd in (head, second):
            log.info("+ %s", " ".join(cmd))
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _pids_of(str(self.temp))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not pids:
                break
            time.sleep(3)
        left = _pids_of(str(self.temp))
        if left:
            log.warning("ray processes still running: %s", left)


def two_node_round(bundle: Path, folder: Path, address: str, out: Path) -> dict[str, float]:
    """One batch run from a fresh driver process joining the two-node cluster."""
    call = f"rs.run_ray(Path({str(bundle)!r}), Path({str(folder)!r}), {address!r}, 2, Path({str(out)!r}))"
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import ray_scaling as rs; "
            f"from pathlib import Path; print('RESULT', json.dumps({call}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"two-node round failed:\n{p.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=6390)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edge-resnet-ray-scaling")
    ap.add_argument("--skip-two-nodes", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import ray

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    bundle = compile_bundle(wd / f"{args.model}-{args.input_size}-ort", args.model, args.input_size)
    folder = make_images(wd / f"images-{args.input_size}-{args.images}", args.images, args.input_size)
    results: dict[str, Any] = {"model": args.model, "input_size": args.input_size, "images": args.images,
                               "batch": BATCH, "cores": os.cpu_count(), "load_before": os.getloadavg()}

    t = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    results["local_cluster_start_s"] = time.perf_counter() - t
    one_node: dict[str, list[dict[str, float]]] = {"local": [], "ray_local_1_actor": [], "ray_local_2_actors": []}
    for r in range(args.rounds):
        one_node["local"].append(run_local(bundle, folder))
        one_node["ray_local_1_actor"].append(run_ray(bundle, folder, "local", 1, wd / "r1.parquet"))
        one_node["ray_local_2_actors"].append(run_ray(bundle, folder, "local", 2, wd / "r2.parquet"))
        log.info("round %d: %s", r, {k: round(v[-1]["per_s"], 1) for k, v in one_node.items()})
    ray.shutdown()
    results["one_node"] = one_node

    if not args.skip_two_nodes:
        two: dict[str, list[dict[str, float]]] = {"local": [], "ray_two_nodes_2_actors": []}
        with TwoNodes(args.port):
            for r in range(args.rounds):
                two["local"].append(run_local(bundle, folder))
                two["ray_two_nodes_2_actors"].append(
                    two_node_round(bundle, folder, f"127.0.0.1:{args.port}", wd / "r3.parquet"))
                log.info("two nodes, round %d: %s", r, {k: round(v[-1]["per_s"], 1) for k, v in two.items()})
        results["two_nodes"] = two
    results["driver"] = driver_costs(bundle)
    results["load_after"] = os.getloadavg()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in rows)

    print(f"\n{args.model} at {args.input_size}, {args.images} PNG images, batch {BATCH}; medians of {args.rounds}")
    print(f"{'contender':<28}{'img/s':>9}{'x local':>9}{'steady img/s':>14}{'start s':>9}{'nodes':>7}")
    for group in ("one_node", "two_nodes"):
        rows = results.get(group)
        if not rows:
            continue
        base = med(rows["local"], "per_s")
        for name, runs in rows.items():
            steady = med(runs, "steady_per_s") if "steady_per_s" in runs[0] else float("nan")
            start = med(runs, "startup_s") if "startup_s" in runs[0] else float("nan")
            nodes = runs[0].get("nodes", 1)
            print(f"{group + ': ' + name:<28}{med(runs, 'per_s'):>9.1f}{med(runs, 'per_s') / base:>9.2f}"
                  f"{steady:>14.1f}{start:>9.1f}{nodes:>7}")
    d = results["driver"]
    print(f"driver: batch-run ordering + parquet {d['batch_run_write_us_per_image']:.1f} us/img, validation merge "
          f"{d['validate_merge_us_per_image']:.2f} us/img, calibration merge ({d['calibration_tensors']} tensors) "
          f"{d['calibration_merge_us_per_image']:.1f} us/img")
    out = HERE / "results" / f"ray_scaling_{args.model}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
