"""The report's colours and stylesheet, and the Content-Security-Policy of the page."""

from __future__ import annotations

from typing import Final

# Zone fills of the step graph, by status. They are used for the zones only (nowhere
# else on the page but the small legend), so a screenshot test can find each zone by
# its exact colour. Light tints keep the dark zone text readable.
SUCCEEDED_FILL: Final = "#9be3a8"
FAILED_FILL: Final = "#f4a3a3"  # failed, blocked, timeout, error, interrupted
SKIPPED_FILL: Final = "#c8c8c8"
RUNNING_FILL: Final = "#f7d98b"  # preparing, probing, waiting, running
PENDING_FILL: Final = "#dce3f5"
UNKNOWN_FILL: Final = "#e6d3f0"  # a status this version of sbx does not know

STATUS_FILLS: Final[dict[str, str]] = {
    "succeeded": SUCCEEDED_FILL,
    "failed": FAILED_FILL, "blocked": FAILED_FILL, "timeout": FAILED_FILL,
    "error": FAILED_FILL, "interrupted": FAILED_FILL,
    "skipped": SKIPPED_FILL,
    "preparing": RUNNING_FILL, "probing": RUNNING_FILL, "waiting": RUNNING_FILL,
    "running": RUNNING_FILL,
    "pending": PENDING_FILL,
}

# Darker outlines of the same hues, so the zones stay distinct in greyscale prints.
_STROKES: Final[dict[str, str]] = {
    SUCCEEDED_FILL: "#2f8a43", FAILED_FILL: "#b83232", SKIPPED_FILL: "#7a7a7a",
    RUNNING_FILL: "#b08a1e", PENDING_FILL: "#6a7fb5", UNKNOWN_FILL: "#8a5aa6",
}


def fill_for(status: str) -> str:
    """The zone fill colour of a step status (`UNKNOWN_FILL` for anything unexpected)."""
    return STATUS_FILLS.get(status, UNKNOWN_FILL)


_CSS: Final = """
:root { color-scheme: light; }
body { font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1d2433;
       margin: 0 24px 40px; background: #ffffff; }
h1 { font-size: 20px; margin: 14px 0 6px; }
h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #d5d9e2; }
h3 { font-size: 15px; margin: 22px 0 6px; }
h4 { font-size: 13px; margin: 14px 0 4px; color: #3a4560; }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px; }
code { overflow-wrap: anywhere; }
pre { background: #f6f7f9; border: 1px solid #e1e4ea; padding: 8px; overflow-x: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr
           max-content 1fr; gap: 2px 12px; margin: 4px 0; }
dl.facts dt { color: #5b6478; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: 4px 0 8px; font-size: 12.5px; }
th, td { border: 1px solid #dfe2e8; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #eef0f4; }
tr.ok td { background: #f1faf3; } tr.bad td { background: #fdeeee; }
tr.warn td { background: #fff8e6; } tr.dim td { color: #6b7280; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
         font-weight: bold; border: 1px solid; }
.st-ok { color: #1f6b32; border-color: #1f6b32; } .st-bad { color: #a11d1d; border-color: #a11d1d; }
.st-skip { color: #555; border-color: #777; } .st-run { color: #7a5b00; border-color: #a07a10; }
.st-pend, .st-unknown { color: #3f4f7a; border-color: #6a7fb5; }
.none { color: #6b7280; font-style: italic; }
.problems { color: #a11d1d; }
.graph { overflow-x: auto; margin: 6px 0 0; }
.legend span { margin-right: 14px; font-size: 12px; color: #3a4560; white-space: nowrap; }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 3px;
            margin-right: 4px; vertical-align: -1px; border: 1px solid #888; }
code.wrap { white-space: pre-wrap; }
svg text { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
svg .zname { font-size: 15px; font-weight: bold; fill: #10151f; }
svg .zstatus { font-size: 12px; font-weight: bold; fill: #1d2433; }
svg .zline { font-size: 12px; fill: #1d2433; }
svg .zalarm { font-size: 12px; font-weight: bold; fill: #8f0000; }
svg .internet { fill: #f4f8fe; stroke: #2d63b3; stroke-width: 1.5; stroke-dasharray: 6 4; }
svg .ihead { font-size: 12px; font-weight: bold; fill: #2d63b3; }
svg .dest-ok { font-size: 11.5px; fill: #1f6b32; }
svg .dest-audit { font-size: 11.5px; fill: #8a6500; }
svg .dest-denied { font-size: 11.5px; font-weight: bold; fill: #a11d1d; }
svg .dest-none, svg .dest-more { font-size: 11.5px; fill: #5b6478; }
svg .egress { stroke: #2d63b3; stroke-width: 2; stroke-dasharray: 5 4; }
svg .elabel { font-size: 11px; fill: #2d63b3; }
svg .need { fill: none; stroke: #33415c; stroke-width: 2; }
svg .alabel { font-size: 11px; fill: #1d2433; paint-order: stroke; stroke: #ffffff;
              stroke-width: 4px; stroke-linejoin: round; }
svg a.zone:hover rect { stroke-width: 3; }
"""

# No script runs and nothing is fetched, even if escaping were ever broken somewhere.
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

