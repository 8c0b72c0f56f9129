"""The self-contained HTML report of a run directory (`sbx report`, `sbx verify --html`)."""

from __future__ import annotations

from sbx.pipelines.report.html.page import (
    FAILED_FILL,
    SKIPPED_FILL,
    SUCCEEDED_FILL,
    render_html,
    write_html,
)

__all__ = ["FAILED_FILL", "SKIPPED_FILL", "SUCCEEDED_FILL", "render_html", "write_html"]
