"""`--junit FILE` and `--codequality FILE`: a run's records as GitLab CI reports.

Both are read from the run's records only (run.json and events.jsonl, see
docs/records.md), so they can be written after the run or from a copied run directory.

- JUnit XML (`artifacts:reports:junit`): one test case per step, and one per egress
  finding, so a merge request's test report shows the step that failed and every
  destination a step was refused or would have been refused.
- Code Quality JSON (`artifacts:reports:codequality`, GitLab's subset of the
  CodeClimate format): one issue per egress finding, located in the spec file, with a
  fingerprint that stays the same from run to run so GitLab can tell new findings from
  old ones.

An egress finding is one distinct (step, verdict, kind, destination): a decision with
verdict denied or audit made after the step's own command started (decisions before
`step_started` are provoked by the probes and prove the sandbox works), or a probe
that got through. Repeats of the same finding (a client retrying) are one finding with
a count: GitLab treats test cases with the same name, and issues with the same
fingerprint, as one anyway.

Audit-mode violations are failures too (type `audit`): the flow was let through, but
the allowlist lacks it and enforce mode would break the step, which is exactly what an
audit run is for. A GitLab test report's failures do not change the job's exit code;
`sbx run`'s exit code still decides that (0 for an audit run whose step succeeded).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sbx.pipelines.report.alerts import destination
from sbx.pipelines.run.records import is_decision, parse_time

STEP_CLASSNAME = "sbx.steps"
EGRESS_CLASSNAME = "sbx.egress"

SEVERITY = {"denied": "critical", "audit": "major", "reached": "blocker"}
CHECK_NAME = {"denied": "sbx-egress-denied", "audit": "sbx-egress-audit",
              "reached": "sbx-probe-reached"}
FAILURE_TYPE = {"denied": "denied", "audit": "audit", "reached": "probe"}

# Characters XML 1.0 cannot carry at all, escaped or not. ElementTree writes them as
# they are, and the report would not parse; a reason can hold any text a step caused.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class Finding:
    """One distinct egress finding of a step, with how often it happened."""

    step: str
    verdict: str  # denied | audit | reached (a probe that got through)
    kind: str  # dns | tcp | udp | icmp | ipv6 | ... | probe
    destination: str
    reason: str
    rule: str | None
    rule_source: str | None
    first: str
    last: str
    count: int = 1

    @property
    def name(self) -> str:
        """The test case name: `<verdict> <kind> <destination>`."""
        return f"{self.verdict} {self.kind} {self.destination}"

    @property
    def fingerprint(self) -> str:
        """sha256 of step, kind, destination and verdict: the same in every run.

        JSON-encoded so that no two different tuples hash the same text.
        """
        key = json.dumps([self.step, self.kind, self.destination, self.verdict])
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def summary(self) -> str:
        """One line: what happened, where, and how often."""
        times = "once" if self.count == 1 else f"{self.count} times"
        text = f"step {self.step}: {self.name} ({times})"
        if self.reason:
            text += f": {self.reason}"
        if self.verdict == "audit":
            text += " [audit mode: let through, would be denied in enforce mode]"
        return text


def _steps(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The steps in run order (`order`, then any step it does not list)."""
    steps = record.get("steps")
    if not isinstance(steps, dict):
        raise ValueError("run.json has no 'steps' map (see docs/records.md)")
    names = [n for n in record.get("order") or [] if n in steps]
    names += [n for n in steps if n not in names]
    return [(str(n), steps[n] if isinstance(steps[n], dict) else {}) for n in names]


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _where(event: dict[str, Any]) -> str:
    if event.get("kind") == "probe":
        # Two probes can try the same address with different protocols: name the probe.
        probe = event.get("probe") or event.get("protocol")
        return f"{destination(event)} ({probe})" if probe else destination(event)
    return destination(event)


