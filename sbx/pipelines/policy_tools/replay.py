"""Dry runs of an egress policy against a run's records (`sbx plan`), and allowlist learning.

`sbx plan pipeline.yaml --against RUN_DIR` replays the egress decisions an earlier
run recorded through a changed policy and reports which of them would flip: flows the
new policy would deny, and flows it would newly allow. `sbx learn RUN_DIR` proposes, per
step, the smallest allowlist that covers what the run let through (typically an audit
run). Both read only the run's records (docs/records.md) and decide with the same
matcher the gateway uses (`sbx.sandbox.policy`), following the gateway's own order of
checks (`sbx.sandbox.runtime.gateway.Gate`):

* DNS: a name is answered when some host/suffix rule allows it on any port
  (`Policy.allows_dns`); otherwise NXDOMAIN.
* TCP to a name (CONNECT host, SNI or Host): `Policy.match_name(name, port)`; a name
  that is an IP literal is judged as that IP, exactly as `Gate.decide_name` does.
* TCP to a bare IP: internal addresses pass only when an IP rule names them, sbx's
  step pool never; then `Policy.match_ip`, and failing that the name the gateway's DNS
  last answered with that IP (for an allowed name), judged by name and port.
* UDP, ICMP, IPv6 and every other kind: always denied. There is no route for them;
  the agent drops and logs them whatever the policy says.

What a dry run cannot know is marked instead of guessed: a recorded denial the gateway
made although the run's own policy allowed the flow (the name resolved only to internal
addresses, the address was one the gateway refuses, the agent could not reach the
gateway) is `Flow.always_denied`, and stays denied under every policy.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import yaml

from sbx.errors import InputError
from sbx.pipelines.run.records import is_decision, parse_time
from sbx.sandbox.network import STEP_POOL
from sbx.sandbox.policy import (
    IPNetwork,
    Policy,
    PolicyError,
    Rule,
    in_networks,
    is_internal,
    normalize_name,
    parse_rule,
)

ALLOWED: Final = "allowed"
AUDIT: Final = "audit"
DENIED: Final = "denied"
FAILED: Final = "failed"
VERDICTS: Final = (ALLOWED, AUDIT, DENIED, FAILED)

# The gateway's `refused` list is the host's addresses plus sbx's step pool. The host's
# addresses are not in the records, so only the pool can be mirrored here; a recorded
# denial caused by a host address is caught by `Flow.always_denied` instead.
_REFUSED: Final[tuple[IPNetwork, ...]] = (STEP_POOL,)

# Kinds a policy decides. Everything else is dropped by the agent's firewall.
_POLICY_KINDS: Final = ("dns", "tcp")


# --------------------------------------------------------------------------- flows


@dataclass(frozen=True)
class Flow:
    """One recorded egress decision on a step's own traffic (after its `step_started`).

    `verdict` is the recorded one (allowed, audit, denied or failed) and `rule` the text
    of the allow entry that matched then, if any. Two fields carry what the gateway's
    decision depended on beyond the policy:

    * `answered`: for a TCP flow to a bare IP, the names the step's DNS answers mapped
      that IP to before the flow, oldest first (each name once, at its latest place).
      The gateway lets such a flow through when the last of them that the policy
      answers for is allowed on the flow's port.
    * `always_denied`: the gateway or agent denied this flow although the run's own
      policy allowed it (internal-only resolution, a refused address, the gateway
      unreachable), so no allow entry would change the outcome.
    """

    step: str
    kind: str
    name: str | None
    ip: str | None
    port: int | None
    verdict: str
    rule: str | None
    answered: tuple[str, ...] = ()
    always_denied: bool = False

    def target(self) -> str:
        """The destination as a user reads it: ``name:port``, ``ip:port`` or ``[v6]:port``."""
        if self.kind == "dns":
            return self.name or "?"
        host = self.name or self.ip or "?"
        if self.name is None and self.ip is not None and ":" in self.ip:
            host = f"[{self.ip}]"
        text = host if self.port is None else f"{host}:{self.port}"
        if self.name is not None and self.ip is not None:
            text += f" ({self.ip})"
        return text


def _canonical_ip(text: str) -> str | None:
    """The address in one spelling, so DNS answers and flows compare equal; None if not one."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


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
    """Every JSON object line of events.jsonl, in the order written; other lines skipped."""
    try:
        # errors="replace": one undecodable line must not hide the rest of the record.
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    yield event
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
    # Per step, IP -> names its DNS answers carried, oldest first: the gateway's
    # `answered` map, kept as a history so a dry run can replay it under another policy.
    history: dict[str, dict[str, list[str]]] = {}
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
        answered: tuple[str, ...] = ()
        if kind == "tcp" and name is None and ip is not None:
            key = _canonical_ip(ip)
            answered = tuple(history.get(step, {}).get(key, ())) if key else ()
        flow = Flow(step=step, kind=kind, name=name, ip=ip, port=port, verdict=str(verdict),
                    rule=_text(event.get("rule")), answered=answered)
        if verdict == DENIED and _denied_regardless(event, flow, record.policy):
            flow = replace(flow, always_denied=True)
        flows.setdefault(flow, None)
        if kind == "dns" and name is not None:
            _remember_answers(history.setdefault(step, {}), name, event.get("answers"))
    return list(flows)


