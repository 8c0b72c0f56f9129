"""The runtime's heartbeat: a line every second that says the recorder is alive.

The orchestrator fails the step closed when a gateway or agent goes quiet: a
recorder that is wedged (a stuck lock, no threads left) must not look like a
step that did nothing. Each beat carries the exact counters, so the last one
the orchestrator saw says what was dropped even if the process dies after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sbx.sandbox.runtime.counters import COUNTERS
from sbx.sandbox.runtime.events import emit

INTERVAL = 1.0


def counters(extra: Callable[[], dict[str, int]] | None = None) -> dict[str, int]:
    """The counters now, plus what `extra` reads (socket drops)."""
    snap = COUNTERS.snapshot()
    if extra is not None:
        try:
            snap.update(extra())
        except OSError:
            pass
    return snap


def beat(role: str, step: str, seq: int,
         extra: Callable[[], dict[str, int]] | None = None, final: bool = False) -> None:
    """One heartbeat line; `final` marks the last one, written on the way out."""
    emit("heartbeat", step=step, role=role, seq=seq, counters=counters(extra),
         final=final or None)


def start(role: str, step: str, extra: Callable[[], dict[str, int]] | None = None,
          interval: float = INTERVAL, stop: threading.Event | None = None) -> threading.Event:
    """Beat every `interval` seconds from a daemon thread; set the event to stop."""
    stop = stop or threading.Event()

    def loop() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            beat(role, step, seq, extra)
            stop.wait(interval)

    threading.Thread(target=loop, name="sbx-heartbeat", daemon=True).start()
    return stop
