"""The bound on a step's writable layer (sbx/sandbox/storage.py), on the real engine.

This engine's driver decides how it holds: a hard `--storage-opt size=` or, where the
driver has none (fuse-overlayfs, vfs, overlay2 on ext4), a measured cap that kills the
step once over. Either way the step cannot fill the host's disk and run.json says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from sbx.sandbox import storage

pytestmark = pytest.mark.docker


def test_a_step_writing_past_its_disk_bound_is_stopped_and_run_json_says_so(
        run_step: Any) -> None:
    script = ("dd if=/dev/zero of=big bs=1M count=96 2>/dev/null; sync; "
              "echo wrote; sleep 20; echo survived")
    run = run_step({"name": "fill", "image": "sbx-step:bookworm", "run": script,
                    "resources": {"disk": "32m", "timeout": 120}})
    step = run.step
    bound = step["storage"]
    assert bound["limit_bytes"] == 32 * 1024 * 1024
    assert bound["enforced_by"] in (storage.HARD, storage.MEASURED)
    assert step["status"] == "failed"
    assert "survived" not in (run.out / "logs" / "fill.log").read_text()
    if bound["enforced_by"] == storage.MEASURED:
        assert bound["exceeded"] is True and "resources.disk" in step["reason"]
        assert bound["max_measured_bytes"] > bound["limit_bytes"]


def test_a_step_within_its_bound_is_untouched_and_the_bound_is_recorded(run_step: Any) -> None:
    run = run_step({"name": "small", "image": "sbx-step:bookworm",
                    "run": "dd if=/dev/zero of=f bs=1M count=4 2>/dev/null && sleep 3",
                    "resources": {"disk": "64m"}})
    assert run.step["status"] == "succeeded"
    assert run.step["storage"]["limit_bytes"] == 64 * 1024 * 1024
    assert run.step["storage"]["exceeded"] is False
