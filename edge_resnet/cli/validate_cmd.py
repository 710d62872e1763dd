"""``edge-resnet validate``: the bundle's artifact against its float model on real data."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import click

from edge_resnet.cli.options import finite_points, ray_options
from edge_resnet.errors import BudgetExceeded, EdgeResnetError

WORST_LAYERS = 5


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:6.2f}%"


def _pts(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} pts"


def format_table(result: Any, worst: int = WORST_LAYERS) -> list[str]:
    """The compact text summary of a ValidationResult (also used by compile --max-drop)."""
    m = result.metrics
    lines = [f"bundle    {result.bundle}",
             f"artifact  {result.target}: {result.backend} {result.device}, {result.precision}",
             f"data      {result.source}: {result.count} images, {'labelled' if result.labelled else 'no labels'}",
             "reference onnxruntime fp32 (model.float.onnx)", ""]
    if m.float_top1 is not None:
        lines.append(f"{'':<16}{'float':>9}{result.precision:>9}{'drop':>12}")
        lines.append(f"{'top-1':<16}{_pct(m.float_top1):>9}{_pct(m.int8_top1):>9}{_pts(m.top1_drop_points):>12}")
        if m.float_top5 is not None:
            lines.append(f"{'top-5':<16}{_pct(m.float_top5):>9}{_pct(m.int8_top5):>9}{_pts(m.top5_drop_points):>12}")
    if m.agreement_top1 is not None:
        lines.append(f"{'agreement':<16}{_pct(m.agreement_top1):>18}")
    lines.append(f"{'cosine mean/min':<16}{m.cosine_mean:>9.4f}{m.cosine_min:>9.4f}")
    lines.append(f"{'SQNR':<16}{m.sqnr_db:>15.1f} dB")
    if result.per_layer:
        lines += ["", f"worst layers (SQNR vs float, Q/DQ graph in ONNX Runtime; {len(result.per_layer)} layers)"]
        lines += [f"  {e.layer:<28}{e.op:<6}{e.sqnr_db:>7.1f} dB" for e in result.per_layer[:worst]]
    if result.kept_float:
        lines.append(f"kept float: {', '.join(result.kept_float)}")
    if result.budget is not None:
        lines += ["", f"budget    {result.budget.describe()}"]
    return lines


def _report_writer() -> Any:
    """edge_resnet.report.write_report, or a clear error when that module is not there."""
    try:
        module = importlib.import_module("edge_resnet.report")
    except ModuleNotFoundError as exc:
        if exc.name in ("edge_resnet.report", None):
            raise EdgeResnetError("--report needs the edge_resnet.report module, which is not available in this "
                                  "installation", "drop --report and keep --json, or update edge-resnet") from exc
        raise EdgeResnetError(f"the report module needs {exc.name}, which is not installed",
                              "pip install 'edge-resnet[report]'") from exc
    writer = getattr(module, "write_report", None)
    if writer is None:
        raise EdgeResnetError("edge_resnet.report has no write_report function", "update edge-resnet")
    return writer


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "source", required=True, help="Validation images (folder, list, .npy/.npz, video, digits:test).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Validate on a (stratified) sample of N images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --count sample.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the validation JSON here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write an HTML report here.")
@click.option("--max-drop", type=float, default=None, callback=finite_points,
              help="Fail (exit 3) above this many points of top-1 drop (labelled data) or of disagreement.")
@click.option("--no-per-layer", is_flag=True, help="Skip the per-layer error (faster).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@ray_options
def validate(bundle_dir: str, source: str, count: int | None, seed: int, batch_size: int, json_path: str | None,
             report_path: str | None, max_drop: float | None, no_per_layer: bool, no_progress: bool,
             ray_cluster: str | None = None, ray_actors: int | None = None) -> None:
    """Compare a bundle's artifact with its float model (ONNX Runtime FP32) on real data."""
    from edge_resnet.bundle import load_bundle
    from edge_resnet.data import open_dataset
    from edge_resnet.distributed.cluster import check_ray
    from edge_resnet.outputs import check_distinct, check_output, writing
    from edge_resnet.validate.run import validate_bundle

    ray = check_ray(ray_cluster, ray_actors)

    write_report = _report_writer() if report_path else None  # fail before the long run
    check_distinct({"--json": json_path, "--report": report_path})
    for option, path in (("--json", json_path), ("--report", report_path)):
        check_output(path, option, inputs={"--data": source}, bundles={"BUNDLE": bundle_dir})
    bundle = load_bundle(bundle_dir)
    data = open_dataset(source, bundle.spec, count=count, seed=seed)
    result = validate_bundle(bundle, data, max_drop=max_drop, per_layer=not no_per_layer,
                             progress=not no_progress, batch_size=batch_size, ray=ray)
    for line in format_table(result):
        click.echo(line)
    doc = result.to_json()
    if json_path:
        click.echo(f"wrote {result.write_json(json_path)}")
    if write_report is not None:
        with writing(report_path):
            write_report(Path(report_path), manifest=bundle.manifest, validation=doc, bench=None)
        click.echo(f"wrote {report_path}")
    if result.budget is not None and not result.budget.passed:
        raise BudgetExceeded(f"drift over budget: {result.budget.describe()}",
                             "see the worst layers above; compile with --max-drop to keep the most sensitive "
                             "layers float, or calibrate on more representative data")
