"""``report.html``: one self-contained page about a bundle, from its manifest, the validation JSON and the
bench JSON. No external URLs: the style is inline and the figures are base64 PNGs. Every string from the
inputs is escaped. Missing or null sections are stated as missing, not guessed.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_resnet.report import plots

log = logging.getLogger(__name__)

DASH = "–"
FOLD_CLASSES = 50  # per-class tables longer than this are folded into <details>
STYLE = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;background:#f4f6f8;
color:#1d2733;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:0 0 12px;color:#17324d}
h3{font-size:1em;margin:16px 0 8px;color:#17324d}
.sub{color:#5b6b7b;margin:0 0 20px}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:16px 20px;margin:0 0 18px}
table{border-collapse:collapse;font-size:.92em;margin:4px 0 8px}
th,td{padding:5px 12px;border-bottom:1px solid #e6ebf0;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:none;color:#5b6b7b;font-weight:500;white-space:nowrap;width:210px}
tr.bad td{background:#fdecec}
.pass{color:#17703a;font-weight:600}.fail{color:#b3261e;font-weight:600}
.note{background:#fff8e1;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0}
.missing{color:#7a8896;font-style:italic}
img{max-width:100%;height:auto;display:block;margin:8px 0}
code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:.88em}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:10px;overflow:auto;max-height:520px}
details summary{cursor:pointer;font-weight:600;color:#17324d}
ul.layers{columns:2;margin:4px 0}
"""


@dataclass(frozen=True)
class ReportInput:
    manifest: dict[str, Any]
    validation: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------- helpers


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def get(d: Any, *keys: Any, default: Any = None) -> Any:
    """Nested lookup that tolerates missing keys and null sections."""
    for key in keys:
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return default
        if d is None:
            return default
    return d


