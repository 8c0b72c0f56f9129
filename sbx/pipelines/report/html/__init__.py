"""The self-contained HTML report of a run directory (`sbx report`, `sbx verify --html`).

Modules: `page` (the document and its writing), `model` (reading the run directory),
`graph` (the SVG step graph), `tables` (header, per-step tables, evidence) and `style`
(colours, CSS and the Content-Security-Policy).
"""

from __future__ import annotations

from sbx.pipelines.report.html.page import render_html, write_html
from sbx.pipelines.report.html.style import FAILED_FILL, SKIPPED_FILL, SUCCEEDED_FILL

__all__ = ["FAILED_FILL", "SKIPPED_FILL", "SUCCEEDED_FILL", "render_html", "write_html"]
