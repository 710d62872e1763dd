"""``edge-resnet demo``: the whole pipeline on the built-in real data, with nothing to download.

Trains a ResNet-18 on scikit-learn's digits (or reuses the cached one), compiles INT8 bundles for
``cpu`` (OpenVINO) and ``onnxruntime`` and prepares the ``jetson`` bundle, validates drift on
digits:test, benchmarks INT8 against FP32 on the same backend, and writes a report per bundle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_resnet.bench.latency import BenchOptions, Schedule
from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
from edge_resnet.data import DIGITS_CLASS_NAMES, open_dataset
from edge_resnet.train import DigitsRecipe, train_digits

log = logging.getLogger(__name__)

TARGETS = ("cpu", "onnxruntime", "jetson")


@dataclass
class DemoRow:
    target: str
    bundle: Path
    backend: str
    runnable: bool
    float_top1: float | None = None
    int8_top1: float | None = None
    agreement: float | None = None
    cosine_mean: float | None = None
    p50_ms_b1: float | None = None
    throughput_b8: float | None = None
    speedup_b1: float | None = None
    speedup_b8: float | None = None
    report: Path | None = None
    note: str = ""


@dataclass
class DemoResult:
    out: Path
    model_accuracy: float
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0


def run_demo(out: str | Path = "edge-resnet-demo", *, calib_count: int = 512, bench_seconds: float = 2.0,
             progress: bool = True, say: Callable[[str], None] = log.info) -> DemoResult:
    start = time.perf_counter()
    out = Path(out)
    recipe = DigitsRecipe()
    steps = 2 + len(TARGETS)
    say(f"[1/{steps}] training {recipe.model} on digits:train at {recipe.input_size}x{recipe.input_size} (cached after the first run)")
    trained = train_digits(recipe, progress=progress)
    say(f"      {100 * trained.test_accuracy:.2f}% top-1 on digits:test ({trained.checkpoint})")
    source = ModelSource(recipe.model, weights=str(trained.checkpoint), num_classes=10)
    result = DemoResult(out, trained.test_accuracy)
    for i, target in enumerate(TARGETS):
        say(f"[{2 + i}/{steps}] compiling int8 for {target}" + (", validating on digits:test, benchmarking int8 vs fp32"
                                                                  if target != "jetson" else ""))
        options = CompileOptions(target=target, calib="digits:train", calib_count=calib_count, spec=recipe.spec(),
                                 labels=tuple(DIGITS_CLASS_NAMES), force=True, progress=progress)
        compiled = compile_bundle(source, options, out / target, input_size=recipe.input_size)
        result.rows.append(_evaluate(compiled.bundle, target, bench_seconds, progress))
    say(f"[{steps}/{steps}] writing the summary")
    result.seconds = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary_dict(result), indent=2))
    return result


def _evaluate(bundle: Any, target: str, bench_seconds: float, progress: bool) -> DemoRow:
    from edge_resnet.bench.latency import benchmark
    from edge_resnet.report import write_report
    from edge_resnet.validate import validate_bundle

    art = bundle.artifact
    row = DemoRow(target, bundle.path, art.backend.value, art.runnable)
    if not row.runnable:
        row.note = art.info.get("how_to_build", "")
        return row
    data = open_dataset("digits:test", bundle.spec)
    validation = validate_bundle(bundle, data, progress=progress).to_json()
    bench = benchmark(bundle.path, BenchOptions(batches=(1, 8), schedule=Schedule(duration_s=bench_seconds), compare="fp32"))
    (bundle.path.parent / f"{target}.validation.json").write_text(json.dumps(validation, indent=2))
    (bundle.path.parent / f"{target}.bench.json").write_text(json.dumps(bench, indent=2))
    row.report = write_report(bundle.path.parent / f"{target}.report.html", bundle.manifest, validation, bench)
    m = validation["metrics"]
    row.float_top1, row.int8_top1 = m["float_top1"], m["int8_top1"]
    row.agreement, row.cosine_mean = m["agreement_top1"], m["cosine_mean"]
    by_batch = {r["batch"]: r for r in bench["results"]}
    row.p50_ms_b1 = by_batch[1]["latency_ms"]["p50"]
    row.throughput_b8 = by_batch[8]["throughput_ips"]
    speedup = (bench.get("compare") or {}).get("speedup", {})
    row.speedup_b1, row.speedup_b8 = speedup.get("1"), speedup.get("8")
    return row


def summary_dict(result: DemoResult) -> dict[str, Any]:
    return {"out": str(result.out), "model": "resnet18 trained on digits:train", "float_test_accuracy": result.model_accuracy,
            "seconds": result.seconds,
            "bundles": [{k: (str(v) if isinstance(v, Path) else v) for k, v in row.__dict__.items()} for row in result.rows]}


def format_summary(result: DemoResult) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        f"ResNet-18 trained on digits:train (1,257 real handwritten digits); float top-1 on digits:test {pct(result.model_accuracy)}",
        "",
        f"{'target':<13}{'backend':<13}{'float top1':>11}{'int8 top1':>11}{'agree':>9}{'cosine':>9}"
        f"{'p50 b1 ms':>11}{'img/s b8':>10}{'x fp32 b1':>10}{'x fp32 b8':>10}",
    ]
    for r in result.rows:
        if not r.runnable:
            lines.append(f"{r.target:<13}{r.backend:<13}  prepared, not built here: {r.note}")
            continue
        lines.append(f"{r.target:<13}{r.backend:<13}{pct(r.float_top1):>11}{pct(r.int8_top1):>11}{pct(r.agreement):>9}"
                     f"{num(r.cosine_mean, '.5f'):>9}{num(r.p50_ms_b1, '.3f'):>11}{num(r.throughput_b8, '.0f'):>10}"
                     f"{num(r.speedup_b1, '.2f'):>10}{num(r.speedup_b8, '.2f'):>10}")
    lines.append("")
    lines.append("fp32 baselines run on the same backend (OpenVINO with INFERENCE_PRECISION_HINT=f32), interleaved with int8.")
    for r in result.rows:
        lines.append(f"  {r.target:<12} bundle {r.bundle}" + (f"   report {r.report}" if r.report else ""))
    lines.append(f"  summary      {result.out / 'summary.json'}   ({result.seconds:.0f} s in all)")
    return "\n".join(lines)
