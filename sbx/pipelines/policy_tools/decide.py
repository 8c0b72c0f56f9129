"""A recorded flow and how a policy decides it, in the gateway's own order of checks.

See the package docstring for that order; what a dry run cannot know is
`Flow.always_denied` and stays denied under every policy.
"""


from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sbx.sandbox.network import STEP_POOL
from sbx.sandbox.policy import (
    IPNetwork,
    Policy,
    PolicyError,
    Rule,
    in_networks,
    is_internal,
    normalize_name,
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
    of the allow entry that matched then, if any. `always_denied`: the gateway or agent
    denied this flow although the run's own policy allowed it (internal-only resolution,
    a refused address, the gateway unreachable), so no allow entry would change the
    outcome. A TCP flow without a name was judged by its address alone: an IP rule, or a
    `nameless` rule whose host resolved to it (never a name a DNS answer once gave).
    """

    step: str
    kind: str
    name: str | None
    ip: str | None
    port: int | None
    verdict: str
    rule: str | None
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
               recorded_rule: str | None) -> tuple[bool, Rule | None]:
    """`Gate.decide_address`: (blocked, the matching rule or None).

    A `nameless` rule allowed the address when its host resolved to it; resolution is
    not replayed, so the same nameless rule (by text) allows the flow again.
    """
    if _blocked_address(policy, ip, port):
        return True, None
    rule = policy.match_ip(ip, port)
    if rule is None and recorded_rule is not None:
        rule = next((r for r in policy.rules if r.nameless and r.text == recorded_rule
                     and (r.port is None or r.port == port)), None)
    return False, rule


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
            blocked, rule = _decide_ip(policy, ip, flow.port, flow.rule)
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


