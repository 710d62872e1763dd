"""``report.html``: a self-contained page (figures embedded as base64 PNG, no external URLs) about one
bundle, from its manifest, ``edge-resnet validate`` results and ``edge-resnet bench --json`` results.
Figures need the optional ``report`` extra (matplotlib); without it the page has the tables only."""

from edge_resnet.report.html import SECTIONS, ReportInput, render_report, write_report

__all__ = ["SECTIONS", "ReportInput", "render_report", "write_report"]
