"""Labels and names of every Docker object sbx creates, so `sbx gc` can find them."""

from __future__ import annotations

import functools
import os
import socket

import psutil

MANAGED = "sbx.managed"
RUN = "sbx.run"
STEP = "sbx.step"
ROLE = "sbx.role"
# The process that created the object: host/pid/start time. `sbx gc` leaves a run alone
# while its creator lives, so a clean-up on a shared engine never breaks a live run.
OWNER = "sbx.owner"


@functools.cache
def owner() -> str:
    """This process, as the OWNER label spells it (the start time tells a reused pid apart)."""
    started = psutil.Process().create_time()
    return f"{socket.gethostname()}/{os.getpid()}/{started:.2f}"


def owner_alive(value: str | None) -> bool:
    """Whether the process named by an OWNER label still runs.

    Unknown means alive when it cannot be decided here (another host sharing the engine),
    and dead when the label is missing or malformed (an object no live sbx vouches for).
    """
    if not value:
        return False
    host, _, rest = value.partition("/")
    pid_text, _, started = rest.partition("/")
    if not pid_text.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        return f"{psutil.Process(int(pid_text)).create_time():.2f}" == started
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def for_object(run_id: str, step: str, role: str) -> dict[str, str]:
    """The labels of one object of one step's sandbox."""
    return {MANAGED: "1", RUN: run_id, STEP: step, ROLE: role, OWNER: owner()}


def object_name(run_id: str, step: str, role: str) -> str:
    """A readable, unique name: sbx-<run>-<step>-<role>.

    The whole run id, not a prefix: ids begin with a timestamp, so a prefix would
    collide between runs started in the same minutes.
    """
    return f"sbx-{run_id}-{step}-{role}"
