"""Reading a run's records (run.json, events.jsonl) into the flows a policy decides."""


from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sbx.errors import InputError
from sbx.pipelines.policy_tools.decide import (
    _POLICY_KINDS,
    DENIED,
    VERDICTS,
    Flow,
    decide,
)
from sbx.pipelines.run.records import is_decision, parse_time, read_events
from sbx.sandbox.policy import (
    Policy,
    PolicyError,
    parse_rule,
)


def _port(value: Any) -> int | None:
    # bool is an int subclass; a `true` port is garbage, not port 1.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class _StepRecord:
    started: datetime | None
    policy: Policy | None


def _read_steps(run_json: Path) -> dict[str, _StepRecord]:
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{run_json}: not found; pass the directory of a run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{run_json}: unreadable ({exc}); pass the directory of a run") from None
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, dict):
        raise InputError(f"{run_json}: has no 'steps' map; is this an sbx run record?")
    out: dict[str, _StepRecord] = {}
    for name, record in steps.items():
        if not isinstance(name, str) or not isinstance(record, dict):
            continue
        started: datetime | None = None
        raw = record.get("step_started")
        if isinstance(raw, str):
            try:
                started = parse_time(raw)
            except ValueError:
                started = None
        out[name] = _StepRecord(started, _recorded_policy(record.get("policy")))
    return out


def _recorded_policy(data: Any) -> Policy | None:
    """The policy the step ran with, rebuilt from run.json; None when it cannot be."""
    if not isinstance(data, dict):
        return None
    allow = data.get("allow", [])
    mode = data.get("mode", "enforce")
    if not isinstance(allow, list) or not isinstance(mode, str):
        return None
    try:
        return Policy(mode=mode, rules=tuple(parse_rule(text) for text in allow))
    except PolicyError:
        return None


def _events(path: Path) -> Iterable[dict[str, Any]]:
    """The run's events; a missing or unreadable file is the user's input error."""
    try:
        yield from read_events(path, strict=True)
    except FileNotFoundError:
        raise InputError(f"{path}: not found; pass the directory of a run") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def recorded_flows(run_dir: Path) -> list[Flow]:
    """The distinct egress decisions each step's own traffic got, in the order recorded.

    Reads ``run.json`` (each step's ``step_started`` and policy) and ``events.jsonl``.
    Left out: decisions before the step's ``step_started`` (the probes' own), steps that
    never started, ``phase: close`` events, lifecycle and probe events, and lines that
    are not JSON objects or lack a readable time, step or verdict. Identical flows are
    listed once. Raises `InputError` when run.json or events.jsonl is missing or run.json
    is not a run record.
    """
    steps = _read_steps(run_dir / "run.json")
    flows: dict[Flow, None] = {}
    for event in _events(run_dir / "events.jsonl"):
        step = event.get("step")
        if not isinstance(step, str) or step not in steps or not is_decision(event):
            continue
        record = steps[step]
        if record.started is None or not _after(event.get("time"), record.started):
            continue  # the probes' decisions (or an unreadable time), not the step's
        kind = event.get("kind")
        verdict = event.get("verdict")
        if not isinstance(kind, str) or verdict not in VERDICTS:
            continue
        name = _text(event.get("name"))
        ip = _text(event.get("dst_ip"))
        port = _port(event.get("dst_port"))
        flow = Flow(step=step, kind=kind, name=name, ip=ip, port=port, verdict=str(verdict),
                    rule=_text(event.get("rule")))
        if verdict == DENIED and _denied_regardless(event, flow, record.policy):
            flow = replace(flow, always_denied=True)
        flows.setdefault(flow, None)
    return list(flows)


def _after(time: Any, started: datetime) -> bool:
    """True when an event `time` is at or after `started` (as `EventLog.flow_counts`)."""
    try:
        return parse_time(str(time)) >= started
    except (ValueError, TypeError):  # TypeError: a time without a zone against one with
        return False



def _denied_regardless(event: Mapping[str, Any], flow: Flow, policy: Policy | None) -> bool:
    """True when the recorded denial did not come from the policy.

    The agent's own denials (its firewall, the gateway unreachable) are never policy
    decisions for TCP and DNS. Otherwise, a denial of a flow the run's own policy lets
    through (allowed, or audit in audit mode) was the gateway refusing the address.
    """
    if event.get("source") == "agent":
        return flow.kind in _POLICY_KINDS
    if policy is None:
        return False
    verdict, _ = decide(policy, flow)
    return verdict != DENIED


