"""Deciding the fail-closed probes: what the probe saw, checked against the gateway's record.

A probe inside the namespace sees only its own side. Two of its claims need the
gateway's word: that an address was refused *as an internal address* (a denial
for want of a rule would also stop it, but would hide a gateway that no longer
refuses internal addresses), and that a DNS query was answered by the gateway at
all (an unintercepted query to Docker's embedded DNS answers the canary name).
Each such probe reports a `check` (its connection's source port and destination,
or the name it asked); the gateway records `src_port`, `internal` and DNS names in
its events, and `judge` matches them by those fields, never by time.

A probe whose packet must die at the namespace's own firewall (the host bridge, UDP,
ICMP, IPv6, a peer's address) is blocked only if the agent's firewall recorded
dropping exactly that packet (`drop`: protocol, address, port): silence alone could
be a slow answer, so the probes wait only a local round trip and the record decides.

Sans-IO: `judge` takes the probes' JSON results and the gateway's and agent's events.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sbx.sandbox.config import ProbeResult

# How long to wait for the gateway's record of a probe once the probes are done. The
# gateway writes an event before it answers, so the record is normally already on its
# way; a missing one costs this wait and then counts as reached.
RECORD_WAIT = 10.0


def _check(raw: Mapping[str, Any]) -> dict[str, Any]:
    check = raw.get("check")
    return dict(check) if isinstance(check, Mapping) else {}


def _name(value: Any) -> str:
    return str(value or "").rstrip(".").lower()


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        return str(value)


def drop_matches(drop: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether `event` is the agent firewall's record of dropping the packet `drop`."""
    return (event.get("_role") == "agent" and event.get("layer") == "firewall"
            and event.get("verdict") == "denied"
            and event.get("protocol") == drop.get("protocol")
            and _ip(event.get("dst_ip")) == _ip(drop.get("dst_ip"))
            and event.get("dst_port") == drop.get("dst_port"))


def _matches(check: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether `event` is the record (the gateway's, or the agent firewall's for a
    `drop`) of the probe connection, query or packet `check`."""
    if "drop" in check:
        return drop_matches(check["drop"], event)
    if event.get("_role", "gateway") != "gateway":
        return False
    if "dns_name" in check:
        return event.get("kind") == "dns" and _name(event.get("name")) == check["dns_name"]
    if "src_port" in check:
        return (event.get("kind") == "tcp" and event.get("src_port") == check["src_port"]
                and event.get("dst_ip") == check.get("dst_ip")
                and event.get("dst_port") == check.get("dst_port"))
    return False


def _verdict_from_record(check: Mapping[str, Any],
                         records: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the gateway's record makes the probe reached, or None if it backs a block."""
    if not records:
        if "drop" in check:
            return "the sandbox firewall has no record of dropping it: it may have left"
        if "dns_name" in check:
            return "the gateway has no record of the query: DNS was not intercepted"
        return "the gateway has no record of this connection: it was not intercepted"
    if "drop" in check:
        return None  # drop_matches already asked for a denial by the firewall
    for event in records:
        verdict = str(event.get("verdict"))
        if "dns_name" in check:
            if verdict in ("allowed", "audit"):
                return f"the gateway recorded the query as {verdict}"
        elif verdict != "denied" or event.get("internal") is not True:
            return (f"the gateway recorded {verdict} ({str(event.get('reason'))[:120]}), "
                    "not a refusal of an internal address")
    return None


def pending(raw: Iterable[Mapping[str, Any]],
            events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The checks of `raw` that no event in `events` answers yet."""
    return [c for c in (_check(r) for r in raw)
            if c and not any(_matches(c, e) for e in events)]


def judge(raw: Iterable[Mapping[str, Any]],
          events: Sequence[Mapping[str, Any]]) -> tuple[ProbeResult, ...]:
    """The final probe results: each probe's own verdict, overruled by the gateway's record.

    A probe is blocked only if it saw nothing come back *and*, when it carries a
    check, the gateway's record confirms the claim. Anything else is reached:
    the sandbox fails closed on what it cannot prove.
    """
    results = []
    for r in raw:
        blocked = r.get("blocked") is True
        detail = str(r.get("detail", ""))
        check = _check(r)
        if check:
            records = [e for e in events if _matches(check, e)]
            why = _verdict_from_record(check, records)
            if why is not None:
                blocked, detail = False, f"{detail}; {why}"
            elif blocked:
                detail += ("; the sandbox firewall dropped it" if "drop" in check
                           else "; the gateway refused the query" if "dns_name" in check
                           else "; the gateway refused the address as internal")
        results.append(ProbeResult(name=str(r.get("name", "")), kind=str(r.get("kind", "")),
                                   target=str(r.get("target", "")), blocked=blocked,
                                   detail=detail, reached_if=str(r.get("reached_if", ""))))
    return tuple(results)


def identity_problem(identity: Any, uid: int = 65534) -> str | None:
    """Why the probes' own report of who they ran as is not the step's (unprivileged)
    standing, or None. They run by `docker exec` in the agent's container, whose
    bounding set still holds the agent's start-up capabilities: the process itself
    must hold none (no_new_privs keeps it from gaining any through an exec)."""
    if not isinstance(identity, Mapping):
        return "the probes did not say who they ran as"
    if identity.get("uid") != uid or identity.get("gid") != uid:
        return f"the probes ran as {identity.get('uid')}:{identity.get('gid')}, not {uid}"
    for key in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        try:
            held = int(str(identity.get(key)), 16)
        except ValueError:
            return f"the probes did not report {key}"
        if held:
            return f"the probes held capabilities ({key} {held:#x})"
    if str(identity.get("NoNewPrivs")) != "1":
        return "the probes ran without no_new_privs"
    return None


class GatewayRecord:
    """The gateway's and agent's events while the probes run, for `judge`; fed from
    their event streams (each event tagged with the role whose stream carried it)."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def add(self, event: Mapping[str, Any], role: str = "gateway") -> None:
        """One event from `role`'s stream (called from the stream follower's thread)."""
        with self._changed:
            self._events.append({**event, "_role": role})
            self._changed.notify_all()

    def events(self) -> list[dict[str, Any]]:
        """What the gateway recorded so far."""
        with self._changed:
            return list(self._events)

    def wait_for(self, raw: Sequence[Mapping[str, Any]], timeout: float = RECORD_WAIT) -> None:
        """Return once every check in `raw` has its record, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while pending(raw, self._events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def wait_for_fence(self, fence: Mapping[str, Any], timeout: float = RECORD_WAIT) -> bool:
        """Wait for the firewall's record of the fence datagram; True once it is in."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(drop_matches(fence, e) for e in self._events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True