def _after(time: Any, started: datetime) -> bool:
    """True when an event `time` is at or after `started` (as `EventLog.flow_counts`)."""
    try:
        return parse_time(str(time)) >= started
    except (ValueError, TypeError):  # TypeError: a time without a zone against one with
        return False


def _remember_answers(seen: dict[str, list[str]], name: str, answers: Any) -> None:
    if not isinstance(answers, list):
        return
    for answer in answers:
        key = _canonical_ip(answer) if isinstance(answer, str) else None
        if key is None:
            continue
        names = seen.setdefault(key, [])
        if name in names:
            names.remove(name)  # the gateway's map keeps the latest answer for an IP
        names.append(name)


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


# --------------------------------------------------------------------------- deciding


def _blocked_address(policy: Policy, ip: str, port: int | None) -> bool:
    """`Gate._blocked_address`: internal only with an IP rule naming it, refused never."""
    try:
        if in_networks(ip, _REFUSED):
            return True
        return is_internal(ip) and policy.match_ip(ip, port) is None
    except PolicyError:
        return True


def _ip_literal(text: str) -> str | None:
    """The address when `text` is an IP literal (brackets allowed), as the gateway tests it."""
    stripped = text.strip("[]")
    try:
        ipaddress.ip_address(stripped)
    except ValueError:
        return None
    return stripped


def _decide_ip(policy: Policy, ip: str, port: int | None,
               answered: Sequence[str]) -> tuple[bool, Rule | None]:
    """`Gate.decide_ip`: (blocked, the matching rule or None)."""
    if _blocked_address(policy, ip, port):
        return True, None
    rule = policy.match_ip(ip, port)
    if rule is None:
        # The gateway remembers only answers for names the policy allows, latest last.
        name = next((n for n in reversed(answered) if _dns_rule(policy, n) is not None), None)
        if name is not None:
            rule = policy.match_name(name, port)
    return False, rule


def _dns_rule(policy: Policy, name: str) -> Rule | None:
    try:
        return policy.allows_dns(normalize_name(name))
    except PolicyError:
        return None


def decide(policy: Policy, flow: Flow) -> tuple[str, Rule | None]:
    """What the gateway would decide for `flow` under `policy`: (verdict, matching rule).

    The verdict is ``allowed`` (with the rule), ``audit`` (no rule, policy in audit mode:
    let through and recorded as a violation) or ``denied``. Name resolution is not
    replayed: a flow is judged as if its name still resolved to the same public
    addresses, except that `Flow.always_denied` flows stay denied.
    """
    if flow.always_denied or flow.kind not in _POLICY_KINDS:
        return DENIED, None
    if flow.kind == "dns":
        if flow.name is None:
            return DENIED, None
        try:
            rule = policy.allows_dns(normalize_name(flow.name))
        except PolicyError:
            return DENIED, None  # the gateway answers NXDOMAIN to an invalid name
    else:
        literal = _ip_literal(flow.name) if flow.name is not None else None
        if flow.name is not None and literal is None:
            try:
                rule = policy.match_name(normalize_name(flow.name), flow.port)
            except PolicyError:
                return DENIED, None
        else:
            ip = literal or flow.ip
            if ip is None:
                return DENIED, None  # a request the gateway could not even parse
            blocked, rule = _decide_ip(policy, ip, flow.port, flow.answered)
            if blocked:
                return DENIED, None
    if rule is not None:
        return ALLOWED, rule
    return (AUDIT if policy.mode == AUDIT else DENIED), None


