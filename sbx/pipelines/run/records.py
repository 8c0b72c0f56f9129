"""The records of a run on disk: run.json, events.jsonl, logs/ and outputs/.

Records are written as things happen, so a failed or interrupted run still
leaves what it saw. run.json is replaced atomically at each update.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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


@dataclass
class EventLog:
    """events.jsonl: every event, appended and flushed as it arrives."""

    path: Path
    masker: Masker
    listeners: list[EventListener] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._fh = self.path.open("a", encoding="utf-8")
        # The first write that failed (a full disk): later lines stay in memory only,
        # and the run ends with exit 3 naming the run directory.
        self.error: OSError | None = None
        # Per step, a running sha256 of its lines exactly as written: the isolation
        # Statement signs it, and `sbx verify` recomputes it from events.jsonl.
        self._digests: dict[str, Any] = {}
        self._counts: Counter[str] = Counter()

    def add(self, event: dict[str, Any]) -> None:
        """Record one event (secrets masked) and tell the listeners."""
        # Mask the structure, not its JSON text: escaping would hide a secret from the
        # masker, and a masked digit run would break a number.
        masked = self.masker.tree(event)
        line = json.dumps(masked, sort_keys=True, separators=(",", ":"))
        step = masked.get("step")
        with self._lock:
            if self.error is None:
                try:
                    self._fh.write(line + "\n")
                    self._fh.flush()
                except OSError as exc:
                    self.error = exc
            self.events.append(masked)
            if isinstance(step, str):
                self._digests.setdefault(step, hashlib.sha256()).update(
                    (line + "\n").encode("utf-8"))
                self._counts[step] += 1
        for listener in self.listeners:
            listener(masked)

    def close(self) -> None:
        with self._lock:
            try:
                self._fh.close()
            except OSError as exc:  # the unflushed tail of a failed write
                self.error = self.error or exc

    def digest(self, step: str) -> tuple[str, int]:
        """sha256 and number of the step's lines so far, in the order written."""
        with self._lock:
            h = self._digests.get(step)
            return (h.copy().hexdigest() if h else hashlib.sha256().hexdigest(),
                    self._counts[step])

    def flow_counts(self, since: datetime | None, step: str | None = None) -> dict[str, int]:
        """Decisions on a step's own traffic (after `since`) by verdict."""
        counts: Counter[str] = Counter()
        with self._lock:
            events = list(self.events)
        for e in events:
            if not is_decision(e) or (step is not None and e.get("step") != step):
                continue
            if since is not None and parse_time(e["time"]) < since:
                continue
            counts[str(e.get("verdict"))] += 1
        return {k: counts.get(k, 0) for k in FLOW_VERDICTS}


def is_decision(event: dict[str, Any]) -> bool:
    """An egress decision, as opposed to lifecycle, probe or flow-close events."""
    return (event.get("kind") in ("dns", "tcp", "udp", "icmp", "ipv6", "sctp", "icmpv6")
            and event.get("phase") != "close" and "verdict" in event)
