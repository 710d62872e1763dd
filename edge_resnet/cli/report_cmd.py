from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 << 20  # a validation JSON with a 1000-class confusion matrix is a few MB
_NUMBER = (int, float)


def read_json(path: str | None, what: str, produced_by: str) -> dict[str, Any] | None:
    from edge_resnet.errors import EdgeResnetError

    if path is None:
        return None
    try:
        size = Path(path).stat().st_size
        if size > MAX_JSON_BYTES:
            raise EdgeResnetError(f"the {what} JSON {path} is {size / 2**20:.0f} MiB, far more than {produced_by} "
                                  "writes", f"pass the file written by {produced_by}")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EdgeResnetError(f"cannot read the {what} JSON {path}: {exc}", f"write it again with {produced_by}") from exc
    if not isinstance(data, dict):
        raise EdgeResnetError(f"the {what} JSON {path} is not an object", f"write it again with {produced_by}")
    return data


def _shape_error(what: str, path: str, problem: str, produced_by: str) -> Exception:
    from edge_resnet.errors import EdgeResnetError

    return EdgeResnetError(f"{path} is not {what} JSON: {problem}", f"pass the file written by {produced_by}")


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool))


def check_validation_json(data: dict[str, Any], path: str) -> None:
    """The keys and types the report reads from `edge-resnet validate --json`."""
    by = "edge-resnet validate --json"
    if "results" in data and "metrics" not in data:
        raise _shape_error("a validation", path, "it looks like the output of edge-resnet bench --json (pass it with "
                           "--bench)", by)
    for key, types in (("metrics", (dict,)), ("data", (dict,)), ("bundle", (str,))):
        if not isinstance(data.get(key), types):
            raise _shape_error("a validation", path, f"'{key}' is missing or of the wrong type", by)
    bad = [k for k, v in data["metrics"].items() if not _is_number(v)]
    if bad:
        raise _shape_error("a validation", path, f"metrics {', '.join(bad[:5])} are not numbers", by)
    for key in ("per_layer", "per_class"):
        if data.get(key) is not None and not (isinstance(data[key], list) and all(isinstance(e, dict) for e in data[key])):
            raise _shape_error("a validation", path, f"'{key}' is not a list of objects", by)
    if data.get("confusion") is not None and not isinstance(data["confusion"], dict):
        raise _shape_error("a validation", path, "'confusion' is not an object", by)


def check_bench_json(data: dict[str, Any], path: str) -> None:
    """The keys and types the report reads from `edge-resnet bench --json`."""
    by = "edge-resnet bench --json"
    if "metrics" in data and "results" not in data:
        raise _shape_error("a bench", path, "it looks like the output of edge-resnet validate --json (pass it with "
                           "--validation)", by)
    if not isinstance(data.get("artifact"), str) or not isinstance(data.get("results"), list):
        raise _shape_error("a bench", path, "'artifact' or 'results' is missing or of the wrong type", by)
    sections = [data["results"]] + ([data["compare"]["results"]] if isinstance(data.get("compare"), dict) else [])
    for results in sections:
        for r in results if isinstance(results, list) else [None]:
            if (not isinstance(r, dict) or not isinstance(r.get("batch"), int) or not isinstance(r.get("latency_ms"), dict)
                    or not all(_is_number(v) for v in r["latency_ms"].values())
                    or not _is_number(r.get("throughput_ips"))):
                raise _shape_error("a bench", path, "a result lacks its batch, latency_ms or throughput_ips", by)


def check_same_bundle(data: dict[str, Any], path: str, bundle: Any, key: str, what: str) -> None:
    """Results of another bundle are refused (by the bundle's integrity hash, when the JSON records it)."""
    from edge_resnet.errors import EdgeResnetError

    digest = data.get("bundle_sha256")
    where = data.get(key)
    if digest is not None:
        if digest != bundle.digest:
            raise EdgeResnetError(f"{path} holds the {what} of another bundle ({where}), not of {bundle.path}",
                                  f"pass the {what} JSON of this bundle, or report on {where}")
        return
    if where and Path(str(where)).resolve() != bundle.path.resolve():
        log.warning("the %s results in %s are for %s, not for this bundle (%s)", what, path, where, bundle.path)


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
    from edge_resnet.outputs import check_output, writing
    from edge_resnet.report import write_report

    check_output(output, "-o", inputs={"--validation": validation_path, "--bench": bench_path},
                 bundles={"BUNDLE": bundle})
    b = load_bundle(bundle)
    validation = read_json(validation_path, "validation", "edge-resnet validate")
    bench = read_json(bench_path, "bench", "edge-resnet bench --json")
    if validation is not None:
        check_validation_json(validation, str(validation_path))
        check_same_bundle(validation, str(validation_path), b, "bundle", "validation")
    if bench is not None:
        check_bench_json(bench, str(bench_path))
        check_same_bundle(bench, str(bench_path), b, "artifact", "bench")
    with writing(output):
        path = write_report(output, b.manifest, validation, bench)
    click.echo(f"wrote {path}")
