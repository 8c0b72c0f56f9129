"""Exact counts of what the runtime saw, dropped or refused, for the heartbeat.

Events itemize what happened; under a flood not everything can be itemized (the
NFLOG rules are rate-limited, socket buffers overflow, slots run out). These
counters are exact, and the orchestrator puts them in run.json and the isolation
Statement next to the number of events, as "N attempts, M itemized".
"""

from __future__ import annotations

import threading
from collections import Counter


class Counters:
    """A thread-safe set of named counters."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> int:
        """Add `n` to `key`; returns the new total."""
        with self._lock:
            self._counts[key] += n
            return self._counts[key]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


COUNTERS = Counters()


def udp_drops(ports: tuple[int, ...], tables: tuple[str, ...] = ("/proc/net/udp",
                                                                  "/proc/net/udp6")) -> int:
    """Datagrams the kernel dropped on this namespace's UDP sockets bound to `ports`.

    The last column of /proc/net/udp counts datagrams that did not fit the socket's
    receive buffer: DNS queries that never reached the server, so left no event.
    Readable without any privilege.
    """
    total = 0
    for table in tables:
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            try:
                port = int(cols[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    total += int(cols[-1])
            except (IndexError, ValueError):
                continue
    return total
