"""Checked HTTP requests in `sbx plan` and `sbx learn`.

`recorded_requests` reads the `http` events of each step's own traffic; `plan_requests`
replays them through changed action rules (the gateway's own `Policy.request_rule`);
`learn_actions` proposes method and path-prefix rules for the hosts whose requests a
run let through, never a path (or a host) it did not see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sbx.pipelines.policy_tools.recorded import _after, _events, _port, _read_steps, _text
from sbx.pipelines.policy_tools.replay import _printable
from sbx.sandbox.policy import AmbiguousPath, Policy, normalize_path

_PASSED = ("allowed", "audit")
# Denials a rule decided, and a changed rule could undo; every other refusal stays.
_RULE_REASONS = ("no rule allows", "ambiguous path")


@dataclass(frozen=True)
class Request:
    """One checked request of a step's own traffic, as recorded (path without query)."""

    step: str
    host: str
    port: int
    method: str
    path: str
    verdict: str
    inspected: bool

    def target(self) -> str:
        return f"{self.method} {self.host}:{self.port}{self.path}"


def recorded_requests(run_dir: Path) -> list[Request]:
    """The distinct checked requests of each step, in the order recorded."""
    steps = _read_steps(run_dir / "run.json")
    found: dict[Request, None] = {}
    for event in _events(run_dir / "events.jsonl"):
        step = event.get("step")
        if event.get("kind") != "http" or not isinstance(step, str) or step not in steps:
            continue
        started = steps[step].started
        if started is None or not _after(event.get("time"), started):
            continue
        host, method, path = (_text(event.get(k)) for k in ("host", "method", "path"))
        port = _port(event.get("dst_port"))
        verdict = _text(event.get("verdict"))
        if None in (host, method, path, port, verdict):
            continue  # a connection refused before any request was read
        assert host and method and path and port is not None and verdict
        reason = _text(event.get("reason")) or ""
        if verdict not in _PASSED and not reason.startswith(_RULE_REASONS):
            continue  # refused for what it was (smuggling, another Host): no rule changes it
        found.setdefault(Request(step, host, port, method, path, verdict,
                                 event.get("inspected") is True), None)
    return list(found)


def _decide(policy: Policy, request: Request) -> tuple[str, str | None]:
    try:
        path: str | None = normalize_path(request.path)
    except AmbiguousPath:
        path = None
    rule = policy.request_rule(request.host, request.port, request.method, path)
    if rule is not None:
        return "allowed", rule.label
    return ("audit" if policy.mode == "audit" else "denied"), None


@dataclass(frozen=True)
class RequestChange:
    """A recorded request whose verdict the new policy changes."""

    request: Request
    after: str
    rule: str | None


def plan_requests(policies: Mapping[str, Policy],
                  requests: Sequence[Request]) -> tuple[list[RequestChange], list[RequestChange]]:
    """(newly denied, newly allowed) requests under `policies` (step -> new policy)."""
    denied: list[RequestChange] = []
    allowed: list[RequestChange] = []
    for request in requests:
        policy = policies.get(request.step)
        if policy is None:
            continue
        after, rule = _decide(policy, request)
        before_ok = request.verdict == "allowed"
        if (after == "allowed") == before_ok:
            continue
        (allowed if after == "allowed" else denied).append(RequestChange(request, after, rule))
    return denied, allowed


def render_request_plan(denied: Sequence[RequestChange],
                        allowed: Sequence[RequestChange]) -> str:
    """Human text: one line per request that flips, by step ('' when none flips)."""
    if not denied and not allowed:
        return ""
    lines = [f"requests: {len(denied)} newly denied, {len(allowed)} newly allowed"]
    changes = [("-", c) for c in denied] + [("+", c) for c in allowed]
    for step in sorted({c.request.step for _, c in changes}):
        lines.append(f"{_printable(step)}:")
        for sign, change in changes:
            if change.request.step == step:
                line = (f"  {sign} http {_printable(change.request.target())}: "
                        f"{change.request.verdict} -> {change.after}")
                if change.rule is not None:
                    line += f" by {_printable(change.rule)}"
                lines.append(line)
    return "\n".join(lines) + "\n"


def _prefix(path: str) -> str:
    """The pattern a learned rule uses for `path`: its first segment and below."""
    segments = path.split("/")[1:]
    if not segments or segments == [""]:
        return "/"
    if len(segments) == 1:
        return path  # a file at the top: exactly it
    return f"/{segments[0]}/**"


def learn_actions(requests: Sequence[Request]) -> dict[str, list[dict[str, object]]]:
    """Per step, one mapping allow entry per host:port whose requests the run let through
    (inspected TLS or plain HTTP): the methods seen and the first-segment prefixes of the
    paths seen."""
    seen: dict[str, dict[tuple[str, int], tuple[set[str], set[str]]]] = {}
    for r in requests:
        if r.verdict not in _PASSED:
            continue
        try:
            path = normalize_path(r.path)
        except AmbiguousPath:
            continue  # never learned: a rule could not match it anyway
        methods, paths = seen.setdefault(r.step, {}).setdefault((r.host, r.port),
                                                                  (set(), set()))
        methods.add(r.method)
        paths.add(_prefix(path))
    return {step: [{"host": host, "port": port, "methods": sorted(methods),
                    "paths": sorted(paths)}
                   for (host, port), (methods, paths) in sorted(hosts.items())]
            for step, hosts in sorted(seen.items())}


def render_learned_actions(learned: Mapping[str, Sequence[Mapping[str, object]]]) -> str:
    """YAML snippets (mapping allow entries) to put in place of the host:port entries."""
    out: list[str] = []
    for step, entries in learned.items():
        out.append(f"# step {_printable(step)}: action-level rules from the requests it "
                   "made; use them in place of the host:port entries above")
        out.append("egress:")
        out.append("  allow:")
        for entry in entries:
            out.append(f"    - host: {_printable(str(entry['host']))}")
            out.append(f"      port: {entry['port']}")
            methods = ", ".join(str(m) for m in entry["methods"])  # type: ignore[attr-defined]
            out.append(f"      methods: [{methods}]")
            paths = ", ".join(f'"{_printable(str(p))}"'
                              for p in entry["paths"])  # type: ignore[attr-defined]
            out.append(f"      paths: [{paths}]")
        out.append("")
    return "\n".join(out)
