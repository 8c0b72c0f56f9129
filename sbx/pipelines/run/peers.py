"""Which live steps a step probes before it runs (its peer probes).

Not every pair: what keeps two steps apart is per network, not per pair. Each step
network is internal and on a subnet of its own, and every step's gateway refuses the
whole step pool as internal; run.json's facts record `internal` and what is attached
to each network. A step probes its nearest live neighbours on either side in run
order (a ring), so each live network is tested both as the source and as the target
of an attempt, and the proof grows with the number of steps, not with its square.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# Each step probes at most this many live neighbours.
NEIGHBOURS = 2


def neighbours(order: Sequence[T], me: T, live: Callable[[T], bool],
               limit: int = NEIGHBOURS) -> list[T]:
    """The nearest live steps after and before `me` in `order`, wrapping around.

    `live` may block (it waits for a step's sandbox to be prepared): it is asked only
    about steps in ring order until a live one is found on each side.
    """
    i = order.index(me)
    ring = list(order[i + 1:]) + list(order[:i])
    chosen: list[T] = []
    for direction in (ring, ring[::-1]):
        if len(chosen) >= limit:
            break
        for other in direction:
            if other in chosen:
                break
            if live(other):
                chosen.append(other)
                break
    return chosen
