"""`sbx plan`: replay recorded flows through a changed policy and report what would flip."""


from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sbx.pipelines.policy_tools.decide import (
    ALLOWED,
    Flow,
    _recorded_as,
    _unique,
    decide,
)
from sbx.sandbox.policy import (
    Policy,
)

# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Change:
    """A recorded flow whose verdict the new policy changes.

    `before` is the recorded verdict as allowed/denied (audit counts as denied), `after`
    the new policy's verdict (allowed, denied, or audit when the new policy is in audit
    mode), `rule` the text of the new policy's entry that allows it, if any.
    """

    flow: Flow
    before: str
    after: str
    rule: str | None


@dataclass(frozen=True)
class PlanResult:
    """The outcome of replaying recorded flows through new policies.

    `unchanged` counts the distinct flows of compared steps that keep their verdict.
    `unknown_steps` names steps that could not be compared: in the new spec with no
    recorded flows, or recorded but missing from the spec.
    """

    newly_denied: tuple[Change, ...]
    newly_allowed: tuple[Change, ...]
    unchanged: int
    unknown_steps: tuple[str, ...]


def plan(policies: Mapping[str, Policy], flows: Sequence[Flow]) -> PlanResult:
    """Replay `flows` through `policies` (step name -> new policy) and report what flips.

    A flow counts as allowed after only when the new policy allows it outright; audit
    (the new policy in audit mode) counts as denied, as it does before. Changes are
    grouped by step (steps in name order), in the order the flows were recorded.
    """
    denied: list[Change] = []
    allowed: list[Change] = []
    unchanged = 0
    unique = _unique(flows)
    for flow in unique:
        policy = policies.get(flow.step)
        if policy is None:
            continue
        before = _recorded_as(flow)
        after, rule = decide(policy, flow)
        if (after == ALLOWED) == (before == ALLOWED):
            unchanged += 1
        elif after == ALLOWED:
            allowed.append(Change(flow, before, after, rule.text if rule else None))
        else:
            denied.append(Change(flow, before, after, None))
    recorded = {f.step for f in unique}
    unknown = (set(policies) - recorded) | (recorded - set(policies))

    def by_step(changes: list[Change]) -> tuple[Change, ...]:
        return tuple(sorted(changes, key=lambda c: c.flow.step))  # stable: keeps record order

    return PlanResult(by_step(denied), by_step(allowed), unchanged, tuple(sorted(unknown)))


def _printable(text: str) -> str:
    # Names come from the step's own traffic (Host headers, CONNECT targets): never let
    # them put control sequences on the user's terminal.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def render_plan(result: PlanResult) -> str:
    """Human text: a summary line, then per step one line per change.

    ``- kind target: recorded -> new`` for a flow the new policy denies, ``+ ... by RULE``
    for one it newly allows.
    """
    lines = [f"sbx plan: {len(result.newly_denied)} newly denied, "
             f"{len(result.newly_allowed)} newly allowed, {result.unchanged} unchanged"]
    changes = [("-", c) for c in result.newly_denied] + [("+", c) for c in result.newly_allowed]
    for step in sorted({c.flow.step for _, c in changes}):
        lines.append(f"{_printable(step)}:")
        for sign, change in changes:
            if change.flow.step != step:
                continue
            flow = change.flow
            line = (f"  {sign} {flow.kind} {_printable(flow.target())}: "
                    f"{flow.verdict} -> {change.after}")
            if change.rule is not None:
                line += f" by {_printable(change.rule)}"
            lines.append(line)
    if not changes:
        lines.append("no recorded flow changes its verdict")
    if result.unknown_steps:
        lines.append("not compared (no recorded flows, or not in the spec): "
                     + ", ".join(_printable(s) for s in result.unknown_steps))
    return "\n".join(lines) + "\n"


