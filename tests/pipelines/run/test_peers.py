"""Which live neighbours a step probes, and the order sandboxes are prepared in
(sbx.pipelines.run.peers): linear in the number of steps, and covering every network."""

from __future__ import annotations

import threading

import pytest

from sbx.pipelines.run.peers import OrderedSlots, neighbours, preparation_order


def test_each_step_probes_its_nearest_live_neighbour_on_each_side() -> None:
    order = list("abcdef")
    assert neighbours(order, "a", lambda s: True) == ["b"]  # no wrap: a never waits for f
    assert neighbours(order, "c", lambda s: True) == ["d", "b"]
    assert neighbours(order, "f", lambda s: True) == ["e"]
    assert neighbours(order, "c", lambda s: s in "af") == ["f", "a"]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 24, 64])
def test_every_live_network_is_probed_from_and_at_and_the_count_is_linear(n: int) -> None:
    order = list(range(n))
    pairs = [(s, p) for s in order for p in neighbours(order, s, lambda _: True)]
    assert len(pairs) == 2 * (n - 1)
    assert all(s != p for s, p in pairs)
    if n > 1:
        assert {s for s, _ in pairs} == set(order)  # every network as a source
        assert {p for _, p in pairs} == set(order)  # ... and as a target


def test_only_live_steps_are_asked_about_and_in_order() -> None:
    asked: list[str] = []

    def live(s: str) -> bool:
        asked.append(s)
        return s in "be"
    assert neighbours(list("abcdef"), "d", live) == ["e", "b"]
    assert asked == ["e", "c", "b"]
    assert neighbours(["a"], "a", live) == []


def test_slots_admit_in_order_and_at_most_size_at_once() -> None:
    slots = OrderedSlots(2)
    admitted: list[int] = []
    lock = threading.Lock()

    def take(ticket: int) -> None:
        assert slots.acquire(ticket)
        with lock:
            admitted.append(ticket)

    threads = [threading.Thread(target=take, args=(t,)) for t in (3, 2, 1, 0)]
    for t in threads:
        t.start()
    threads[3].join(5)
    threads[2].join(5)
    assert admitted == [0, 1]  # two slots held: 2 and 3 wait, whatever their start order
    slots.release()
    threads[1].join(5)
    assert admitted == [0, 1, 2]
    slots.skip(99)  # a ticket never asked for changes nothing
    slots.release()
    threads[0].join(5)
    assert admitted == [0, 1, 2, 3]


def test_a_skipped_ticket_lets_the_next_one_in_and_cancel_returns() -> None:
    slots = OrderedSlots(1)
    slots.skip(0)
    assert slots.acquire(1)
    cancelled = threading.Event()
    cancelled.set()
    assert slots.acquire(2, cancelled) is False  # no slot free, the run is cancelled
    slots.release()
    assert slots.acquire(3)  # 2 gave its turn up when cancelled


@pytest.mark.parametrize("seed", range(20))
def test_whatever_order_sandboxes_come_up_in_every_neighbouring_pair_is_probed(
        seed: int) -> None:
    """Each step probes as soon as its own sandbox is up, seeing only those already up
    (none has ended): every neighbouring pair is still tested in some direction."""
    import random

    n = 12
    order = list(range(n))
    up: set[int] = set()
    pairs: set[tuple[int, int]] = set()
    for step in random.Random(seed).sample(order, n):
        up.add(step)
        found = neighbours(order, step, up.__contains__)  # its own is never asked about
        pairs |= {(step, p) for p in found}
    assert len(pairs) <= 2 * (n - 1)
    for i in range(n - 1):
        assert (i, i + 1) in pairs or (i + 1, i) in pairs, (i, sorted(pairs))


def test_sandboxes_are_prepared_shallowest_first_then_in_run_order() -> None:
    """A step is prepared once the steps it needs are (issue 18): its ticket comes after
    every step it could not run before, so it never holds up one that could go now."""
    needs = {"a": [], "b": ["a"], "c": [], "d": ["b", "c"], "e": [], "f": ["a"]}
    order = preparation_order(needs)
    assert sorted(order, key=order.__getitem__) == ["a", "c", "e", "b", "f", "d"]
    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(4)}
    assert preparation_order(chain) == {"s0": 0, "s1": 1, "s2": 2, "s3": 3}
