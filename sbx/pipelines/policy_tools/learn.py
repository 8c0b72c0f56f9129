"""`sbx learn`: the smallest allowlist per step that covers what a run let through."""


from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from sbx.pipelines.policy_tools.decide import (
    _POLICY_KINDS,
    _REFUSED,
    ALLOWED,
    AUDIT,
    FAILED,
    Flow,
    _ip_literal,
    _unique,
)
from sbx.pipelines.policy_tools.replay import _printable
from sbx.sandbox.policy import (
    PolicyError,
    in_networks,
    is_internal,
    normalize_name,
    parse_rule,
)

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
    # A flow that named nothing (no SNI, no Host, no CONNECT name) is never turned into
    # a name rule: under a name rule the gateway would deny it (a name rule needs the
    # name in the connection), and proposing one would launder an address into a name.
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
    for any port), never a wildcard. A flow that named nothing (to a bare IP) is covered
    by ``ip:port`` for a public address, never by a name. Internal, loopback and metadata addresses,
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

