"""Labels and names of every Docker object sbx creates, so `sbx gc` can find them."""

from __future__ import annotations

MANAGED = "sbx.managed"
RUN = "sbx.run"
STEP = "sbx.step"
ROLE = "sbx.role"


def for_object(run_id: str, step: str, role: str) -> dict[str, str]:
    """The labels of one object of one step's sandbox."""
    return {MANAGED: "1", RUN: run_id, STEP: step, ROLE: role}


def object_name(run_id: str, step: str, role: str) -> str:
    """A readable, unique name: sbx-<run>-<step>-<role>.

    The whole run id, not a prefix: ids begin with a timestamp, so a prefix would
    collide between runs started in the same minutes.
    """
    return f"sbx-{run_id}-{step}-{role}"
