"""Which live neighbours a step probes (sbx.pipelines.run.peers): linear, and covering."""

from __future__ import annotations

import pytest

from sbx.pipelines.run.peers import neighbours


def test_each_step_probes_its_live_neighbours_on_both_sides() -> None:
    order = list("abcdef")
    assert neighbours(order, "a", lambda s: True) == ["b", "f"]
    assert neighbours(order, "c", lambda s: True) == ["d", "b"]
    assert neighbours(order, "c", lambda s: s in "af") == ["f", "a"]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 24, 64])
def test_every_live_network_is_probed_from_and_at_and_the_count_is_linear(n: int) -> None:
    order = list(range(n))
    chosen = {s: neighbours(order, s, lambda _: True) for s in order}
    pairs = [(s, p) for s, ps in chosen.items() for p in ps]
    assert len(pairs) <= 2 * n
    assert all(s != p for s, p in pairs)
    if n > 1:
        assert {s for s, _ in pairs} == set(order)  # every network as a source
        assert {p for _, p in pairs} == set(order)  # ... and as a target


def test_a_dead_step_is_skipped_and_nobody_is_chosen_twice() -> None:
    asked: list[str] = []

    def live(s: str) -> bool:
        asked.append(s)
        return s == "b"
    assert neighbours(list("abc"), "a", live) == ["b"]
    assert neighbours(["a"], "a", live) == []
