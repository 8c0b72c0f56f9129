"""Is the step's recorder alive, and what could it not itemize?

The gateway and agent beat once a second (`runtime.heartbeat`); a watchdog fails
the step closed when either goes quiet, because a silent recorder is
indistinguishable from a step that did nothing. Each beat carries exact counters
of what the runtime refused or lost (socket drops, busy slots); at the end the
orchestrator adds the firewall's own packet counter, read through the Docker API
from the agent's container (the step gains nothing: it has no Docker access and
`exec` runs in the agent's container, not the step's).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sbx.sandbox.engine import ENGINE_ERRORS
from sbx.sandbox.objects import SandboxObjects, utcnow

ROLES = ("gateway", "agent")
# Generous: a loaded machine delays a beat by seconds, never by this much.
HEARTBEAT_TIMEOUT = 30.0
_COUNTER = re.compile(r"^\[(\d+):(\d+)\] -A \S+ .*-j SBX_DROPPED\s*$")


def firewall_dropped(saved: str) -> int:
    """Packets counted by the rules that jump to SBX_DROPPED, in `iptables-save -c` output."""
    total = 0
    for line in saved.splitlines():
        m = _COUNTER.match(line.strip())
        if m:
            total += int(m.group(1))
    return total


@dataclass(frozen=True)
class RecorderCounts:
    """What each layer dropped or refused without an itemized event of its own."""

    firewall_dropped: int | None  # packets the agent's firewall dropped (None: unread)
    firewall_itemized: int  # of them, those that became an event
    dns_socket_drops: int  # queries lost in the gateway's and agent's socket buffers
    refused: int  # connections and datagrams refused for want of a slot or thread
    heartbeats: dict[str, int] = field(default_factory=dict)

    @property
    def firewall_unlogged(self) -> int:
        if self.firewall_dropped is None:
            return 0
        return max(0, self.firewall_dropped - self.firewall_itemized)

    @property
    def unitemized(self) -> int:
        """Attempts that are counted here but have no event."""
        return self.firewall_unlogged + self.dns_socket_drops + self.refused

    def summary(self, decided: int, itemized: int) -> dict[str, Any]:
        """"N attempts, M itemized": the step's decisions (counted, itemized or not)
        plus what each layer dropped or refused without an event, against the
        decision lines in events.jsonl; then the per-layer counts."""
        return {"attempts": decided + self.unitemized, "itemized": itemized,
                "decisions_not_itemized": decided - itemized, **self.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {"firewall_dropped": self.firewall_dropped,
                "firewall_itemized": self.firewall_itemized,
                "firewall_unlogged": self.firewall_unlogged,
                "dns_socket_drops": self.dns_socket_drops, "refused": self.refused,
                "heartbeats": dict(self.heartbeats)}


class Recorder(SandboxObjects):
    """Heartbeats, the watchdog, follower faults and the end-of-step counters."""

    heartbeat_timeout = HEARTBEAT_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._beats: dict[str, float] = {}
        self._beat_count: dict[str, int] = dict.fromkeys(ROLES, 0)
        self._counters: dict[str, dict[str, int]] = {role: {} for role in ROLES}
        self._firewall_itemized = 0
        self._firewall_dropped: int | None = None
        self._watchdog: threading.Thread | None = None
        self._recorder_failed = False
        self.recorder_fault: str | None = None  # why the recorder failed, one line

    def _heartbeat(self, role: str, event: dict[str, Any]) -> None:
        counters = event.get("counters")
        with self._lock:
            self._beats[role] = time.monotonic()
            self._beat_count[role] = self._beat_count.get(role, 0) + 1
            if isinstance(counters, dict):
                self._counters[role] = {str(k): int(v) for k, v in counters.items()
                                        if isinstance(v, int) and not isinstance(v, bool)}

    def _itemized_by_firewall(self, event: dict[str, Any]) -> None:
        if event.get("layer") == "firewall":
            with self._lock:
                self._firewall_itemized += 1

    def recorder_failed(self) -> bool:
        """True once the recorder was found silent, wedged or dead."""
        with self._lock:
            return self._recorder_failed

    def _start_watchdog(self) -> None:
        """From now on a gateway or agent that stops beating fails the step closed."""
        now = time.monotonic()
        with self._lock:
            for role in ROLES:
                self._beats.setdefault(role, now)
        self._watchdog = threading.Thread(target=self._watch, name="sbx-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._closed and not self._recorder_failed:
            time.sleep(min(1.0, self.heartbeat_timeout / 4))
            with self._lock:
                stale = [(role, time.monotonic() - t) for role, t in self._beats.items()
                         if time.monotonic() - t > self.heartbeat_timeout]
            if stale and not self._closed:
                role, quiet = stale[0]
                self._recorder_fault(role, f"sent no heartbeat for {quiet:.0f} s: its "
                                           "recorder is silent or wedged")

    def _recorder_fault(self, role: str, what: str) -> None:
        """Fail the step closed: a fault, an event saying so, and the step stopped."""
        with self._lock:
            if self._recorder_failed:
                return
            self._recorder_failed = True
        fault = f"the {role} {what}; the step was stopped and fails closed"
        self.recorder_fault = fault
        self.faults.append(fault)
        try:
            self.on_event({"time": utcnow(), "kind": role, "step": self.step.name,
                           "phase": "recorder-failed", "reason": fault, "source": "sbx"})
        except Exception:  # the record already holds the fault; nothing more to do here
            pass
        cid = self.containers.get("step")
        if cid is not None:
            try:
                self.api.kill(cid)
            except ENGINE_ERRORS:
                pass

    def read_counters_soon(self) -> None:
        """Begin reading the firewall's counters now (the step has exited, so they are
        complete) while its outputs are copied; `stop` waits for the read."""
        if self._counters_reading is None:
            self._counters_reading = threading.Thread(target=self.read_firewall_counters,
                                                      name="sbx-counters", daemon=True)
            self._counters_reading.start()

    def read_firewall_counters(self) -> None:
        """Read the agent firewall's drop counters (IPv4 and IPv6) before it stops."""
        cid = self.containers.get("agent")
        if cid is None:
            return
        try:
            exec_id = self.api.exec_create(
                cid, ["sh", "-c", "iptables-save -c && ip6tables-save -c"], user="0:0",
                stdout=True, stderr=False)["Id"]
            out = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        except ENGINE_ERRORS as exc:
            self.faults.append(f"the firewall's drop counters could not be read: {exc}")
            return
        if code != 0:
            self.faults.append(f"the firewall's drop counters could not be read (exit {code})")
            return
        self._firewall_dropped = firewall_dropped(out.decode("utf-8", "replace"))

    def recorder_counts(self) -> RecorderCounts:
        """The counts so far; complete once `stop()` has returned."""
        with self._lock:
            counters = {role: dict(c) for role, c in self._counters.items()}
            beats = dict(self._beat_count)
            fw_items = self._firewall_itemized
        refused = sum(v for c in counters.values() for k, v in c.items()
                      if k.startswith("refused_") or k == "thread_start_failed")
        drops = sum(c.get("dns_socket_drops", 0) for c in counters.values())
        return RecorderCounts(firewall_dropped=self._firewall_dropped,
                              firewall_itemized=fw_items, dns_socket_drops=drops,
                              refused=refused, heartbeats=beats)
