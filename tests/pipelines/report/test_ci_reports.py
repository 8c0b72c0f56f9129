"""`--junit` and `--codequality`: GitLab CI reports from a run's records (no Docker).

The run is built by hand from docs/records.md: a pipeline of three steps (`fetch`
succeeded in enforce mode with denials, `build` failed in audit mode, `test` skipped),
with probe-phase denials before each `step_started` that must not be reported.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sbx.pipelines.report.ci import findings, write_codequality, write_junit
from sbx.pipelines.run.records import parse_time

T0 = datetime(2026, 11, 22, 10, 15, 0, tzinfo=UTC)
RUN_ID = "20261122T101500Z-1a2b3c4d"
SPEC = "examples/wheel/pipeline.yaml"


def stamp(seconds: float) -> str:
    """A time as sbx writes it (RFC 3339, microseconds, Z)."""
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")


def step_record(name: str, status: str, mode: str, *, started: float | None,
                step_started: float | None, ended: float | None, reason: str | None = None,
                exit_code: int | None = None, needs: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name, "needs": needs or [], "status": status, "exit_code": exit_code,
        "reason": reason,
        "started": None if started is None else stamp(started),
        "step_started": None if step_started is None else stamp(step_started),
        "ended": None if ended is None else stamp(ended),
        "image": {"ref": "sbx-step:bookworm", "id": "sha256:" + "0" * 64},
        "policy": {"mode": mode, "digest": "sha256:" + "1" * 64,
                   "allow": ["web.sbx.test:443", "internal.sbx.test:443"]},
        "probes": [], "peer_probes": [], "inputs": [], "outputs": [],
        "flows": {"allowed": 0, "audit": 0, "denied": 0, "failed": 0}, "faults": [],
    }


def make_record(steps: list[dict[str, Any]], run_id: str = RUN_ID) -> dict[str, Any]:
    return {
        "schema": "https://sbx.dev/run/v1", "kind": "pipeline", "run_id": run_id,
        "sbx_version": "0.1.0", "spec": {"path": SPEC, "digest": "sha256:" + "2" * 64},
        "out_dir": "/tmp/run", "started": stamp(0), "ended": stamp(60),
        "interrupted": False, "status": "failed", "reason": "step build failed",
        "engine": {"version": "20.10.24"}, "order": [s["name"] for s in steps],
        "steps": {s["name"]: s for s in steps},
        "evidence": {"signer": "ed25519 key test", "error": None, "files": []},
    }


def ev(at: float, step: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"time": stamp(at), "step": step, "kind": kind, **fields}


def denied(at: float, step: str, kind: str, **fields: Any) -> dict[str, Any]:
    return ev(at, step, kind, verdict="denied", violation=True,
              reason=fields.pop("reason", "no rule allows this"), **fields)


def audit(at: float, step: str, kind: str, **fields: Any) -> dict[str, Any]:
    return ev(at, step, kind, verdict="audit", violation=True,
              reason="no rule allows other.sbx.test:443", **fields)


def pipeline_run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    record = make_record([
        step_record("fetch", "succeeded", "enforce", started=0, step_started=5, ended=30,
                    exit_code=0),
        step_record("build", "failed", "audit", started=10, step_started=20, ended=45.5,
                    exit_code=2, reason="the command exited with code 2", needs=["fetch"]),
        step_record("test", "skipped", "enforce", started=None, step_started=None, ended=None,
                    reason="needs build, which failed", needs=["build"]),
    ])
    events = [
        ev(0.5, "fetch", "gateway", phase="ready", source="gateway"),
        ev(0.6, "fetch", "agent", phase="ready", source="agent"),
        # The probes' own denials: before step_started, proof the sandbox works.
        denied(1, "fetch", "dns", name="denied.sbx.test", qtype="A"),
        denied(2, "fetch", "udp", dst_ip="198.18.0.1", dst_port=53),
        denied(2.5, "fetch", "tcp", name="other.sbx.test", dst_ip="198.18.0.3", dst_port=443),
        ev(3, "fetch", "probe", probe="egress-raw-ip", protocol="tcp", dst="198.18.0.1:80",
           verdict="blocked", reason="connection reset"),
        ev(6, "fetch", "tcp", phase="open", name="web.sbx.test", dst_ip="198.18.0.2",
           dst_port=443, verdict="allowed", reason="matched", rule="web.sbx.test:443",
           rule_source=f"{SPEC}:12"),
        ev(7, "fetch", "tcp", phase="close", name="web.sbx.test", dst_ip="198.18.0.2",
           dst_port=443, verdict="allowed", bytes_out=100, bytes_in=2000),
        denied(8, "fetch", "tcp", name="other.sbx.test", dst_ip="198.18.0.3", dst_port=443),
        denied(8.5, "fetch", "dns", name="other.sbx.test", qtype="A"),
        denied(9, "fetch", "tcp", name="other.sbx.test", dst_ip="198.18.0.3", dst_port=443),
        denied(9.5, "fetch", "tcp", name="internal.sbx.test", dst_port=443,
               reason="internal.sbx.test resolves only to internal addresses ['10.0.0.5']",
               rule="internal.sbx.test:443", rule_source=f"{SPEC}:14"),
        ev(12, "build", "gateway", phase="ready", source="gateway"),
        denied(15, "build", "icmp", dst_ip="198.18.0.1"),  # build's probes
        audit(21, "build", "dns", name="other.sbx.test", qtype="A"),
        audit(21.5, "build", "tcp", phase="open", name="other.sbx.test", dst_ip="198.18.0.3",
              dst_port=443, via="relay"),
        # The close event repeats the audit verdict: not a second finding.
        audit(22, "build", "tcp", phase="close", name="other.sbx.test", dst_ip="198.18.0.3",
              dst_port=443, bytes_out=5, bytes_in=7),
        ev(40, "build", "tcp", verdict="failed", reason="no answer", name="web.sbx.test",
           dst_port=443),
        denied(41, "ghost", "tcp", dst_ip="198.18.0.9", dst_port=80),  # not a step of the run
    ]
    return record, events


def cases(root: ET.Element) -> list[tuple[str, str, ET.Element]]:
    return [(c.get("classname", ""), c.get("name", ""), c) for c in root.iter("testcase")]


def junit(tmp_path: Path, record: dict[str, Any], events: list[dict[str, Any]]) -> ET.Element:
    dest = tmp_path / "reports" / "junit.xml"
    write_junit(record, events, dest)
    return ET.parse(dest).getroot()


# --------------------------------------------------------------------------- JUnit


def test_junit_has_a_case_per_step_and_per_finding(tmp_path: Path) -> None:
    root = junit(tmp_path, *pipeline_run())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [f"sbx run {RUN_ID}"]
    assert [(cls, name) for cls, name, _ in cases(root)] == [
        ("sbx.steps", "fetch"),
        ("sbx.egress.fetch", "denied tcp other.sbx.test:443"),
        ("sbx.egress.fetch", "denied dns other.sbx.test"),
        ("sbx.egress.fetch", "denied tcp internal.sbx.test:443"),
        ("sbx.steps", "build"),
        ("sbx.egress.build", "audit dns other.sbx.test"),
        ("sbx.egress.build", "audit tcp other.sbx.test:443"),
        ("sbx.steps", "test"),
    ]


def test_probe_phase_denials_are_not_reported(tmp_path: Path) -> None:
    record, events = pipeline_run()
    text = (tmp_path / "j.xml")
    write_junit(record, events, text)
    raw = text.read_text(encoding="utf-8")
    assert "denied.sbx.test" not in raw and "udp" not in raw and "icmp" not in raw
    assert "ghost" not in raw
    assert "web.sbx.test" not in raw  # allowed and failed flows are not findings


def test_junit_outcomes_and_counts(tmp_path: Path) -> None:
    root = junit(tmp_path, *pipeline_run())
    by_name = {(cls, name): case for cls, name, case in cases(root)}

    fetch = by_name[("sbx.steps", "fetch")]
    assert list(fetch) == [] and fetch.get("time") == "30.000"
    build = by_name[("sbx.steps", "build")]
    failure = build.find("failure")
    assert failure is not None
    assert failure.get("type") == "failed"
    assert failure.get("message") == "the command exited with code 2"
    assert "exit code: 2" in (failure.text or "")
    assert build.get("time") == "35.500"
    skipped = by_name[("sbx.steps", "test")].find("skipped")
    assert skipped is not None and skipped.get("message") == "needs build, which failed"

    denial = by_name[("sbx.egress.fetch", "denied tcp other.sbx.test:443")].find("failure")
    assert denial is not None and denial.get("type") == "denied"
    assert "2 times" in (denial.get("message") or "")  # two attempts, one finding
    assert "egress mode: enforce" in (denial.text or "")
    audited = by_name[("sbx.egress.build", "audit tcp other.sbx.test:443")].find("failure")
    assert audited is not None and audited.get("type") == "audit"
    assert "audit mode" in (audited.get("message") or "")

    suite = root.find("testsuite")
    assert suite is not None
    all_cases = list(root.iter("testcase"))
    n_failures = sum(c.find("failure") is not None for c in all_cases)
    n_skipped = sum(c.find("skipped") is not None for c in all_cases)
    assert (len(all_cases), n_failures, n_skipped) == (8, 6, 1)
    for element in (root, suite):
        assert element.get("tests") == "8"
        assert element.get("failures") == "6"
        assert element.get("errors") == "0"
        assert element.get("time") == "60.000"
    assert suite.get("skipped") == "1"
    assert suite.get("timestamp") == "2026-11-22T10:15:00"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["run_id"] == RUN_ID and props["spec"] == SPEC


def test_junit_reads_back_with_junitparser(tmp_path: Path) -> None:
    """An independent JUnit reader agrees with the counts we wrote."""
    junitparser = pytest.importorskip("junitparser")
    dest = tmp_path / "junit.xml"
    write_junit(*pipeline_run(), dest)
    xml = junitparser.JUnitXml.fromfile(str(dest))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    declared = (suite.tests, suite.failures, suite.errors, suite.skipped)
    suite.update_statistics()  # recount from the test cases themselves
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == declared == (8, 6, 0, 1)
    results = {case.name: [type(r).__name__ for r in case.result] for case in suite}
    assert results["fetch"] == []
    assert results["build"] == ["Failure"]
    assert results["test"] == ["Skipped"]
    assert results["audit dns other.sbx.test"] == ["Failure"]


# Elements and attributes that junit-10.xsd (the Jenkins xUnit plugin's schema, which
# GitLab's parser accepts) allows, for what we write. No PyPI package ships that XSD,
# so its rules for our elements are restated here.
JUNIT_10: dict[str, set[str]] = {
    "testsuites": {"name", "time", "tests", "failures", "errors"},
    "testsuite": {"name", "tests", "failures", "errors", "group", "time", "skipped",
                  "timestamp", "hostname", "id", "package", "file", "log", "url"},
    "properties": set(),
    "property": {"name", "value"},
    "testcase": {"name", "time", "classname", "group"},
    "failure": {"type", "message"},
    "skipped": {"type", "message"},
}
JUNIT_10_REQUIRED = {"testsuite": {"name", "tests", "failures", "errors"},
                     "property": {"name", "value"}, "testcase": {"name"}}
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def test_junit_stays_within_the_junit_10_schema(tmp_path: Path) -> None:
    root = junit(tmp_path, *pipeline_run())
    parents = {"testsuites": {"testsuite"}, "testsuite": {"properties", "testcase"},
               "properties": {"property"}, "testcase": {"failure", "skipped"},
               "property": set(), "failure": set(), "skipped": set()}
    for element in root.iter():
        assert element.tag in JUNIT_10
        assert set(element.attrib) <= JUNIT_10[element.tag], element.tag
        assert JUNIT_10_REQUIRED.get(element.tag, set()) <= set(element.attrib)
        assert {child.tag for child in element} <= parents[element.tag]
        if "time" in element.attrib and element.tag != "testcase":
            assert SUREFIRE_TIME.fullmatch(element.attrib["time"])
    suite = root.find("testsuite")
    assert suite is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp", ""))


def test_a_blocked_step_reports_the_probe_that_got_through(tmp_path: Path) -> None:
    record = make_record([step_record("fetch", "blocked", "enforce", started=0,
                                      step_started=None, ended=4,
                                      reason="a probe got through: egress-raw-ip")])
    events = [
        denied(1, "fetch", "dns", name="denied.sbx.test"),  # a probe's, never the step's
        ev(2, "fetch", "probe", probe="egress-raw-ip", protocol="tcp", dst="198.18.0.1:80",
           verdict="reached", reason="data came back", violation=True),
        ev(2, "fetch", "probe", probe="egress-udp", protocol="udp", dst="198.18.0.1:53",
           verdict="blocked", reason="EPERM"),
    ]
    root = junit(tmp_path, record, events)
    assert [(cls, name) for cls, name, _ in cases(root)] == [
        ("sbx.steps", "fetch"),
        ("sbx.egress.fetch", "reached probe 198.18.0.1:80 (egress-raw-ip)"),
    ]
    kinds = [f.get("type") for f in root.iter("failure")]
    assert kinds == ["blocked", "probe"]
    dest = tmp_path / "cq.json"
    write_codequality(record, events, dest, SPEC)
    issues = json.loads(dest.read_text(encoding="utf-8"))
    assert [(i["severity"], i["check_name"]) for i in issues] == [("blocker",
                                                                   "sbx-probe-reached")]


def test_markup_in_names_and_reasons_round_trips(tmp_path: Path) -> None:
    nasty = 'a<&">b\'c'
    record = make_record([step_record(nasty, "failed", "enforce", started=0, step_started=1,
                                      ended=2, reason="</failure><x>&amp; \x00\x1b]0;hi")])
    events = [denied(1.5, nasty, "dns", name="<!-- x -->&.test",
                     reason="invalid name: ]]><script>\ud800")]
    dest = tmp_path / "junit.xml"
    write_junit(record, events, dest)
    root = ET.parse(dest).getroot()  # it parses: everything was escaped
    got = cases(root)
    assert [(cls, name) for cls, name, _ in got] == [
        ("sbx.steps", nasty), (f"sbx.egress.{nasty}", "denied dns <!-- x -->&.test")]
    failure = got[0][2].find("failure")
    assert failure is not None
    # Characters XML cannot carry at all become U+FFFD; the rest comes back as written.
    assert failure.get("message") == "</failure><x>&amp; \ufffd\ufffd]0;hi"
    denial = got[1][2].find("failure")
    assert denial is not None and "<script>\ufffd" in (denial.get("message") or "")

    cq = tmp_path / "cq.json"
    write_codequality(record, events, cq, SPEC)
    issues = json.loads(cq.read_text(encoding="utf-8"))
    assert nasty in issues[0]["description"] and "<!-- x -->&.test" in issues[0]["description"]


def test_reports_are_replaced_atomically(tmp_path: Path) -> None:
    record, events = pipeline_run()
    dest = tmp_path / "junit.xml"
    dest.write_text("old", encoding="utf-8")
    write_junit(record, events, dest)
    write_codequality(record, events, tmp_path / "cq.json", SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cq.json", "junit.xml"]  # no temp
    assert dest.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")


def test_a_record_without_steps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps"):
        write_junit({"run_id": RUN_ID}, [], tmp_path / "j.xml")
    assert not (tmp_path / "j.xml").exists()


# --------------------------------------------------------------------------- Code Quality


def test_codequality_has_one_issue_per_finding(tmp_path: Path) -> None:
    record, events = pipeline_run()
    dest = tmp_path / "gl-code-quality-report.json"
    write_codequality(record, events, dest, SPEC)
    issues = json.loads(dest.read_text(encoding="utf-8"))
    assert isinstance(issues, list) and len(issues) == 5
    for issue in issues:
        assert {"description", "check_name", "fingerprint", "severity", "location"} <= set(issue)
        assert isinstance(issue["description"], str) and issue["description"]
        assert re.fullmatch(r"[0-9a-f]{64}", issue["fingerprint"])
        assert issue["location"]["path"] == SPEC
        assert isinstance(issue["location"]["lines"]["begin"], int)
    assert len({i["fingerprint"] for i in issues}) == 5
    assert [(i["severity"], i["check_name"]) for i in issues] == [
        ("critical", "sbx-egress-denied")] * 3 + [("major", "sbx-egress-audit")] * 2
    lines = {i["description"].split(":")[1].strip(): i["location"]["lines"]["begin"]
             for i in issues}
    assert lines["denied tcp internal.sbx.test"] == 14  # the allow entry that matched
    assert lines["denied tcp other.sbx.test"] == 1  # no rule matched: the top of the file


def test_fingerprints_are_stable_across_runs() -> None:
    record, events = pipeline_run()
    first = {f.name: f.fingerprint for f in findings(record, events)}
    # Another run: another id, other times, the same findings.
    def later(value: Any) -> Any:
        return stamp((parse_time(value) - T0).total_seconds() + 86400.5) if value else None

    steps = [{**s, **{k: later(s[k]) for k in ("started", "step_started", "ended")}}
             for s in record["steps"].values()]
    again = make_record(steps, run_id="20261123T101500Z-ffffffff")
    shifted = [{**e, "time": later(e["time"])} for e in events]
    second = {f.name: f.fingerprint for f in findings(again, shifted)}
    assert second == first
    # The same destination from another step, or with another verdict, is another issue.
    assert len(set(first.values())) == len(first)


def test_a_clean_run_writes_an_empty_report(tmp_path: Path) -> None:
    record = make_record([step_record("fetch", "succeeded", "enforce", started=0,
                                      step_started=1, ended=2, exit_code=0)])
    dest = tmp_path / "cq.json"
    write_codequality(record, [], dest, "./" + SPEC)
    assert json.loads(dest.read_text(encoding="utf-8")) == []
    root = junit(tmp_path, record, [])
    assert root.get("tests") == "1" and root.get("failures") == "0"
