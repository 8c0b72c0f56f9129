"""The gateway's policy decisions, apart from any socket: a destination in, a verdict out."""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from sbx.sandbox.policy import Policy, PolicyError, Rule, in_networks, is_internal, normalize_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    """The gateway's verdict on one destination."""

    verdict: str  # allowed | audit | denied | failed
    reason: str
    rule: Rule | None = None
    addresses: tuple[str, ...] = ()
    internal: bool = False  # refused for the address itself, whatever the policy says

    @property
    def passes(self) -> bool:
        return self.verdict in ("allowed", "audit")


@dataclass
class Gate:
    """Policy decisions plus the state they need (names this gateway answered)."""

    step: str
    policy: Policy
    refused: tuple[Network, ...]
    relay_token: str = ""
    answered: dict[str, str] = field(default_factory=dict)  # ip -> allowed name
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _blocked_address(self, ip: str, port: int | None) -> bool:
        """Internal addresses pass only when an IP rule names them; refused ones never.

        Every spelling counts: an IPv6 address carrying a refused IPv4 address
        (mapped, NAT64, 6to4, Teredo) is refused too.
        """
        try:
            if in_networks(ip, self.refused):
                return True  # own addresses, host addresses and bridges, sbx's step pool
            return is_internal(ip) and self.policy.match_ip(ip, port) is None
        except PolicyError:
            return True

    def resolve(self, name: str, port: int | None, family: int = 0) -> list[str]:
        infos = socket.getaddrinfo(name, port or 0, family, socket.SOCK_STREAM)
        seen: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in seen:
                seen.append(ip)
        return seen

    def decide_ip(self, ip: str, port: int) -> Decision:
        if self._blocked_address(ip, port):
            return Decision("denied", f"{ip} is an internal or host address", internal=True)
        rule = self.policy.match_ip(ip, port)
        if rule is None:
            with self.lock:
                name = self.answered.get(ip)
            if name is not None:
                rule = self.policy.match_name(name, port)
        if rule is not None:
            return Decision("allowed", "matched", rule, (ip,))
        if self.policy.mode == "audit":
            return Decision("audit", f"no rule allows {ip}:{port}", None, (ip,))
        return Decision("denied", f"no rule allows {ip}:{port}")

    def decide_name(self, raw: str, port: int) -> Decision:
        try:
            ipaddress.ip_address(raw.strip("[]"))
        except ValueError:
            pass
        else:
            return self.decide_ip(raw.strip("[]"), port)
        try:
            name = normalize_name(raw)
        except PolicyError as exc:
            return Decision("denied", f"invalid name: {exc}")
        rule = self.policy.match_name(name, port)
        if rule is None and self.policy.mode != "audit":
            return Decision("denied", f"no rule allows {name}:{port}")
        try:
            found = self.resolve(name, port)
        except OSError:
            return Decision("failed", f"{name} does not resolve", rule)
        usable = tuple(ip for ip in found if not self._blocked_address(ip, port))
        if not usable:
            return Decision("denied", f"{name} resolves only to internal addresses {found}", rule,
                            internal=True)
        if rule is None:
            return Decision("audit", f"no rule allows {name}:{port}", None, usable)
        return Decision("allowed", "matched", rule, usable)


def rule_fields(rule: Rule | None) -> dict[str, Any]:
    if rule is None:
        return {}
    return {"rule": rule.text, "rule_source": rule.source or None}
