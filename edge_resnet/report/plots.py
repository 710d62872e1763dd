"""The report's figures, as base64 PNG ``data:`` URIs (the page embeds them: no files, no URLs).

matplotlib is the optional ``report`` extra: imported inside the functions, and only its Agg canvas is
used (``Figure`` + ``FigureCanvasAgg``, no pyplot), so the global backend of a caller's session is
left alone.
"""

from __future__ import annotations

import base64
import importlib.util
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

DPI = 110
WORST_LAYERS = 25
# one colour per subject (the artifact, its fp32 baseline), readable for colour-blind readers
COLORS = {"main": "#1f6fb2", "baseline": "#e08a1e"}
PERCENTILES = (50, 90, 99)


def available() -> bool:
    """True when matplotlib can be imported (the ``report`` extra)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------- confusion


def _heatmap(ax: Any, m: np.ndarray, labels: Sequence[str], title: str, cmap: str, vmin: float, vmax: float,
             annotate: bool) -> Any:
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    n = len(labels)
    if n <= 30:
        ax.set_xticks(range(n), labels, rotation=90 if max(map(len, labels), default=0) > 3 else 0, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    if annotate:
        mid = (vmin + vmax) / 2
        for (i, j), v in np.ndenumerate(m):
            if v:
                dark = v > mid if cmap == "Blues" else abs(v) > 0.6 * vmax
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    return im


def confusion_matrices(labels: Sequence[str], int8: Sequence[Sequence[int]],
                       float_: Sequence[Sequence[int]] | None = None) -> str:
    """INT8 confusion matrix, with the float one beside it and their difference (int8 - float)."""
    q = np.asarray(int8, dtype=np.int64)
    f = np.asarray(float_, dtype=np.int64) if float_ is not None else None
    annotate = len(labels) <= 20
    panels = 3 if f is not None else 1
    fig = _figure(4.2 * panels, 4.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    vmax = float(max(q.max(), f.max() if f is not None else 0, 1))
    if f is not None:
        _heatmap(axes[0], f, labels, "float (reference)", "Blues", 0, vmax, annotate)
    im = _heatmap(axes[1 if f is not None else 0], q, labels, "int8", "Blues", 0, vmax, annotate)
    fig.colorbar(im, ax=list(axes[: 2 if f is not None else 1]), shrink=0.8, label="images")
    if f is not None:
        d = q - f
        lim = float(max(np.abs(d).max(), 1))
        im_d = _heatmap(axes[2], d, labels, "int8 − float", "RdBu_r", -lim, lim, annotate)
        fig.colorbar(im_d, ax=axes[2], shrink=0.8, label="images")
    return to_data_uri(fig)


# -------------------------------------------------------------------------------------------- latency


def _series(bench: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, colour key, result) for every batch size of the artifact and of its baseline."""
    out = [(f"{bench.get('precision', 'model')} b{r['batch']}", "main", r) for r in bench.get("results") or []]
    compare = bench.get("compare") or {}
    out += [(f"{compare.get('label', 'baseline')} b{r['batch']}", "baseline", r) for r in compare.get("results") or []]
    return [s for s in out if s[2].get("samples_ms")]


def _batch_styles(series: list[tuple[str, str, dict[str, Any]]]) -> dict[int, str]:
    batches = sorted({r["batch"] for _, _, r in series})
    styles = ["-", "--", ":", "-."]
    return {b: styles[i % len(styles)] for i, b in enumerate(batches)}


def latency_histogram(bench: dict[str, Any]) -> str | None:
    """Histogram of per-request latency, one panel per batch size, artifact and baseline overlaid."""
    series = _series(bench)
    if not series:
        return None
    batches = sorted({r["batch"] for _, _, r in series})
    fig = _figure(min(4.2 * len(batches), 12), 3.2)
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches, strict=True):
        mine = [(label, key, np.asarray(r["samples_ms"], float)) for label, key, r in series if r["batch"] == batch]
        # bins over p0..p99 of all samples: the far tail of a busy machine would squash the body
        allv = np.concatenate([v for _, _, v in mine])
        hi = float(np.percentile(allv, 99)) * 1.05
        bins = np.linspace(float(allv.min()) * 0.95, hi, 40)
        for label, key, v in mine:
            ax.hist(np.clip(v, None, hi), bins=bins, alpha=0.55, color=COLORS[key], label=label)
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_xlabel("latency (ms), clipped at p99")
        ax.set_ylabel("requests")
        ax.legend(fontsize=8)
    return to_data_uri(fig)


def _tail(q: Any) -> Any:
    """Percentile -> x position that spreads the tail: 0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -np.log10(1.0 - np.asarray(q, dtype=float) / 100.0)


def latency_percentiles(bench: dict[str, Any]) -> str | None:
    """Latency against percentile from the samples (tail-stretched axis, as HdrHistogram plots), p50/p90/p99
    marked, log latency."""
    series = _series(bench)
    if not series:
        return None
    styles = _batch_styles(series)
    fig = _figure(7.2, 3.8)
    ax = fig.subplots()
    top = 0.0
    for label, key, r in series:
        v = np.sort(np.asarray(r["samples_ms"], float))
        q = (np.arange(len(v)) + 0.5) / len(v) * 100  # plotting positions: never 100
        top = max(top, float(q[-1]))
        ax.plot(_tail(q), v, styles[r["batch"]], color=COLORS[key], label=label, lw=1.6)
        marks = [r["latency_ms"][f"p{p}"] for p in PERCENTILES]
        ax.plot(_tail(PERCENTILES), marks, "o", color=COLORS[key], ms=4)
    ticks = [t for t in (0, 50, 75, 90, 95, 99, 99.9, 99.99) if t <= top]
    ax.set_xticks(_tail(ticks), [f"{t:g}" for t in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("percentile (tail stretched)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    return to_data_uri(fig)


# --------------------------------------------------------------------------------------------- layers


def worst_layers(per_layer: Sequence[dict[str, Any]], n: int = WORST_LAYERS) -> list[dict[str, Any]]:
    """The ``n`` layers with the lowest SQNR, worst first (entries without a number are skipped)."""
    rows = [r for r in per_layer if isinstance(r.get("sqnr_db"), (int, float)) and np.isfinite(r["sqnr_db"])]
    return sorted(rows, key=lambda r: r["sqnr_db"])[:n]


def sqnr_bars(per_layer: Sequence[dict[str, Any]], n: int = WORST_LAYERS) -> str | None:
    """Horizontal bars: SQNR (dB) of the worst ``n`` layers, named, worst at the top."""
    rows = worst_layers(per_layer, n)
    if not rows:
        return None
    fig = _figure(8.0, 0.9 + 0.26 * len(rows))
    ax = fig.subplots()
    names = [f"{r['layer']} ({r.get('op', '?')})" for r in rows]
    values = [float(r["sqnr_db"]) for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, values, color=COLORS["main"])
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=7)
    ax.set_xlabel("SQNR (dB), int8 vs float; lower is worse")
    ax.set_xlim(min(0.0, min(values)), max(values) * 1.12 if max(values) > 0 else 1.0)
    ax.grid(True, axis="x", alpha=0.3)
    return to_data_uri(fig)
