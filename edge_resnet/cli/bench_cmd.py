from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

# kept literal so `--help` does not import the benchmark (and numpy, backends); checked again in benchmark()
MODES = ("latency", "throughput")
COMPARE = ("fp32",)
STAT_COLUMNS = ("min", "mean", "p50", "p90", "p99", "max")


def parse_batches(ctx: click.Context | None, param: click.Parameter | None, value: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,8") from None
    if not batches or any(b < 1 for b in batches):
        raise click.BadParameter(f"batch sizes must be positive integers, got {value!r}")
    return batches


def _rows(label: str, results: list[dict[str, Any]]) -> list[str]:
    lines = [label]
    for r in results:
        lat = r["latency_ms"]
        stats = "".join(f"{lat[k]:>9.3f}" for k in STAT_COLUMNS)
        lines.append(f"  {r['batch']:>5}{r['iterations']:>7}{stats}{r['throughput_ips']:>11.1f}{r['load_s']:>9.3f}")
    return lines


def format_table(result: dict[str, Any]) -> list[str]:
    """The bench JSON as text lines: one table per subject, speed-ups, the pipeline."""
    env = result["environment"]
    threads = env.get("threads") or "default"
    requests = result["results"][0].get("requests", "sync") if result["results"] else "sync"
    lines = [
        f"{result['artifact']}: {result['backend']} {result['device']} {result['precision']}",
        f"mode {result['mode']} (hint {env['hint']}, {requests} requests), threads {threads}, "
        f"inference precision {env['inference_precision']}, cpu {env.get('cpu')}",
        "  batch  iters" + "".join(f"{k:>9}" for k in STAT_COLUMNS) + "      img/s   load s   (latency in ms)",
    ]
    lines += _rows(result["precision"], result["results"])
    compare = result.get("compare")
    if compare:
        lines += _rows(f"{compare['label']}: {compare['note']}", compare["results"])
        ups = "  ".join(f"b{b} {s:.2f}x" for b, s in compare["speedup"].items())
        lines.append(f"speed-up {result['precision']} vs {compare['label']} (throughput ratio, interleaved): {ups}")
    pipe = result.get("pipeline")
    if pipe:
        stages = "  ".join(f"{k} {v:.3f}" for k, v in pipe["stages_ms"].items())
        decode = "" if pipe.get("decoded", True) else " (in-memory frames: decode = copy)"
        top1 = f", top-1 {pipe['top1']:.3f}" if pipe.get("top1") is not None else ""
        lines.append(f"pipeline, {pipe['frames']} frames of {pipe['source']}{decode}, ms/frame: {stages}")
        lines.append(f"  end to end {pipe['frame_ms']['mean']:.3f} ms/frame = {pipe['fps']:.1f} FPS{top1}")
    return lines


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Atomically: a reader never sees half a file."""
    from edge_resnet.outputs import atomic_write_text

    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")


@click.command("bench")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--batch", "batches", default="1,8", show_default=True, callback=parse_batches,
              help="Comma-separated batch sizes.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Measured iterations per batch size (default: --time 3).")
@click.option("--time", "duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of measurement per batch size (at least 10 iterations).")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Iterations run first and discarded.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the backend's).")
@click.option("--mode", type=click.Choice(MODES), default="latency", show_default=True,
              help="latency: synchronous requests, LATENCY hint; throughput: asynchronous requests, THROUGHPUT hint.")
@click.option("--compare", type=click.Choice(COMPARE), default=None,
              help="Also measure the bundle's float model on the same backend and device, interleaved.")
@click.option("--pipeline", is_flag=True, help="Also time decode/preprocess/infer/postprocess on real frames.")
@click.option("--frames", default="digits:test", show_default=True, help="Frames for --pipeline (images, video, ...).")
@click.option("--frame-count", type=click.IntRange(min=1), default=200, show_default=True,
              help="Frames timed by --pipeline (after --warmup frames).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every number here.")
def bench(artifact: str, batches: tuple[int, ...], iters: int | None, duration: float | None, warmup: int,
          threads: int | None, mode: str, compare: str | None, pipeline: bool, frames: str, frame_count: int,
          json_path: str | None) -> None:
    """Latency, throughput and cold start of a bundle, or of a bare .onnx (ONNX Runtime) or .xml (OpenVINO)."""
    from edge_resnet.bench import BenchOptions, Mode, Schedule, benchmark, bundle_pipeline
    from edge_resnet.outputs import check_output

    is_dir = Path(artifact).is_dir()
    weights = str(Path(artifact).with_suffix(".bin")) if artifact.lower().endswith(".xml") else None
    check_output(json_path, "--json", inputs={"ARTIFACT": None if is_dir else artifact, "ARTIFACT's .bin": weights,
                                              "--frames": frames}, bundles={"ARTIFACT": artifact if is_dir else None})
    options = BenchOptions(batches, Schedule(iters, duration, warmup), threads, Mode(mode), compare)
    hook = bundle_pipeline(frames, frame_count, warmup, threads) if pipeline else None
    result = benchmark(artifact, options, pipeline=hook)
    for line in format_table(result):
        click.echo(line)
    if json_path:
        click.echo(f"wrote {write_json(json_path, result)}")
