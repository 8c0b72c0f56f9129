"""run.json's per-step `timings`: every phase of a step's sandbox is there and sane.

What the numbers are is the benchmark's business (`make bench`); this only checks
that the record has them, so the phase breakdown cannot silently disappear.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sbx.sandbox.sandbox import Sandbox

PHASES = ("image", "prepare_wait", "network", "runtime_start", "runtime_ready", "peers_wait",
          "probes", "settle", "needs_wait", "step_create", "copy_in", "step", "copy_out", "facts",
          "stop", "cleanup")


@pytest.mark.docker
def test_a_step_records_the_time_of_every_phase(run_step: Any) -> None:
    began = time.monotonic()
    run = run_step({"name": "timed", "image": "sbx-step:bookworm",
                    "run": "sleep 1 && echo hi > out.txt", "outputs": ["out.txt"]})
    lasted = time.monotonic() - began
    assert run.step["status"] == "succeeded"
    timings = run.step["timings"]
    assert set(PHASES) <= set(timings), sorted(timings)
    assert all(isinstance(v, float) and v >= 0 for v in timings.values()), timings
    # One step's phases follow one another, but for its container's creation and the
    # copy-in, done while the probes run: together no longer than the run around them,
    # and the command's own phase holds at least the second it slept.
    ahead = ("step_create", "copy_in")
    assert sum(v for k, v in timings.items() if k not in ahead) <= lasted, (timings, lasted)
    assert timings["step_create"] + timings["copy_in"] <= lasted, (timings, lasted)
    assert timings["step"] >= 1.0 and timings["probes"] > 0, timings


def test_timed_adds_up_and_counts_a_block_that_raises() -> None:
    sandbox = Sandbox.__new__(Sandbox)  # no engine needed for the bookkeeping
    sandbox.timings = {}
    sandbox._lock = threading.Lock()
    with sandbox.timed("phase"):
        pass
    with pytest.raises(RuntimeError), sandbox.timed("phase"):
        raise RuntimeError("boom")
    assert set(sandbox.timings) == {"phase"}
    assert sandbox.timings["phase"] >= 0
