from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)


def read_json(path: str | None, what: str, produced_by: str) -> dict[str, Any] | None:
    from edge_resnet.errors import EdgeResnetError

    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeResnetError(f"cannot read the {what} JSON {path}: {exc}", f"write it again with {produced_by}") from exc
    if not isinstance(data, dict):
        raise EdgeResnetError(f"the {what} JSON {path} is not an object", f"write it again with {produced_by}")
    return data


@click.command("report")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--validation", "validation_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Results of edge-resnet validate (JSON).")
@click.option("--bench", "bench_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Results of edge-resnet bench --json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True)
def report(bundle: str, validation_path: str | None, bench_path: str | None, output: str) -> None:
    """Write a self-contained HTML report of a bundle: accuracy drift, per-layer error, latency."""
    from edge_resnet.bundle import load_bundle
    from edge_resnet.report import write_report

    b = load_bundle(bundle)
    validation = read_json(validation_path, "validation", "edge-resnet validate")
    bench = read_json(bench_path, "bench", "edge-resnet bench --json")
    if bench and bench.get("artifact") and Path(bench["artifact"]).resolve() != b.path.resolve():
        log.warning("the bench results are for %s, not for this bundle (%s)", bench["artifact"], b.path)
    path = write_report(output, b.manifest, validation, bench)
    click.echo(f"wrote {path}")