def _recorded_as(flow: Flow) -> str:
    """The recorded verdict as allowed/denied: what the policy of that run said.

    audit counts as denied (the policy did not allow it); failed means the gateway let
    the flow through and the connection then failed, so it was allowed when a rule
    matched and an audit pass otherwise.
    """
    if flow.verdict == ALLOWED or (flow.verdict == FAILED and flow.rule is not None):
        return ALLOWED
    return DENIED


def _unique(flows: Iterable[Flow]) -> list[Flow]:
    return list(dict.fromkeys(flows))


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


# --------------------------------------------------------------------------- learn


@dataclass(frozen=True)
class Unlearnable:
    """A recorded flow no proposed allow entry covers, and why."""

    flow: Flow
    reason: str


def _learnable_name(name: str) -> str | None:
    """The canonical name when an exact host entry for it is accepted, else None.

    A name spelled like an IP address parses as an IP rule, which never answers DNS,
    so it is not a learnable name.
    """
    try:
        canonical = normalize_name(name)
        rule = parse_rule(canonical)
    except PolicyError:
        return None
    return canonical if rule.host == canonical else None


def _ip_entry(ip: str, port: int | None) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    if port is None:
        return ip  # an unbracketed address: the allow syntax's IPv6-without-port form
    return f"{host}:{port}"


def _host_entry(name: str, port: int | None) -> str:
    return name if port is None else f"{name}:{port}"


def _one_flow(flow: Flow) -> tuple[str, int | None, bool] | str:
    """(host, port, is_name) the flow needs, or why it cannot be learned."""
    if flow.kind not in _POLICY_KINDS:
        return f"sbx never lets {flow.kind} traffic out; no allow entry changes that"
    if flow.always_denied:
        return "the gateway denied it whatever the allowlist said (internal address or fault)"
    # The destination first: "internal address" says more than "denied" about a flow
    # that no run, audit or not, would ever let through.
    needed = _destination(flow)
    if isinstance(needed, str):
        return needed
    if flow.verdict not in (ALLOWED, AUDIT, FAILED):
        return ("denied in the recorded run; learn proposes only what a run let through "
                "(record an audit run to learn it)")
    return needed


def _destination(flow: Flow) -> tuple[str, int | None, bool] | str:
    """(host, port, is_name) an entry for this DNS or TCP flow needs, or why none can."""
    if flow.kind == "dns":
        if flow.name is None:
            return "a DNS query without a name"
        canonical = _learnable_name(flow.name)
        if canonical is None:
            return f"{flow.name!r} cannot be an allow entry: {_refusal(flow.name)}"
        return canonical, None, True  # the port is ignored: DNS is answered for any port
    literal = _ip_literal(flow.name) if flow.name is not None else None
    if flow.name is not None and literal is None:
        canonical = _learnable_name(flow.name)
        if canonical is None:
            return f"{flow.name!r} cannot be an allow entry: {_refusal(flow.name)}"
        return canonical, flow.port, True
    ip = literal or flow.ip
    if ip is None:
        return "no destination was recorded"
    try:
        internal = in_networks(ip, _REFUSED) or is_internal(ip)
    except PolicyError:
        return f"{ip!r} is not an IP address"
    if internal:
        # Internal, loopback and metadata addresses are never proposed: the gateway refuses
        # them without an explicit IP rule, and writing one must be a human decision.
        return f"{ip} is an internal address; sbx learn never proposes one"
    # The gateway lets a bare-IP flow through by the name its DNS last answered for that
    # IP. Learned names are exactly the learnable ones, so the last learnable name in the
    # history is the one the gateway will use under the proposal; a name survives the
    # next address change, an IP entry does not.
    names = [n for n in map(_learnable_name, flow.answered) if n is not None]
    if names:
        return names[-1], flow.port, True
    entry = _ip_entry(ip, flow.port)
    try:
        parse_rule(entry)
    except PolicyError as exc:
        return str(exc)
    return ip, flow.port, False


def _refusal(name: str) -> str:
    try:
        rule = parse_rule(normalize_name(name))
    except PolicyError as exc:
        return str(exc)
    if rule.host is None:
        return "it reads as an IP address, and an IP entry never answers DNS"
    return "refused"


