"""Deciding the fail-closed probes: what the probe saw, checked against the gateway's record.

A probe inside the namespace sees only its own side. Two of its claims need the
gateway's word: that an address was refused *as an internal address* (a denial
for want of a rule would also stop it, but would hide a gateway that no longer
refuses internal addresses), and that a DNS query was answered by the gateway at
all (an unintercepted query to Docker's embedded DNS answers the canary name).
Each such probe reports a `check` (its connection's source port and destination,
or the name it asked); the gateway records `src_port`, `internal` and DNS names in
its events, and `judge` matches them by those fields, never by time.

Sans-IO: `judge` takes the probe container's JSON results and the gateway's events.
"""

from __future__ import annotations

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


def _matches(check: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether `event` is the gateway's record of the probe connection or query `check`."""
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
        if "dns_name" in check:
            return "the gateway has no record of the query: DNS was not intercepted"
        return "the gateway has no record of this connection: it was not intercepted"
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
                detail += ("; the gateway refused the query" if "dns_name" in check
                           else "; the gateway refused the address as internal")
        results.append(ProbeResult(name=str(r.get("name", "")), kind=str(r.get("kind", "")),
                                   target=str(r.get("target", "")), blocked=blocked,
                                   detail=detail, reached_if=str(r.get("reached_if", ""))))
    return tuple(results)


class GatewayRecord:
    """The gateway's events while the probes run, for `judge`; fed from its event stream."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def add(self, event: Mapping[str, Any]) -> None:
        """One gateway event (called from the stream follower's thread)."""
        with self._changed:
            self._events.append(dict(event))
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