def findings(record: dict[str, Any], events: list[dict[str, Any]]) -> list[Finding]:
    """The run's egress findings, by step in run order, each step's in first-seen order."""
    steps = _steps(record)
    started = {name: _time(step.get("step_started")) for name, step in steps}
    found: dict[tuple[str, str, str, str], Finding] = {}
    lines: list[Any] = list(events)  # parsed JSON: a damaged line may not be an object
    for event in lines:
        if not isinstance(event, dict):
            continue
        step = event.get("step")
        if not isinstance(step, str) or step not in started:
            continue
        if is_decision(event):
            verdict = event.get("verdict")
            if verdict not in ("denied", "audit"):
                continue
            since = started[step]
            when = _time(event.get("time"))
            # No step_started: the command never ran, so every decision was a probe's.
            # An event whose time cannot be read is kept: better reported than hidden.
            if since is None or (when is not None and when < since):
                continue
        elif event.get("kind") == "probe" and event.get("verdict") == "reached":
            verdict = "reached"
        else:
            continue
        kind = str(event.get("kind") or "?")
        where = _where(event)
        key = (step, str(verdict), kind, where)
        time = str(event.get("time") or "")
        if key in found:
            found[key].count += 1
            found[key].last = time
            continue
        found[key] = Finding(step=step, verdict=str(verdict), kind=kind, destination=where,
                             reason=str(event.get("reason") or ""),
                             rule=_opt(event.get("rule")),
                             rule_source=_opt(event.get("rule_source")),
                             first=time, last=time)
    order = {name: i for i, (name, _) in enumerate(steps)}
    # sorted() is stable: within a step the first-seen order stays.
    return sorted(found.values(), key=lambda f: order[f.step])


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _xml(value: Any) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _seconds(start: Any, end: Any) -> float:
    a, b = _time(start), _time(end)
    return max(0.0, (b - a).total_seconds()) if a and b else 0.0


def _write_atomic(dest: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and os.replace: never half a report."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for everyone who reads CI
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _step_case(suite: ET.Element, name: str, step: dict[str, Any]) -> tuple[int, int]:
    """Add the step's test case; returns (failures, skipped) it adds."""
    status = str(step.get("status") or "unknown")
    case = ET.SubElement(suite, "testcase", classname=STEP_CLASSNAME, name=_xml(name),
                         time=f"{_seconds(step.get('started'), step.get('ended')):.3f}")
    reason = step.get("reason")
    if status == "succeeded":
        return 0, 0
    if status == "skipped":
        ET.SubElement(case, "skipped", message=_xml(reason or "skipped"))
        return 0, 1
    # Anything else did not succeed: failed, timeout, blocked, error, interrupted, and a
    # step still pending or running when the run stopped.
    failure = ET.SubElement(case, "failure", type=_xml(status),
                            message=_xml(reason or f"the step ended {status}"))
    lines = [f"status: {status}", f"exit code: {step.get('exit_code')}"]
    if reason:
        lines.append(f"reason: {reason}")
    faults = step.get("faults")
    lines += [f"fault: {fault}" for fault in (faults if isinstance(faults, list) else [])]
    failure.text = _xml("\n".join(lines))
    return 1, 0


def _finding_case(suite: ET.Element, finding: Finding, mode: str | None) -> None:
    case = ET.SubElement(suite, "testcase", classname=_xml(f"{EGRESS_CLASSNAME}.{finding.step}"),
                         name=_xml(finding.name), time="0.000")
    failure = ET.SubElement(case, "failure", type=FAILURE_TYPE[finding.verdict],
                            message=_xml(finding.summary()))
    lines = [f"step: {finding.step}", f"verdict: {finding.verdict}", f"kind: {finding.kind}",
             f"destination: {finding.destination}", f"count: {finding.count}",
             f"first: {finding.first}", f"last: {finding.last}"]
    if finding.reason:
        lines.append(f"reason: {finding.reason}")
    if finding.rule:
        lines.append(f"rule: {finding.rule}" + (f" ({finding.rule_source})"
                                                 if finding.rule_source else ""))
    if mode and finding.verdict != "reached":
        lines.append(f"egress mode: {mode}")
    failure.text = _xml("\n".join(lines))


def junit_xml(record: dict[str, Any], events: list[dict[str, Any]]) -> bytes:
    """The JUnit XML document (UTF-8 bytes) for a run; see `write_junit`."""
    run_id = str(record.get("run_id") or "?")
    steps = _steps(record)
    by_step: dict[str, list[Finding]] = {}
    for finding in findings(record, events):
        by_step.setdefault(finding.step, []).append(finding)

    root = ET.Element("testsuites", name="sbx")
    suite = ET.SubElement(root, "testsuite", name=_xml(f"sbx run {run_id}"))
    started = _time(record.get("started"))
    if started is not None:
        # junit-10.xsd's timestamp is a date-time without a zone; sbx's times are UTC.
        suite.set("timestamp", started.replace(tzinfo=None).isoformat(timespec="seconds"))
    props = ET.SubElement(suite, "properties")
    spec = _dict(record.get("spec"))
    for key, value in (("run_id", run_id), ("status", record.get("status")),
                       ("kind", record.get("kind")), ("spec", spec.get("path")),
                       ("spec_digest", spec.get("digest"))):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=_xml(value))

    tests = failures = skipped = 0
    for name, step in steps:
        failed, skip = _step_case(suite, name, step)
        tests, failures, skipped = tests + 1, failures + failed, skipped + skip
        policy = _dict(step.get("policy"))
        for finding in by_step.get(name, []):
            _finding_case(suite, finding, policy.get("mode"))
            tests, failures = tests + 1, failures + 1

    total = f"{_seconds(record.get('started'), record.get('ended')):.3f}"
    for element in (root, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failures))
        element.set("errors", "0")
        element.set("time", total)
    # junit-10.xsd (Jenkins xUnit) has `skipped` on <testsuite> only, not <testsuites>.
    suite.set("skipped", str(skipped))
    ET.indent(root)
    out = io.BytesIO()
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out.getvalue() + b"\n"


