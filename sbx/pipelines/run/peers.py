"""Which live steps a step probes before it runs, and in which order sandboxes are made.

Peer probes are not made for every pair: what keeps two steps apart is per network,
not per pair. Each step network is internal and on a subnet of its own, and every
step's gateway refuses the whole step pool as internal; run.json's facts record
`internal` and what is attached to each network. A step probes the nearest step on
each side in run order that has a sandbox at that moment and has not ended, so the
proof grows with the number of steps, not with its square (24 steps: at most 46 pairs
instead of 552).

Nothing waits for a neighbour's sandbox: of two neighbours live at the same time, the
one that probes second finds the other up and probes it, so every such pair is tested
in at least one direction, and no step's start waits for a later step's preparation
(the first link of a chain, or the last step of a wave of preparation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def neighbours(order: Sequence[T], me: T, live: Callable[[T], bool]) -> list[T]:
    """The nearest live step after `me` in `order`, and the nearest before it (no wrap).

    `live` is asked only about steps in order until a live one is found on each side.
    """
    i = order.index(me)
    chosen: list[T] = []
    for side in (order[i + 1:], list(reversed(order[:i]))):
        for other in side:
            if live(other):
                chosen.append(other)
                break
    return chosen


def wait_to_prepare(needs_admitted: Sequence[threading.Event],
                    their_needs_prepared: Sequence[threading.Event],
                    cancelled: threading.Event) -> bool:
    """Wait until a step may be prepared; False if the run is cancelled meanwhile.

    At most two sandboxes of a chain come up at once: a step is prepared once the steps
    it needs are being prepared and the steps those need are ready. It cannot run before
    them, and more sandboxes coming up beside theirs would only slow theirs down (two
    CPUs, one engine), while the one ahead is ready when the link before it ends.
    """
    for event in (*needs_admitted, *their_needs_prepared):
        while not event.wait(0.2):
            if cancelled.is_set():
                return False
    return True


def preparation_order(needs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each step's ticket for `OrderedSlots`: by depth (how many steps lie before it on
    its longest chain of needs), then run order (`needs` is in run order). A deeper step
    waits for its needs (`wait_to_prepare`), so it must never hold up a shallower one
    that could be prepared now."""
    depth: dict[str, int] = {}
    for name, wanted in needs.items():  # run order is topological: needs come first
        depth[name] = 1 + max((depth[n] for n in wanted), default=-1)
    ranked = sorted(needs, key=lambda n: depth[n])  # stable: run order within a depth
    return {name: i for i, name in enumerate(ranked)}


class OrderedSlots:
    """At most `size` holders at once, admitted in run order (ticket 0, 1, 2, ...).

    Steps are prepared in the order they run, so a chain's next link, and the
    neighbour a step probes, are never stuck behind steps that come later.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._held = 0
        self._next = 0
        self._skipped: set[int] = set()
        self._changed = threading.Condition()

    def acquire(self, ticket: int, cancelled: threading.Event | None = None) -> bool:
        """Wait for `ticket`'s turn and a free slot; False if cancelled meanwhile."""
        with self._changed:
            while self._next != ticket or self._held >= self._size:
                if cancelled is not None and cancelled.is_set():
                    self._skip(ticket)
                    return False
                self._changed.wait(0.2)
            self._held += 1
            self._advance()
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._changed:
            self._held -= 1
            self._changed.notify_all()

    def skip(self, ticket: int) -> None:
        """`ticket` will never ask (its step failed before preparing): let the next go."""
        with self._changed:
            self._skip(ticket)

    def _skip(self, ticket: int) -> None:
        self._skipped.add(ticket)
        if ticket == self._next:
            self._advance()
        self._changed.notify_all()

    def _advance(self) -> None:
        self._next += 1
        while self._next in self._skipped:
            self._next += 1
        self._changed.notify_all()
