"""The gateway's policy decisions, apart from any socket: a destination in, a verdict out.

A name rule allows a connection only to the gateway's own resolution of a name the
client named in its first bytes (TLS SNI, HTTP Host) or in its CONNECT line: what
the step reaches is what that name names, never another tenant of a shared
address. An address alone is allowed only by an IP rule or a `nameless` rule.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from sbx.sandbox.policy import Policy, PolicyError, Rule, in_networks, is_internal, normalize_name
from sbx.sandbox.runtime.sniff import Reading

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    """The gateway's verdict on one destination.

    `reason` is for the record only: a refused step is told "denied by policy".
    """

    verdict: str  # allowed | audit | denied | failed
    reason: str
    rule: Rule | None = None
    addresses: tuple[str, ...] = ()
    internal: bool = False  # refused for the address itself, whatever the policy says
    name: str | None = None  # the name decided on, canonical
    nameless: bool = False  # allowed by address, no name involved

    @property
    def passes(self) -> bool:
        return self.verdict in ("allowed", "audit")


def is_ip(host: str) -> bool:
    """True for an IP literal (brackets allowed; a %scope is not an address here)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return "%" not in host


@dataclass
class Gate:
    """Policy decisions plus what they need (the step, the refused networks)."""

    step: str
    policy: Policy
    refused: tuple[Network, ...]
    relay_token: str = ""

    def _blocked_address(self, ip: str, port: int | None) -> bool:
        """Internal addresses pass only when an IP rule names them; refused ones never.

        Every spelling counts: an IPv6 address carrying a refused IPv4 address
        (mapped, compatible, NAT64, 6to4, Teredo) is refused too.
        """
        try:
            if in_networks(ip, self.refused):
                return True  # own addresses, host addresses and bridges, sbx's step pool
            return is_internal(ip) and self.policy.match_ip(ip, port) is None
        except PolicyError:
            return True

    def resolve(self, name: str, port: int | None, family: int = 0) -> list[str]:
        """The addresses of `name` as an absolute name.

        The trailing dot stops the resolver from retrying a failed lookup under the
        host's search domains: the address connected is that of the name decided.
        """
        infos = socket.getaddrinfo(name.rstrip(".") + ".", port or 0, family, socket.SOCK_STREAM)
        seen: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in seen:
                seen.append(ip)
        return seen

    def decide_address(self, ip: str, port: int) -> Decision | None:
        """The verdict on an address before any byte is read, or None: the first bytes decide.

        Internal addresses are refused at once; an IP rule, or a `nameless` rule whose
        name resolves to `ip` now, allows at once; a port no name rule covers is refused
        at once. Otherwise only a name in the client's first bytes can allow it.
        """
        if self._blocked_address(ip, port):
            return Decision("denied", f"{ip} is an internal or host address", internal=True)
        rule = self.policy.match_ip(ip, port)
        if rule is not None:
            return Decision("allowed", "matched by address", rule, (ip,), nameless=True)
        for candidate in self.policy.rules:
            if candidate.nameless and candidate.host and candidate.matches_name(
                    candidate.host, port):
                try:
                    found = self.resolve(candidate.host, port)
                except OSError:
                    continue
                if ip in found:
                    return Decision("allowed", f"matched by address ({candidate.host} resolves "
                                    "to it)", candidate, (ip,), nameless=True)
        if self.policy.mode != "audit" and not any(
                r.network is None and (r.port is None or r.port == port)
                for r in self.policy.rules):
            return Decision("denied", f"no rule allows {ip}:{port}")
        return None

    def decide_ip(self, ip: str, port: int) -> Decision:
        """The verdict on an address with no name at all (nothing more will come)."""
        decision = self.decide_address(ip, port)
        if decision is not None:
            return decision
        if self.policy.mode == "audit":
            return Decision("audit", f"no rule allows {ip}:{port}", None, (ip,), nameless=True)
        return Decision("denied", f"no rule allows {ip}:{port} by address")

    def decide_name(self, raw: str, port: int) -> Decision:
        """The verdict on a name (or an IP literal, judged by address alone)."""
        if is_ip(raw):
            return self.decide_ip(raw.strip("[]"), port)
        try:
            name = normalize_name(raw)
        except PolicyError as exc:
            return Decision("denied", f"invalid name: {exc}")
        rule = self.policy.match_name(name, port)
        if rule is None and self.policy.mode != "audit":
            return Decision("denied", f"no rule allows {name}:{port}", name=name)
        try:
            found = self.resolve(name, port)
        except OSError:
            return Decision("failed", f"{name} does not resolve", rule, name=name)
        usable = tuple(ip for ip in found if not self._blocked_address(ip, port))
        if not usable:
            return Decision("denied", f"{name} resolves only to internal addresses {found}",
                            rule, internal=True, name=name)
        if rule is None:
            return Decision("audit", f"no rule allows {name}:{port}", None, usable, name=name)
        return Decision("allowed", "matched", rule, usable, name=name)

    def decide_reading(self, reading: Reading, ip: str | None, port: int,
                       pinned: Decision | None = None) -> Decision:
        """The verdict once the first bytes are read.

        `pinned`: the decision on the name a CONNECT line gave; the first bytes may
        only confirm it (the same name in SNI or Host) or carry no name at all in a
        protocol that has none. `ip`: the address the client chose (relay, CONNECT ip).
        """
        if pinned is not None:
            if reading.protocol == "other":
                return pinned  # the connection goes to the CONNECT name's own resolution
            if reading.name is None:
                return self._nameless_denied(reading, pinned.name or "", port)
            try:
                said = normalize_name(reading.name)
            except PolicyError as exc:
                return Decision("denied", f"invalid name in the first bytes: {exc}")
            if said != pinned.name:
                return Decision("denied", f"{reading.protocol} names {said} inside CONNECT "
                                f"{pinned.name}", name=said)
            return pinned
        if reading.name is None:
            return self._nameless_denied(reading, ip or "", port)
        return self.decide_name(reading.name, port)

    def _nameless_denied(self, reading: Reading, where: str, port: int) -> Decision:
        reason = (f"{reading.problem or 'no name'}; no rule allows {where}:{port} without a "
                  "name (a protocol that names no host needs an IP rule or nameless: true)")
        if self.policy.mode == "audit" and where and is_ip(where):
            return Decision("audit", reason, None, (where,), nameless=True)
        return Decision("denied", reason)


def rule_fields(rule: Rule | None) -> dict[str, Any]:
    if rule is None:
        return {}
    return {"rule": rule.text, "rule_source": rule.source or None}
