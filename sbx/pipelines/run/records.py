"""The records of a run on disk: run.json, events.jsonl, logs/ and outputs/.

Records are written as things happen, so a failed or interrupted run still
leaves what it saw. run.json is replaced atomically at each update.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sbx.errors import is_disk_failure
from sbx.pipelines.run.requests import RequestTally

EventListener = Callable[[dict[str, Any]], None]
FLOW_VERDICTS = ("allowed", "audit", "denied", "failed")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def parse_time(value: str) -> datetime:
    """An event timestamp (RFC 3339, Z suffix) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Masker:
    """Replaces secret values with *** in anything sbx writes or prints."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._values = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self._values:
            value = value.replace(secret, "***")
        return value

    def tree(self, value: Any) -> Any:
        """Mask every string (keys too) inside JSON-like data."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.tree(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(v) for v in value]
        return value

    def data(self, value: bytes) -> bytes:
        for secret in self._values:
            value = value.replace(secret.encode(), b"***")
        return value


# Decision lines (and flow closes) itemized per step in events.jsonl; past this they are
# counted, not written, so a flood cannot fill the disk or the memory.
ITEMIZED_LIMIT = 20_000
DESTINATIONS_LIMIT = 1_000


@dataclass
class _Tally:
    """One step's counters: everything counted, what of it was itemized."""

    since: datetime | None = None  # the step's command started (`EventLog.arm`)
    flows: Counter[str] = field(default_factory=Counter)  # decisions since, counted
    itemized: Counter[str] = field(default_factory=Counter)  # ... of them written
    written: int = 0  # decision and flow lines written, whenever
    unwritten: int = 0  # decision and flow lines not written (over the limit)
    destinations: set[str] = field(default_factory=set)
    more_destinations: int = 0
    requests: RequestTally = field(default_factory=RequestTally)


