"""The isolation checks of `sbx verify`: each step's sandbox against the release policy
(internal networks, capabilities, privileges, probes, destinations, no shared networks)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

from sbx.attest.verify.actions import check_actions
from sbx.attest.verify.model import (
    Check,
    CheckResult,
    Status,
    _result,
    _Run,
)
from sbx.attest.verify.policy import ReleasePolicy, destination_allowed
from sbx.attest.wire import (
    Sandbox,
)


def _per_sandbox(check: Check, enabled: bool, what: str,
                 judge: Iterable[tuple[str, Sandbox | None]],
                 test: Callable[[str, Sandbox], str | None]) -> CheckResult:
    if not enabled:
        return CheckResult(check, Status.SKIP, "not required by the policy")
    problems: list[str] = []
    count = 0
    for step, sandbox in judge:
        count += 1
        if sandbox is None:
            problems.append(f"{step}: no sandbox came up")
            continue
        problem = test(step, sandbox)
        if problem:
            problems.append(f"{step}: {problem}")
    if count == 0:
        problems.append("no isolation Statements")
    return _result(check, problems, f"{count} step(s): {what}")


def _capabilities(_: str, s: Sandbox) -> str | None:
    if "ALL" not in s.step.capDrop:
        return f"capabilities not all dropped (cap_drop {s.step.capDrop})"
    if s.step.capAdd:
        return f"capabilities added: {', '.join(s.step.capAdd)}"
    if s.step.privileged:
        return "privileged container"
    if not any(o.startswith("no-new-privileges") for o in s.step.securityOpt):
        return "no-new-privileges not set"
    if not s.agentCaps:
        return "the agent did not report its capabilities"
    sets = {k: v for k, v in s.agentCaps.items() if k.startswith("Cap")}
    try:
        left = [k for k, v in sorted(sets.items()) if int(v, 16)]
    except ValueError:
        return "the agent's capability sets are not hexadecimal"
    if len(sets) < 5 or left:
        return f"the agent kept capabilities ({', '.join(left) or 'sets missing'})"
    if s.agentCaps.get("NoNewPrivs") != "1":
        return "the agent runs without no-new-privs"
    return None


def _probes(_: str, s: Sandbox) -> str | None:
    if not s.probes:
        return "no probes were run"
    through = [f"{p.name} {p.target}" for p in [*s.probes, *s.peerProbes] if not p.blocked]
    return f"probes got through: {', '.join(through)}" if through else None


def check_isolation(run: _Run, policy: ReleasePolicy) -> list[CheckResult]:
    """Every isolation claim the release policy asks for."""
    iso = policy.isolation
    boxes = run.sandboxes()
    results = [
        _per_sandbox(Check.INTERNAL_NETWORK, iso.internal_network,
                     "each on an internal network", boxes,
                     lambda _, s: None if s.network.internal
                     else f"network {s.network.name} is not internal"),
        _distinct(iso.distinct_networks, boxes),
        _per_sandbox(Check.CAPABILITIES, iso.no_capabilities,
                     "no capabilities, no-new-privileges", boxes, _capabilities),
        _per_sandbox(Check.PROBES, iso.probes_blocked, "every probe blocked", boxes,
                     _probes),
        _per_sandbox(Check.DENIED_FLOWS, True,
                     f"at most {iso.max_denied_flows} denied flow(s) each", boxes,
                     lambda _, s: None if s.flows.get("denied", 0) <= iso.max_denied_flows
                     else f"{s.flows.get('denied', 0)} denied egress attempt(s), the policy "
                     f"allows {iso.max_denied_flows}"),
        _per_sandbox(Check.EGRESS_MODE, not iso.allow_audit_mode, "egress enforced",
                     boxes, lambda _, s: None if s.policy.get("mode") == "enforce"
                     else f"egress policy mode is {s.policy.get('mode')!r}, not enforce"),
        _per_sandbox(Check.DESTINATIONS, bool(policy.destinations),
                     "destinations within the policy", boxes,
                     lambda step, s: _destinations(policy, step, s)),
        check_actions(run, policy),
    ]
    return results


def _destinations(policy: ReleasePolicy, step: str, s: Sandbox) -> str | None:
    allowed = policy.destinations_for(step)
    if allowed is None:
        return None
    extra = [d for d in s.destinations if not destination_allowed(d, allowed)]
    return f"reached {', '.join(extra)}, outside the policy's set" if extra else None


def _distinct(enabled: bool,
              boxes: list[tuple[str, Sandbox | None]]) -> CheckResult:
    if not enabled:
        return CheckResult(Check.DISTINCT_NETWORKS, Status.SKIP, "not required by the policy")
    problems: list[str] = []
    owners: dict[str, set[str]] = defaultdict(set)
    for step, s in boxes:
        if s is None:
            problems.append(f"{step}: no sandbox came up")
            continue
        for key in [f"network {s.network.id[:12]}", f"subnet {s.network.subnet}",
                    *(f"container {c[:12]}" for c in s.network.attached),
                    *(f"container {c[:12]}" for c in s.containers.values())]:
            owners[key].add(step)
    counts = Counter(step for step, _ in boxes)
    problems += [f"step {step!r} has {n} isolation Statements" for step, n in counts.items()
                 if n > 1]
    problems += [f"{key} shared by {', '.join(sorted(steps))}"
                 for key, steps in sorted(owners.items()) if len(steps) > 1]
    return _result(Check.DISTINCT_NETWORKS, problems,
                   f"{len(boxes)} step(s), no network or container shared")

