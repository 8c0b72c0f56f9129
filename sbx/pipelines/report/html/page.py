"""`sbx report RUN_DIR --html FILE`: one self-contained HTML page about a run.

The page is made only from the run directory contract (docs/records.md): run.json,
events.jsonl, attestations/ and attestations.intoto.jsonl, plus, optionally, the
`--json` form of `sbx verify`. It has no external assets (inline CSS and SVG, no
script at all), so it can be archived as a CI artifact and opened offline years later.

Everything read from the run directory is untrusted: a step could have written
anything into a DNS name, a step file could name a step `<script>`, and a run
directory handed over for review could be crafted. So every piece of text goes
through `html.escape` on its way into markup, nothing read is ever used as markup
or as a URL, and a Content-Security-Policy forbids scripts and remote loads as a
second line of defence. Records may be missing or half written (an interrupted run):
every accessor tolerates missing keys and wrong types, and problems are listed on the
page instead of raised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sbx.attest.verify.evidence import EVENTS_FILE
from sbx.pipelines.report.html.graph import _graph, _legend
from sbx.pipelines.report.html.model import (
    RUN_FILE,
    _e,
    _load,
    _s,
)
from sbx.pipelines.report.html.style import (
    _CSP,
    _CSS,
)
from sbx.pipelines.report.html.tables import (
    _evidence,
    _header,
    _other_events,
    _step_section,
    _verification,
)


def render_html(run_dir: Path, verification: dict[str, Any] | None) -> str:
    """The report page of a run directory, as one self-contained HTML document.

    `verification` is `sbx verify --json`'s object (`Report.to_dict()`), or None when
    the run was not verified. Missing or partial records never raise: what could not
    be read is listed at the top of the page.
    """
    run = _load(run_dir)
    title = _s(run.record.get("run_id")) or run_dir.name
    steps = "".join(_step_section(s, run) for s in run.steps)
    unattributed = ""
    if run.unattributed:
        unattributed = ("<section><h2>Events of no known step</h2>"
                        f"{_other_events(run.unattributed)}</section>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sbx run {_e(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(run, run_dir, verification)}"
        f'<section id="graph"><h2>Steps</h2>{_graph(run)}{_legend()}</section>'
        f"{_verification(verification)}"
        f'<section id="steps"><h2>Step details</h2>'
        f"{steps or '<p class=none>No steps recorded.</p>'}</section>"
        f"{unattributed}{_evidence(run, run_dir)}"
        f"<footer><p class=\"none\">made by sbx report from {_e(RUN_FILE)}, "
        f"{_e(EVENTS_FILE)} and the evidence files</p></footer></body></html>\n"
    )


def write_html(run_dir: Path, dest: Path, verification: dict[str, Any] | None) -> None:
    """Render the report and write it to `dest` atomically (a reader never sees half)."""
    page = render_html(run_dir, verification)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, dest)