def write_junit(record: dict[str, Any], events: list[dict[str, Any]], dest: Path) -> None:
    """Write the run as a JUnit XML report (GitLab `artifacts:reports:junit`), atomically.

    One `<testsuite name="sbx run <run_id>">`: a `sbx.steps` test case per step (a
    failure with the reason unless it succeeded, `<skipped>` if it was skipped, time =
    the step's duration), then per step a `sbx.egress.<step>` test case per finding,
    each a failure of type `denied`, `audit` or `probe`. `record` is run.json's content,
    `events` the parsed lines of events.jsonl.
    """
    _write_atomic(dest, junit_xml(record, events))


def _rule_line(finding: Finding, spec_path: str) -> int:
    """The line of the allow entry that matched, if it is in the spec file; else 1."""
    if not finding.rule_source:
        return 1
    file, _, line = finding.rule_source.rpartition(":")
    # A rule from another file would point at the wrong line of this one.
    # isascii: str.isdigit() accepts "²", which int() refuses.
    if not (line.isascii() and line.isdigit()) or int(line) < 1 \
            or Path(file).name != Path(spec_path).name:
        return 1
    return int(line)


def codequality(record: dict[str, Any], events: list[dict[str, Any]],
                spec_path: str) -> list[dict[str, Any]]:
    """The Code Quality issues for a run; see `write_codequality`."""
    path = spec_path[2:] if spec_path.startswith("./") else spec_path
    return [{
        "type": "issue",
        "description": _xml(finding.summary()),
        "check_name": CHECK_NAME[finding.verdict],
        "categories": ["Security"],
        "fingerprint": finding.fingerprint,
        "severity": SEVERITY[finding.verdict],
        "location": {"path": path, "lines": {"begin": _rule_line(finding, spec_path)}},
    } for finding in findings(record, events)]


def write_codequality(record: dict[str, Any], events: list[dict[str, Any]], dest: Path,
                      spec_path: str) -> None:
    """Write the run's egress findings as a GitLab Code Quality report, atomically.

    A JSON array with one issue per finding: `description`, `check_name`,
    `fingerprint` (sha256 of step, kind, destination and verdict, stable across runs),
    `severity` (`critical` denied, `major` audit, `blocker` a probe that got through)
    and `location` (`spec_path`, relative to the repository root as GitLab expects,
    at the line of the matching allow entry or line 1).
    """
    issues = codequality(record, events, spec_path)
    _write_atomic(dest, (json.dumps(issues, indent=2) + "\n").encode("utf-8"))
