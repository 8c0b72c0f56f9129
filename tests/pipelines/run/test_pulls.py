"""The pull display: a bar only for large pulls on a terminal, one summary line per pull."""

from __future__ import annotations

import io

from rich.console import Console

from sbx.pipelines.run.pulls import LARGE_PULL, PullDisplay, _summary
from sbx.sandbox.pull import PullProgress, ResolvedImage


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=120), buf


def test_a_large_pull_on_a_terminal_shows_a_progress_bar() -> None:
    console, buf = _console(terminal=True)
    with PullDisplay(console, "registry.example/app:v1") as display:
        display.update(PullProgress("registry.example/app:v1", 3, 1, LARGE_PULL, 2 * LARGE_PULL))
        display.update(PullProgress("registry.example/app:v1", 3, 3, 2 * LARGE_PULL,
                                    2 * LARGE_PULL))
    text = buf.getvalue()
    assert "pulling registry.example/app:v1" in text and "3/3 layers" in text


def test_a_small_pull_or_no_terminal_shows_no_bar() -> None:
    for terminal, total in ((True, LARGE_PULL - 1), (False, 10 * LARGE_PULL)):
        console, buf = _console(terminal)
        with PullDisplay(console, "app:v1") as display:
            display.update(PullProgress("app:v1", 1, 1, total, total))
        assert buf.getvalue() == ""


def test_a_hostile_reference_cannot_restyle_the_bar() -> None:
    console, buf = _console(terminal=True)
    with PullDisplay(console, "app[/red]:v1") as display:
        display.update(PullProgress("app[/red]:v1", 1, 0, 0, 2 * LARGE_PULL))
    assert "app[/red]:v1" in buf.getvalue()


def test_the_summary_names_the_digest_size_and_platform() -> None:
    display = PullDisplay(_console(False)[0], "app:v1")
    display.update(PullProgress("app:v1", 2, 2, 5_000_000, 5_000_000))
    image = ResolvedImage("app:v1", "sha256:" + "1" * 64, "app@sha256:" + "2" * 64,
                          "linux/amd64", pulled=True)
    line = _summary(image, display, 1.25)
    assert line == (f"pulled app:v1 in 1.2 s, 2 layer(s), 5.0 MB: app@sha256:{'2' * 64} "
                    "(linux/amd64)")