@dataclass
class EventLog:
    """events.jsonl: each event appended and flushed as it arrives, then shown.

    Recording never depends on displaying: an event is written and hashed before any
    listener sees it, and a listener that raises is disabled and recorded in
    `faults`, never allowed to stop the caller (the thread following a gateway).
    Memory is bounded: counters per step, not the events; past `ITEMIZED_LIMIT`
    decision lines a step's decisions are counted but no longer itemized.
    """

    path: Path
    masker: Masker
    listeners: list[EventListener] = field(default_factory=list)
    limit: int = ITEMIZED_LIMIT
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._fh = self.path.open("a", encoding="utf-8")
        # The first write that failed (a full disk): later lines are only counted,
        # and the run ends with exit 3 naming the run directory.
        self.error: OSError | None = None
        # Per step, a running sha256 of its lines exactly as written: the isolation
        # Statement signs it, and `sbx verify` recomputes it from events.jsonl.
        self._digests: dict[str, Any] = {}
        self._counts: Counter[str] = Counter()
        self._tallies: dict[str, _Tally] = {}
        self.faults: list[str] = []  # listeners that raised, and were disabled

    def arm(self, step: str, since: datetime) -> None:
        """The step's command starts now: its own decisions are those from `since` on."""
        with self._lock:
            self._tallies.setdefault(step, _Tally()).since = since

    def add(self, event: dict[str, Any]) -> None:
        """Record one event (secrets masked), then tell the listeners."""
        # Mask the structure, not its JSON text: escaping would hide a secret from the
        # masker, and a masked digit run would break a number.
        masked = self.masker.tree(event)
        step = masked.get("step")
        with self._lock:
            if isinstance(step, str):
                lines = self._tally(step, masked)
            else:
                lines = [json.dumps(masked, sort_keys=True, separators=(",", ":"))]
            for line in lines:
                self._write(step, line)
        for listener in list(self.listeners):
            try:
                listener(masked)
            except Exception as exc:  # display must never cost a record
                self._disable(listener, exc)

    def _tally(self, step: str, event: dict[str, Any]) -> list[str]:
        """Count the event; the lines to write for it (none past the limit)."""
        tally = self._tallies.setdefault(step, _Tally())
        decision = is_decision(event)
        flow = decision or (event.get("phase") == "close" and "verdict" in event)
        write = not flow or tally.written < self.limit
        lines = []
        if flow and write:
            tally.written += 1
        elif flow:
            tally.unwritten += 1
            if tally.unwritten == 1:  # said once, in the log itself and so in the digest
                lines.append(json.dumps(
                    {"kind": "sbx", "step": step, "phase": "itemizing-stopped",
                     "time": event.get("time"), "source": "sbx",
                     "reason": f"{self.limit} decision lines written for {step}; later "
                               "decisions are counted in run.json and the isolation "
                               "Statement, not itemized"},
                    sort_keys=True, separators=(",", ":")))
        if write:
            lines.insert(0, json.dumps(event, sort_keys=True, separators=(",", ":")))
        if event.get("kind") == "gateway" and isinstance(event.get("ca_fingerprint"), str):
            tally.requests.ca_fingerprint = event["ca_fingerprint"]
        if (event.get("kind") == "http" and tally.since is not None
                and _at_or_after(event, tally.since)):
            tally.requests.add(event)
        if decision and tally.since is not None and _at_or_after(event, tally.since):
            verdict = str(event.get("verdict"))
            tally.flows[verdict] += 1
            if write:
                tally.itemized[verdict] += 1
            if event.get("kind") == "tcp" and verdict in ("allowed", "audit"):
                host = event.get("name") or event.get("dst_ip")
                if host:
                    where = f"{host}:{event.get('dst_port')}"
                    if where in tally.destinations:
                        pass
                    elif len(tally.destinations) < DESTINATIONS_LIMIT:
                        tally.destinations.add(where)
                    else:
                        tally.more_destinations += 1
        return lines

    def _write(self, step: Any, line: str) -> None:
        if self.error is None:
            try:
                self._fh.write(line + "\n")
                self._fh.flush()
            except OSError as exc:
                self.error = exc
        if isinstance(step, str):
            self._digests.setdefault(step, hashlib.sha256()).update(
                (line + "\n").encode("utf-8"))
            self._counts[step] += 1

    def _disable(self, listener: EventListener, exc: Exception) -> None:
        name = getattr(listener, "__qualname__", None) or type(listener).__name__
        with self._lock:
            if listener in self.listeners:
                self.listeners.remove(listener)
                self.faults.append(f"listener {name} raised {type(exc).__name__}: "
                                   f"{str(exc)[:200]}; it was disabled, recording went on")

    def close(self) -> None:
        with self._lock:
            try:
                self._fh.close()
            except OSError as exc:  # the unflushed tail of a failed write
                self.error = self.error or exc

    def wait_for_quiet(self, step: str, quiet: float = 0.4, limit: float = 5.0) -> None:
        """Wait until nothing new came from `step` for `quiet` seconds (at most `limit`).

        The fallback when the probes' fence did not come back: the gateway and agent
        report through log streams, and on a busy machine a probe can give up before
        its connection is judged. The step's own traffic is everything after
        step_started, so that moment must come after the probes'.
        """
        deadline = time.monotonic() + limit
        last = self.digest(step)[1]
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.digest(step)[1]
            if count != last:
                last, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return

    def digest(self, step: str) -> tuple[str, int]:
        """sha256 and number of the step's lines so far, in the order written."""
        with self._lock:
            h = self._digests.get(step)
            return (h.copy().hexdigest() if h else hashlib.sha256().hexdigest(),
                    self._counts[step])

    def flow_counts(self, step: str) -> dict[str, int]:
        """The step's own decisions (since `arm`) by verdict, itemized or not."""
        with self._lock:
            tally = self._tallies.get(step) or _Tally()
            return {k: tally.flows.get(k, 0) for k in FLOW_VERDICTS}

    def itemized(self, step: str) -> int:
        """How many of the step's own decisions have a line in events.jsonl."""
        with self._lock:
            tally = self._tallies.get(step) or _Tally()
            return sum(tally.itemized.values())

    def requests(self, step: str) -> dict[str, Any] | None:
        """The step's checked HTTP requests (see `RequestTally.summary`)."""
        with self._lock:
            tally = self._tallies.get(step) or _Tally()
            return tally.requests.summary()

    def destinations(self, step: str) -> tuple[str, ...]:
        """host:port of every connection the gateway let the step make (first 1000)."""
        with self._lock:
            tally = self._tallies.get(step) or _Tally()
            return tuple(sorted(tally.destinations))


def _at_or_after(event: dict[str, Any], since: datetime) -> bool:
    try:
        return parse_time(str(event["time"])) >= since
    except (KeyError, ValueError):
        return True  # an event without a readable time is counted, not hidden


def read_events(path: Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Every JSON object line of events.jsonl, in the order written; other lines skipped.

    A missing or unreadable file reads as no events, or raises `OSError` if `strict`.
    """
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
    except OSError:
        if strict:
            raise


def is_decision(event: dict[str, Any]) -> bool:
    """An egress decision, as opposed to lifecycle, probe or flow-close events."""
    return (event.get("kind") in ("dns", "tcp", "udp", "icmp", "ipv6", "sctp", "icmpv6")
            and event.get("phase") != "close" and "verdict" in event)


class RecordWriter:
    """Rewrites run.json atomically; a full disk is remembered, never raised mid-run.

    The run goes on (and cleans up) when run.json cannot be replaced: the last
    complete version stays on disk, and `error` tells the run to exit 3 at its end.
    """

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        self.error: OSError | None = None

    def __call__(self) -> None:
        try:
            write_json(self.path, self.record)
        except OSError as exc:
            if not is_disk_failure(exc):
                raise
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
            self.error = self.error or exc


def write_record(path: Path, record: dict[str, Any]) -> RecordWriter:
    """A saver that rewrites run.json atomically."""
    return RecordWriter(path, record)
