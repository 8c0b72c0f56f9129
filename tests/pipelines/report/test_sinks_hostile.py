"""Every sink that shows what a step did, fed arbitrary text where the step chooses it
(hypothesis): DNS labels (as dnslib spells them and as raw bytes), SNI, Host, paths,
reasons and output file names. Each sink's output parses (XML, JSON, HTML keeps its
structure), and what reaches a console or a CI job log holds no control or invisible
character from the input: an ESC there is an ANSI sequence in the GitLab job log."""

from __future__ import annotations

import io
import json
import unicodedata
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from sbx.pipelines.report.alerts import alert_payload, alert_text
from sbx.pipelines.report.ci import codequality, junit_xml
from sbx.pipelines.report.html import render_html
from sbx.pipelines.report.live import LiveView
from sbx.shown import plain, shown
from tests.pipelines.report.test_html_report import make_run, stamp

TRICKS = ["x[/x]y", "[bold red]pwned[/]", "\x1b[2J\x1b[31mred", "\x1b]8;;http://x\x07l",
          "<script>alert(1)</script>", "]]><!--", "\x00", "\ud7ff\ufffe\uffff", "\u202egnp.exe",
          "a\\", "\\[x]", "\r\noverwrite", "\x85\u2028\u2029", "&amp;&#x27;", "\x7f\x9b1m"]


def _dnslib(raw: bytes) -> str:
    """How dnslib's str(qname) spells a label: printable ASCII kept, the rest \\DDD."""
    return "".join(chr(b) if 0x20 < b < 0x7f else f"\\{b:03d}" for b in raw)


hostile = st.one_of(
    st.sampled_from(TRICKS),
    st.text(max_size=80),
    st.binary(max_size=63).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=63).map(lambda b: b.decode("utf-8", "replace")),
    st.binary(max_size=63).map(_dnslib),
)
PROPS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _event(text: str, kind: str = "dns", verdict: str = "denied") -> dict[str, Any]:
    return {"time": stamp(50), "step": "s", "kind": kind, "name": f"h:{text}",
            "dst_ip": text, "dst_port": 443, "verdict": verdict, "reason": text,
            "rule": text, "rule_source": text, "violation": True, "method": text}


def _raw_controls(out: str) -> set[str]:
    """Characters a terminal would act on or hide: every Cc and Cf but the line break."""
    return {c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")}


def _record(text: str) -> dict[str, Any]:
    return {"run_id": "r1", "status": "failed", "reason": text, "out_dir": text,
            "order": ["s"], "kind": "step", "name": "s",
            "steps": {"s": {"name": "s", "status": "failed", "reason": text, "exit_code": 1,
                            "step_started": stamp(10), "started": stamp(0),
                            "ended": stamp(60), "probes": [], "peer_probes": [],
                            "flows": {"denied": 3}, "policy": {"mode": "enforce"},
                            "recording": {"attempts": 9, "itemized": 3},
                            "outputs": [{"path": text, "sha256": "a" * 64, "size": 1}]}}}


@PROPS
@given(text=hostile)
def test_console_shows_everything_and_acts_on_nothing(text: str) -> None:
    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=False, width=100_000,
                            color_system=None), quiet=False)
    view.start({"s": ()})
    view.arm("s")
    for verdict in ("denied", "audit", "allowed"):
        view.event(_event(text, "tcp", verdict))
    view.event({**_event(text), "kind": "gateway", "phase": "recorder-failed"})
    view.phase("s", text)
    view.summary(_record(text))
    out = screen.getvalue()
    assert _raw_controls(out) == set(), repr(out)
    assert plain(f"h:{text}:443") in out  # the destination, spelled out, is there


@PROPS
@given(text=hostile)
def test_shown_round_trips_through_rich_markup(text: str) -> None:
    screen = io.StringIO()
    Console(file=screen, width=100_000, color_system=None).print(
        f"[red]{shown(text, limit=10_000)}[/]", highlight=False, soft_wrap=True)
    assert screen.getvalue() == plain(text, limit=10_000) + "\n"


@PROPS
@given(text=hostile)
def test_junit_xml_parses_and_keeps_the_name(text: str) -> None:
    root = ET.fromstring(junit_xml(_record(text), [_event(text)]))
    messages = [f.get("message") or "" for f in root.iter("failure")]
    assert messages and root.tag == "testsuites"


@PROPS
@given(text=hostile)
def test_codequality_is_json_that_round_trips(text: str) -> None:
    issues = codequality(_record(text), [_event(text)], "step.yaml")
    assert json.loads(json.dumps(issues)) == issues and len(issues) == 1


@PROPS
@given(text=hostile)
def test_webhook_payload_is_json_and_its_text_line_acts_on_nothing(text: str) -> None:
    event = _event(text)
    body = json.loads(alert_payload("r1", event))
    assert body["event"] == event  # the payload carries the event as data
    assert _raw_controls(body["text"]) == set() and _raw_controls(alert_text("r1", event)) == set()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.handlers += [k for k, _ in attrs if k.startswith("on")]


def _tags(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile)
def test_html_report_keeps_its_structure(tmp_path_factory: Any, text: str) -> None:
    run = make_run(tmp_path_factory.mktemp("r"))
    baseline = _tags(render_html(run, None))
    with (run / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**_event(text), "step": "test", "time": stamp(72)}) + "\n")
    record = json.loads((run / "run.json").read_text())
    record["steps"]["test"]["reason"] = text
    (run / "run.json").write_text(json.dumps(record))
    page = _tags(render_html(run, {"run_dir": text, "trust": text, "passed": False,
                                   "checks": [{"check": text, "status": "fail",
                                               "reason": text}]}))
    assert page.tags <= baseline.tags | {"tr", "td"} and page.handlers == []
    assert "script" not in page.tags


def test_a_path_in_events_is_data_too(tmp_path: Path) -> None:
    """One fixed case readable at a glance: the live view once raised on this name."""
    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=True, width=200), quiet=False)
    view.start({"s": ()})
    view.arm("s")
    view.event(_event("x[/x]y"))
    assert "x[/x]y" in screen.getvalue()


def test_a_flood_prints_a_bounded_number_of_lines_and_says_so() -> None:
    from sbx.pipelines.report.live import LINES_PER_STEP

    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=False, width=200), quiet=False)
    view.start({"s": ()})
    view.arm("s")
    for i in range(LINES_PER_STEP + 500):
        view.event(_event(f"n{i}"))
    lines = screen.getvalue().splitlines()
    assert len(lines) == LINES_PER_STEP + 1
    assert "run.json counts them all" in lines[-1]
