"""Reading a run directory for the report: every record is untrusted and may be missing or
half written, so every accessor tolerates missing keys and wrong types and collects
problems instead of raising."""

from __future__ import annotations

import errno
import html
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sbx.attest.verify.evidence import EVENTS_FILE
from sbx.pipelines.run.records import is_decision, parse_time

RUN_FILE: Final = "run.json"

# --------------------------------------------------------------------------- reading


def _e(value: Any) -> str:
    """Text for markup: None is empty, everything else is escaped, quotes included."""
    return "" if value is None else html.escape(str(value), quote=True)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _read_regular(path: Path, limit: int | None = None) -> tuple[bytes | None, str | None]:
    """A regular file's bytes, never through a symbolic link; (None, why) otherwise.

    A run directory can come from elsewhere: a link to /etc/shadow named
    attestations/x.dsse.json must not end up embedded in a published report.
    """
    try:
        # O_NONBLOCK: a FIFO planted as events.jsonl must not hang the report.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path.name}: not read: a symbolic link"
        return None, f"{path.name}: not read: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, f"{path.name}: not read: not a regular file"
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            data = fh.read() if limit is None else fh.read(limit + 1)
        return data, None
    except OSError as exc:
        return None, f"{path.name}: not read: {exc.strerror or exc}"
    finally:
        if fd >= 0:
            os.close(fd)


@dataclass
class _Step:
    """One step as the page shows it: its run.json entry and its events."""

    index: int
    name: str
    data: dict[str, Any]
    depth: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    probing: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # checked HTTP requests

    @property
    def anchor(self) -> str:
        # Ids come from the position, never from the untrusted name.
        return f"step-{self.index}"

    @property
    def status(self) -> str:
        return _s(self.data.get("status")) or "unknown"

    @property
    def needs(self) -> list[str]:
        return [n for n in _l(self.data.get("needs")) if isinstance(n, str)]

    def flow_counts(self) -> dict[str, int]:
        """run.json's counts, else counted from the events (an interrupted run)."""
        recorded = _d(self.data.get("flows"))
        if recorded:
            return {k: v if isinstance(v, int) else 0 for k, v in recorded.items()}
        counts = Counter(_s(e.get("verdict")) for e in self.decisions)
        return {k: counts.get(k, 0) for k in ("allowed", "audit", "denied", "failed")}


@dataclass
class _Run:
    record: dict[str, Any]
    steps: list[_Step]
    unattributed: list[dict[str, Any]]
    events_present: bool
    problems: list[str]


def _load_record(run_dir: Path, problems: list[str]) -> dict[str, Any]:
    data, why = _read_regular(run_dir / RUN_FILE)
    if why:
        problems.append(why)
    if data is None:
        problems.append(f"no {RUN_FILE}: the run left no record (or this is not a run "
                        "directory)")
        return {}
    try:
        record = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        problems.append(f"{RUN_FILE} is not JSON ({exc}); it may have been cut short")
        return {}
    if not isinstance(record, dict):
        problems.append(f"{RUN_FILE} is not a JSON object")
        return {}
    return record


def _step_map(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`steps` from run.json; a single-step record (`step` plus top-level facts) too."""
    steps = record.get("steps")
    if isinstance(steps, dict):
        return {str(k): _d(v) for k, v in steps.items()}
    single = record.get("step")
    if isinstance(single, dict) and single.get("name"):
        # The single-step form keeps the step's facts at the top level.
        facts = ("image", "policy", "docker", "probes", "outputs", "flows", "faults",
                 "started", "step_started", "ended")
        merged: dict[str, Any] = {k: record[k] for k in facts if k in record}
        merged.update(single)
        return {str(single["name"]): merged}
    return {}


def _load_events(run_dir: Path, problems: list[str]) -> tuple[list[dict[str, Any]], bool]:
    data, why = _read_regular(run_dir / EVENTS_FILE)
    if why:
        problems.append(why)
    if data is None:
        return [], False
    events: list[dict[str, Any]] = []
    bad = 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad += 1  # the last line of a killed run can be half written
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            bad += 1
    if bad:
        problems.append(f"{EVENTS_FILE}: {bad} line(s) are not JSON objects and are not shown")
    return events, True


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = parse_time(value)
    except ValueError:
        return None
    # A stamp without a zone would not compare with sbx's own: read it as UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _depths(steps: dict[str, _Step]) -> None:
    """Column of each step: 0 without needs, else one past its deepest need.

    run.json is untrusted, so neither a cycle nor a chain of thousands of steps may
    loop or overflow the stack: the walk is iterative, and a need met again while
    its own depth is being worked out counts as depth 0.
    """
    done: dict[str, int] = {}
    for root in steps:
        if root in done:
            continue
        stack = [root]
        visiting = {root}
        while stack:
            name = stack[-1]
            needs = [n for n in steps[name].needs if n in steps and n != name]
            pending = [n for n in needs if n not in done and n not in visiting]
            if pending:
                stack.append(pending[0])
                visiting.add(pending[0])
                continue
            done[name] = 1 + max((done.get(n, 0) for n in needs), default=-1)
            stack.pop()
            visiting.discard(name)
    for name, step in steps.items():
        step.depth = done[name]


def _load(run_dir: Path) -> _Run:
    problems: list[str] = []
    record = _load_record(run_dir, problems)
    raw = _step_map(record)
    order = [n for n in _l(record.get("order")) if isinstance(n, str) and n in raw]
    names = list(dict.fromkeys([*order, *sorted(raw)]))
    steps = {n: _Step(i, n, raw[n]) for i, n in enumerate(names)}
    _depths(steps)
    events, present = _load_events(run_dir, problems)
    unattributed: list[dict[str, Any]] = []
    for event in events:
        step = steps.get(_s(event.get("step")))
        if step is None:
            unattributed.append(event)
            continue
        if event.get("kind") == "http":
            step.requests.append(event)
        elif is_decision(event):
            # Decisions before the step's own start are the probes' (docs/records.md).
            started = _time(step.data.get("step_started"))
            when = _time(event.get("time"))
            if started is None or (when is not None and when < started):
                step.probing.append(event)
            else:
                step.decisions.append(event)
        else:
            step.other.append(event)
    return _Run(record, list(steps.values()), unattributed, present, problems)


