"""Bounds on what a step can make the gateway and agent hold: threads and idle time.

The runtime containers have a pids limit (256 tasks, threads included). A server
that starts a thread per connection or datagram without a bound lets a step
exhaust it: new threads then fail to start, and whatever they would have
recorded is lost. Here every server has a fixed number of slots; what arrives
when all are taken is refused and counted (and recorded, at most once a second),
never silently lost. Idle connections time out so they cannot hold slots forever.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any

from sbx.sandbox.runtime.counters import COUNTERS
from sbx.sandbox.runtime.events import emit

# Threads per server; the sums stay under the runtime's 256 tasks with room for the
# main, accept, heartbeat and NFLOG threads. A relayed flow costs two threads.
PROXY_FLOWS = 96
DNS_TCP_CONNECTIONS = 8
DNS_UDP_WORKERS = 16
# A DNS-over-TCP client that sends no complete message in this time is dropped.
DNS_IDLE_TIMEOUT = 10.0
# A connection whose destination only its first bytes can name waits this long for them
# (no fallback to the address: past it, the flow is denied and recorded).
FIRST_BYTES_WAIT = 30.0
# In audit mode every flow is let through anyway: the first bytes only name it in the
# record, so a server-speaks-first protocol (ssh) is not held for long.
FIRST_BYTES_WAIT_AUDIT = 2.0


class Slots:
    """A fixed number of slots; `take` never blocks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)

    def take(self) -> bool:
        return self._free.acquire(blocking=False)

    def give(self) -> None:
        self._free.release()


class Refusals:
    """Counts refusals exactly; records the first, then at most one event a second.

    A flood of refusals must not become a flood of events: the counter is exact
    and travels in every heartbeat, the events only say that it is happening.
    """

    def __init__(self, step: str, role: str, what: str, interval: float = 1.0) -> None:
        self.step, self.role, self.what, self.interval = step, role, what, interval
        self._last = float("-inf")
        self._lock = threading.Lock()

    def refuse(self, reason: str) -> None:
        total = COUNTERS.add(f"refused_{self.what}")
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.interval:
                return
            self._last = now
        emit(self.role, step=self.step, phase="refused", what=self.what, reason=reason,
             refused_total=total)


class BoundedThreadingMixIn(socketserver.ThreadingMixIn):
    """socketserver's thread per request, within `slots`; past them, `refuse`.

    Also turns a handler's unexpected exception into `on_error` (an event) instead
    of socketserver's traceback on standard error, which no one reads.
    """

    daemon_threads = True
    block_on_close = False
    slots: Slots
    refusals: Refusals
    on_error: Callable[[Any, BaseException], None] | None = None

    def shutdown_request(self, request: Any) -> None:  # the server class's, in the MRO
        super().shutdown_request(request)  # type: ignore[misc]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.take():
            self.refusals.refuse(f"all {self.slots.size} {self.refusals.what} slots are busy")
            self.shutdown_request(request)
            return
        try:
            thread = threading.Thread(target=self._run, args=(request, client_address),
                                      daemon=True)
            thread.start()
        except RuntimeError as exc:  # the task limit was reached anyway
            self.slots.give()
            self.refusals.refuse(f"cannot start a thread: {exc}")
            self.shutdown_request(request)

    def _run(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.slots.give()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if exc is None:
            return
        if self.on_error is not None:
            self.on_error(client_address, exc)
        else:
            emit(self.refusals.role, step=self.refusals.step, phase="error",
                 reason=f"{type(exc).__name__}: {str(exc)[:200]}")


def bounded(server_class: type, slots: int, step: str, role: str, what: str) -> type:
    """`server_class` with its threads bounded by `slots` (a new class per use)."""
    refusals = Refusals(step, role, what)
    return type(f"Bounded{server_class.__name__}", (BoundedThreadingMixIn, server_class),
                {"slots": Slots(slots), "refusals": refusals})


def start_thread(target: Callable[..., Any], *args: Any) -> bool:
    """Start a daemon thread; False (counted) when the task limit refuses it."""
    try:
        threading.Thread(target=target, args=args, daemon=True).start()
    except RuntimeError:
        COUNTERS.add("thread_start_failed")
        return False
    return True


def idle_timeout(sock: socket.socket, seconds: float) -> None:
    """Give a connection a timeout so an idle peer cannot hold a slot forever."""
    try:
        sock.settimeout(seconds)
    except OSError:
        pass