def num(value: Any, fmt: str = ".3f", suffix: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return DASH
    return f"{value:{fmt}}{suffix}"


def pct(value: Any) -> str:
    return num(value * 100 if isinstance(value, (int, float)) else None, ".2f", " %")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None,
          row_classes: Sequence[str] | None = None) -> str:
    """Cells must already be escaped (they may hold markup)."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f'<th class="num">{esc(h)}</th>' if n else f"<th>{esc(h)}</th>"
                   for h, n in zip(headers, numeric, strict=True))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(row, numeric, strict=True))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(rows: Iterable[tuple[str, str]]) -> str:
    """Key/value rows; values must already be escaped."""
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def figure(uri: str | None, alt: str) -> str:
    if not plots.available():
        return missing(f"{alt}: plots need matplotlib (pip install 'edge-resnet[report]')")
    return f'<img alt="{esc(alt)}" src="{uri}">' if uri else missing(f"{alt}: no data")


def _plot(fn: Callable[..., str | None], *args: Any) -> str | None:
    return fn(*args) if plots.available() else None


def baseline_precision_note(bench: dict[str, Any] | None) -> str | None:
    """Where the fp32 baseline ran, and with which OpenVINO INFERENCE_PRECISION_HINT when on OpenVINO."""
    compare = get(bench, "compare")
    if not compare:
        return None
    if compare.get("backend") == "openvino" or "INFERENCE_PRECISION_HINT" in str(compare.get("note", "")):
        hint = get(compare, "runtime", "config", "INFERENCE_PRECISION_HINT") or get(compare, "runtime",
                                                                                    "inference_precision") or "f32"
        return (f"The {compare.get('label', 'fp32')} baseline ran with OpenVINO on {compare.get('device', '?')} with "
                f"INFERENCE_PRECISION_HINT={hint}: without it the CPU plugin runs float models in bf16 on CPUs that "
                "have it, and the speed-up would be against bf16, not fp32.")
    return f"The {compare.get('label', 'fp32')} baseline: {compare.get('note') or compare.get('backend')}."


# -------------------------------------------------------------------------------------------- sections


def _model_text(m: dict[str, Any]) -> str:
    model = m.get("model") or {}
    parts = [str(model.get("name", "?"))]
    if model.get("variant"):
        parts.append(str(model["variant"]))
    if model.get("num_classes"):
        parts.append(f"{model['num_classes']} classes")
    if model.get("output") and model.get("output") != "logits":
        parts.append(f"output {model['output']}")
    return ", ".join(parts)


def _coverage(info: dict[str, Any]) -> str | None:
    for quantized, total in (("int8_convs", "convs"), ("qlinearconv", "convs")):
        if isinstance(info.get(quantized), int) and isinstance(info.get(total), int):
            return f"{info[quantized]} of {info[total]} convolutions run in int8"
    return None


def _drift_rows(v: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not v:
        return [("accuracy drift", missing("no validation results (pass --validation v.json)"))]
    m = v.get("metrics") or {}
    rows = [("validation data", esc(f"{get(v, 'data', 'source', default='?')}, {get(v, 'data', 'count', default='?')} "
                                   f"images{'' if get(v, 'data', 'labelled') else ', unlabelled'}")),
            ("reference", esc(f"{get(v, 'reference', 'runtime', default='?')} "
                              f"{get(v, 'reference', 'precision', default='?')}"))]
    if m.get("float_top1") is not None or m.get("int8_top1") is not None:
        rows.append(("top-1 float → int8", f"{pct(m.get('float_top1'))} → {pct(m.get('int8_top1'))} "
                                            f"(drop {num(m.get('top1_drop_points'), '.2f')} points)"))
    if m.get("float_top5") is not None or m.get("int8_top5") is not None:
        rows.append(("top-5 float → int8", f"{pct(m.get('float_top5'))} → {pct(m.get('int8_top5'))} "
                                            f"(drop {num(m.get('top5_drop_points'), '.2f')} points)"))
    rows += [("top-1 agreement with float", pct(m.get("agreement_top1"))),
             ("output cosine mean / min", f"{num(m.get('cosine_mean'), '.5f')} / {num(m.get('cosine_min'), '.5f')}"),
             ("output SQNR", num(m.get("sqnr_db"), ".2f", " dB"))]
    budget = v.get("budget")
    if budget:
        verdict = '<span class="pass">passed</span>' if budget.get("passed") else '<span class="fail">FAILED</span>'
        rows.append(("drift budget", f"{verdict}: {esc(budget.get('metric', '?'))} drop "
                                     f"{num(budget.get('drop'), '.2f')} ≤ {num(budget.get('max_drop'), '.2f')} points"))
    return rows


def _latency_rows(b: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not b:
        return [("latency", missing("no benchmark results (pass --bench b.json)"))]
    rows = []
    for r in b.get("results") or []:
        lat = r.get("latency_ms") or {}
        rows.append((f"latency b{r.get('batch')}", f"p50 {num(lat.get('p50'))} ms, p99 {num(lat.get('p99'))} ms, "
                                                   f"{num(r.get('throughput_ips'), '.0f')} images/s"))
    speed = get(b, "compare", "speedup")
    if speed:
        label = esc(get(b, "compare", "label", default="fp32"))
        rows.append((f"speed-up vs {get(b, 'compare', 'label', default='fp32')}",
                     ", ".join(f"b{esc(k)} <b>{num(s, '.2f')}×</b>" for k, s in speed.items())
                     + f" (throughput, interleaved with the {label} baseline in one run)"))
    env = b.get("environment") or {}
    rows.append(("measured on", esc(f"{env.get('cpu') or '?'}" + (f", GPU {env['gpu']}" if env.get("gpu") else "")
                                    + f"; mode {b.get('mode')}, hint {env.get('hint')}, threads "
                                    f"{env.get('threads') or 'default'}")))
    return rows


def summary(d: ReportInput) -> str:
    m, v = d.manifest, d.validation
    art = m.get("artifact") or {}
    info = art.get("info") or {}
    target = m.get("target") or {}
    calib = m.get("calibration")
    rows: list[tuple[str, str]] = [
        ("model", esc(_model_text(m))),
        ("target", esc(f"{target.get('name', '?')}: {target.get('description', '')}")),
        ("backend / device", esc(f"{art.get('backend', '?')} / {info.get('device') or target.get('device', '?')}")),
        ("precision", esc(f"{m.get('precision', art.get('precision', '?'))}"
                          + (f" (float layers: {info['inference_precision']})" if info.get("inference_precision")
                             and m.get("precision") == "int8" else "")
                          + (f"; {_coverage(info)}" if _coverage(info) else ""))),
        ("calibration", esc(f"{calib.get('method', '?')}, {calib.get('count', '?')} images from {calib.get('source', '?')}")
         if calib else missing("none (a float build)")),
    ]
    rows += _drift_rows(v)
    rows += _latency_rows(d.bench)
    return kv_table(rows)


def notes(d: ReportInput) -> str | None:
    items = []
    baseline = baseline_precision_note(d.bench)
    if baseline:
        items.append(baseline)
    if d.validation and get(d.validation, "reference", "runtime"):
        items.append(f"Accuracy drift compares the {get(d.validation, 'precision', default='int8')} artifact on "
                     f"{get(d.validation, 'backend', default='?')} with the float model on "
                     f"{get(d.validation, 'reference', 'runtime')} ({get(d.validation, 'reference', 'precision')}).")
    if d.manifest.get("calibration", {}) and get(d.manifest, "calibration", "random"):
        items.append("This bundle was calibrated on random inputs: its accuracy is meaningless (latency only).")
    return "".join(f'<p class="note">{esc(t)}</p>' for t in items) or None


def _delta(r: dict[str, Any]) -> float | None:
    fa, qa = r.get("float_acc"), r.get("int8_acc")
    return (qa - fa) * 100 if isinstance(fa, (int, float)) and isinstance(qa, (int, float)) else None


def _per_class_table(per_class: list[dict[str, Any]]) -> str:
    """Every class; above FOLD_CLASSES classes the table is folded away, largest drops first."""
    if len(per_class) > FOLD_CLASSES:
        per_class = sorted(per_class, key=lambda r: _delta(r) if _delta(r) is not None else 0.0)
    rows = [[esc(r.get("class", "?")), num(r.get("support"), "d"), pct(r.get("float_acc")), pct(r.get("int8_acc")),
             num(_delta(r), "+.2f")] for r in per_class]
    marks = ["bad" if (_delta(r) or 0.0) < 0 else "" for r in per_class]
    text = table(["class", "images", "float", "int8", "Δ points"], rows, [False, True, True, True, True], marks)
    if len(per_class) <= FOLD_CLASSES:
        return text
    return f"<details><summary>{len(per_class)} classes, largest drops first</summary>{text}</details>"


def accuracy(d: ReportInput) -> str:
    v = d.validation
    if not v:
        return missing("no validation results (pass --validation v.json)")
    parts = []
    conf = v.get("confusion")
    if conf and conf.get("int8"):
        uri = _plot(plots.confusion_matrices, [str(x) for x in conf.get("labels") or []], conf["int8"], conf.get("float"))
        parts.append("<h3>Confusion matrix</h3>" + figure(uri, "confusion matrices: float, int8, difference"))
    else:
        parts.append(missing("no confusion matrix (the validation data has no labels)"))
    per_class = v.get("per_class") or []
    if per_class:
        parts.append("<h3>Per-class accuracy</h3>" + _per_class_table(per_class))
    else:
        parts.append(missing("no per-class accuracy (the validation data has no labels)"))
    return "".join(parts)


def layers(d: ReportInput) -> str:
    v = d.validation or {}
    per_layer = v.get("per_layer") or []
    parts = []
    if per_layer:
        worst = plots.worst_layers(per_layer)
        which = (f"The {len(worst)} layers with the lowest SQNR of {len(per_layer)} measured"
                 if len(worst) < len(per_layer) else f"All {len(worst)} layers measured, lowest SQNR first")
        parts.append(f"<p>{esc(which)}: signal-to-quantization-noise ratio of each layer's int8 output against "
                     "float; below about 20 dB a layer is worth a look.</p>")
        parts.append(figure(_plot(plots.sqnr_bars, per_layer), "per-layer SQNR, worst layers"))
        rows = [[f"<code>{esc(r.get('layer', '?'))}</code>", esc(r.get("op", "?")), num(r.get("sqnr_db"), ".2f")]
                for r in worst]
        parts.append("<details><summary>the same layers as text (names for compile --exclude)</summary>"
                     + table(["layer", "op", "SQNR dB"], rows, [False, False, True]) + "</details>")
    else:
        parts.append(missing("no per-layer SQNR (not in the validation results)"))
    kept = v.get("kept_float")
    if kept is None:
        kept = get(d.manifest, "quantization", "kept_float")
    if kept:
        parts.append(f"<h3>Layers kept in float ({len(kept)})</h3><ul class=\"layers\">"
                     + "".join(f"<li><code>{esc(k)}</code></li>" for k in kept) + "</ul>")
    elif kept is not None:
        parts.append("<p>No layer was kept in float: every quantizable layer runs in int8.</p>")
    return "".join(parts)


def _latency_table(b: dict[str, Any]) -> str:
    rows = []
    groups = [(b.get("precision", "model"), b.get("results") or [])]
    if b.get("compare"):
        groups.append((b["compare"].get("label", "baseline"), b["compare"].get("results") or []))
    for label, results in groups:
        for r in results:
            lat = r.get("latency_ms") or {}
            rows.append([esc(label), num(r.get("batch"), "d"), num(r.get("iterations"), "d")]
                        + [num(lat.get(k)) for k in ("min", "mean", "p50", "p90", "p99", "max")]
                        + [num(r.get("throughput_ips"), ".1f"), num(r.get("load_s"), ".3f")])
    return table(["", "batch", "iterations", "min", "mean", "p50", "p90", "p99", "max", "images/s", "load s"], rows,
                 [False] + [True] * 10)


def _pipeline(b: dict[str, Any]) -> str:
    p = b.get("pipeline")
    if not p:
        return missing("no pipeline timing (run edge-resnet bench --pipeline)")
    stages = p.get("stages_ms") or {}
    total = sum(v for v in stages.values() if isinstance(v, (int, float)))
    rows = [[esc(k), num(v), num(v / total * 100 if total else None, ".1f", " %")] for k, v in stages.items()]
    decode = "" if p.get("decoded", True) else " Frames were in memory: decode is only the copy of a frame."
    return (f"<p>{esc(p.get('frames', '?'))} frames of {esc(p.get('source', '?'))}, one at a time: "
            f"<b>{num(p.get('fps'), '.1f')} FPS</b> end to end.{esc(decode)}"
            + (f" Top-1 on these frames: {pct(p['top1'])}." if isinstance(p.get("top1"), (int, float)) else "")
            + "</p>" + table(["stage", "ms per frame (mean)", "share"], rows, [False, True, True]))


def latency(d: ReportInput) -> str:
    b = d.bench
    if not b:
        return missing("no benchmark results (pass --bench b.json from edge-resnet bench --json)")
    env = b.get("environment") or {}
    first = (b.get("results") or [{}])[0]
    requests = f"{first.get('requests', 'sync')} requests" + (
        f" ({first['n_requests']} in flight)" if (first.get("n_requests") or 1) > 1 else "")
    parts = [f"<p>{esc(b.get('artifact', '?'))}: {esc(b.get('backend'))} on {esc(b.get('device'))}, "
             f"mode {esc(b.get('mode'))}, {esc(requests)}; warm-up excluded; latency per request in ms.</p>",
             _latency_table(b),
             figure(_plot(plots.latency_histogram, b), "latency histograms per batch size"),
             figure(_plot(plots.latency_percentiles, b), "latency by percentile"),
             "<h3>Camera pipeline</h3>", _pipeline(b)]
    env_rows = [("CPU", esc(env.get("cpu"))), ("GPU", esc(env.get("gpu") or "none found")),
                ("threads", esc(env.get("threads") or "backend default")), ("hint", esc(env.get("hint"))),
                ("inference precision", esc(env.get("inference_precision"))),
                ("load average (1/5/15 min)", esc(" / ".join(num(x, ".2f") for x in env.get("loadavg") or []) or DASH)
                 + f" on {esc(env.get('cpus_usable') or '?')} usable CPUs"),
                ("versions", esc(", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())))]
    parts.append("<h3>Environment</h3>" + kv_table(env_rows))
    return "".join(parts)


def manifest_section(d: ReportInput) -> str:
    text = json.dumps(d.manifest, indent=2, sort_keys=False)
    return f"<details><summary>manifest.json</summary><pre>{esc(text)}</pre></details>"


SECTIONS: tuple[tuple[str, Callable[[ReportInput], str | None]], ...] = (
    ("Summary", summary),
    ("Notes", notes),
    ("Accuracy", accuracy),
    ("Per-layer quantization error", layers),
    ("Latency and throughput", latency),
    ("Manifest", manifest_section),
)


# -------------------------------------------------------------------------------------------- the page


def _version() -> str:
    try:
        return importlib.metadata.version("edge-resnet")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def render_report(manifest: dict[str, Any], validation: dict[str, Any] | None = None,
                  bench: dict[str, Any] | None = None) -> str:
    d = ReportInput(manifest, validation, bench)
    title = (f"{get(manifest, 'model', 'name', default='model')} → {get(manifest, 'target', 'name', default='?')} "
             f"{manifest.get('precision', '')}")
    body = []
    for name, section in SECTIONS:
        content = section(d)
        if content:
            body.append(f"<section><h2>{esc(name)}</h2>{content}</section>")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">edge-resnet {esc(_version())} report, {esc(now)}; bundle "
            f"created {esc(manifest.get('created', '?'))}</p>{''.join(body)}</main></body></html>\n")


def write_report(path: str | Path, manifest: dict[str, Any], validation: dict[str, Any] | None = None,
                 bench: dict[str, Any] | None = None) -> Path:
    """Write the report atomically (a temporary file in the same folder, then a rename); returns the path."""
    path = Path(path)
    if not plots.available():
        log.warning("matplotlib is not installed: the report has no figures (pip install 'edge-resnet[report]')")
    text = render_report(manifest, validation, bench)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1e3)
    return path
