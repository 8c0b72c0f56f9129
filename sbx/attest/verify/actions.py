"""`isolation.actions`: what each step's checked HTTP requests and TLS inspection show.

A step whose signed policy has action-level rules must carry the fingerprint of the run
CA its gateway inspected with; denied requests are within the release policy's bound;
and every host the release policy names under `inspected_hosts` is covered, in the
signed policy, by an action-level rule (so its TLS was inspected or refused, never
passed through).
"""

from __future__ import annotations

from typing import Any

from sbx.attest.verify.model import Check, CheckResult, _result, _Run
from sbx.attest.verify.policy import ReleasePolicy
from sbx.attest.wire import Sandbox


def _covers(rule: dict[str, Any], host: str) -> bool:
    host = host.lower().rstrip(".")
    suffix = rule.get("suffix")
    return rule.get("host") == host or (isinstance(suffix, str) and host.endswith("." + suffix))


def _judge(policy: ReleasePolicy, step: str, s: Sandbox) -> str | None:
    rules = s.policy.get("rules")
    inspecting = [r for r in rules if isinstance(r, dict) and r.get("inspect") is True] \
        if isinstance(rules, list) else []
    actions = s.actions or {}
    fingerprint = actions.get("caFingerprint")
    if inspecting and not (isinstance(fingerprint, str) and fingerprint.startswith("sha256:")):
        return "the policy has action-level rules but no run CA fingerprint was recorded"
    denied = actions.get("deniedCount", 0)
    if not isinstance(denied, int) or denied < 0:
        return "the denied request count is not a number"
    if len(actions.get("denied") or []) > denied:
        return "more denied requests itemized than counted"
    bound = policy.isolation.max_denied_requests
    if denied > bound:
        shown = "; ".join(f"{d.get('method')} {d.get('host')}{d.get('path') or ''}"
                          for d in (actions.get("denied") or [])[:3])
        return f"{denied} HTTP request(s) denied ({shown}), the policy allows {bound}"
    missing = [h for h in policy.inspected_hosts_for(step)
               if not any(_covers(r, h) for r in inspecting)]
    if missing:
        return (f"{', '.join(missing)} not inspected: no action-level rule of the signed "
                "policy covers it")
    return None


def check_actions(run: _Run, policy: ReleasePolicy) -> CheckResult:
    """One result for every step's isolation Statement."""
    problems: list[str] = []
    boxes = run.sandboxes()
    requests = 0
    for step, sandbox in boxes:
        if sandbox is None:
            continue  # no sandbox: the other isolation checks say so
        problem = _judge(policy, step, sandbox)
        if problem:
            problems.append(f"{step}: {problem}")
        for counts in ((sandbox.actions or {}).get("requests") or {}).values():
            if isinstance(counts, dict):
                requests += sum(v for v in counts.values() if isinstance(v, int))
    return _result(Check.ACTIONS, problems,
                   f"{len(boxes)} step(s), {requests} checked request(s) within the policy")