def _learn(flows: Sequence[Flow]) -> tuple[dict[str, list[str]], dict[str, list[Unlearnable]]]:
    # Per step: host -> ports needed, where None means "any port" (a TCP flow without a
    # port) and an empty set means "only looked up" (DNS).
    names: dict[str, dict[str, set[int | None]]] = {}
    ips: dict[str, set[str]] = {}
    skipped: dict[str, list[Unlearnable]] = {}
    for flow in _unique(flows):
        needed = _one_flow(flow)
        step_names = names.setdefault(flow.step, {})
        step_ips = ips.setdefault(flow.step, set())
        step_skipped = skipped.setdefault(flow.step, [])
        if isinstance(needed, str):
            step_skipped.append(Unlearnable(flow, needed))
            continue
        host, port, is_name = needed
        if not is_name:
            step_ips.add(_ip_entry(host, port))
        elif flow.kind == "dns":
            step_names.setdefault(host, set())
        else:
            step_names.setdefault(host, set()).add(port)
    proposal: dict[str, list[str]] = {}
    for step in sorted(names):
        entries = set(ips[step])
        for host, ports in names[step].items():
            if None in ports or not ports:
                # Any port: needed by a TCP flow without a port, or by a name that was only
                # looked up. A host:port entry also answers DNS, so this is the only case
                # a bare name is proposed.
                entries.add(host)
            else:
                entries.update(_host_entry(host, p) for p in ports)
        # Every entry is re-checked by the parser the step file uses; none should fail, but
        # a refused entry must never reach a proposal.
        kept = []
        for entry in entries:
            try:
                parse_rule(entry)
            except PolicyError:
                continue
            kept.append(entry)
        proposal[step] = sorted(kept)
    return proposal, {step: skipped[step] for step in sorted(skipped)}


def learn(flows: Sequence[Flow]) -> dict[str, list[str]]:
    """Per step, the smallest allow list (egress.allow entries, sorted) covering its flows.

    Covers every DNS and TCP flow the recorded run let through (allowed, audit, or failed
    after the gateway let it through): an exact ``host:port`` per name and port, a bare
    ``host`` only for names that were looked up and never connected to (DNS is answered
    for any port), never a wildcard. A flow to a bare IP is covered by the name the step's
    DNS answered with that IP when there is one (the gateway allows it by that name),
    else by ``ip:port`` for a public address. Internal, loopback and metadata addresses,
    names the allow parser refuses, denied flows and non-TCP traffic are never proposed;
    `unlearnable` lists them. Every step with flows is a key, possibly with an empty list.
    """
    return _learn(flows)[0]


def unlearnable(flows: Sequence[Flow]) -> dict[str, list[Unlearnable]]:
    """Per step, the flows `learn` does not cover and why (every step with flows is a key)."""
    return _learn(flows)[1]


def _yaml_scalar(text: str) -> str:
    """`text` as a YAML scalar: plain when YAML reads it back unchanged, else quoted."""
    try:
        plain_ok = yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain_ok = False
    # JSON strings are YAML double-quoted scalars.
    return text if plain_ok else json.dumps(text)


def render_learn(proposal: Mapping[str, Sequence[str]],
                 skipped: Mapping[str, Sequence[Unlearnable]] | None = None) -> str:
    """One YAML snippet per step (``egress: {mode: enforce, allow: [...]}``) to paste.

    Each snippet follows a ``# step NAME`` comment line and is valid YAML on its own: paste
    it into a step file, or under ``steps.NAME`` of a pipeline file. Entries allowing any
    port are marked; `skipped` (from `unlearnable`) is listed as comments.
    """
    out: list[str] = []
    for step in sorted(set(proposal) | set(skipped or {})):
        entries = list(proposal.get(step, []))
        out.append(f"# step {_printable(step)}: paste into its step file, or under "
                   f"steps.{_printable(step)} of the pipeline")
        out.append("egress:")
        out.append("  mode: enforce")
        if not entries:
            out.append("  allow: []")
        else:
            out.append("  allow:")
        for entry in entries:
            line = f"    - {_yaml_scalar(entry)}"
            try:
                rule = parse_rule(entry)
            except PolicyError:
                rule = None
            if rule is not None and rule.host is not None and rule.port is None:
                line += "  # any port: only DNS lookups seen; add :PORT to narrow it"
            out.append(line)
        for item in (skipped or {}).get(step, []):
            out.append(f"# not learned: {item.flow.kind} {_printable(item.flow.target())}: "
                       f"{_printable(item.reason)}")
        out.append("")
    return "\n".join(out)
