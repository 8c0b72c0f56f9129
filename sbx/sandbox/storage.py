"""A bound on what a step writes to its container's writable layer (and so the host's disk).

Docker's ``--storage-opt size=`` is a hard bound, but only some storage drivers have it
(overlay2 on xfs mounted with pquota, btrfs, zfs, devicemapper); others (fuse-overlayfs,
vfs, overlay2 on ext4) refuse it. There the bound is measured instead: the daemon's
``SizeRw`` of the container is polled every `POLL` seconds and the step is killed once
it is over, so a burst between two polls can exceed the bound by what a step writes in
that time. run.json's ``storage`` says which applied (`record`).

Not covered either way: a read-only-rootfs step's workdir volume (a Docker volume has no
size option on the local driver) and tmpfs mounts (bounded by their own ``size=``).
"""

from __future__ import annotations

import threading
from typing import Any, Final

POLL: Final = 2.0
HARD: Final = "storage-opt"
MEASURED: Final = "measured"


# Engines (by API address) that refused the size option in this process: a pipeline asks
# each engine once, not once per step (each refusal is a failed create, ~50 ms).
_REFUSED_BY: set[str] = set()


def refused_before(engine: str) -> bool:
    """Whether `engine` already refused ``--storage-opt`` in this process."""
    return engine in _REFUSED_BY


def remember_refusal(engine: str) -> None:
    """`engine` refused ``--storage-opt``: later steps go straight to the measured bound."""
    _REFUSED_BY.add(engine)


def unsupported(message: str) -> bool:
    """True when a create failure is the daemon refusing ``--storage-opt`` (e.g.
    "--storage-opt is not supported", "...only for overlay over xfs with 'pquota'")."""
    text = message.lower()
    return "storage-opt" in text or "storage opt" in text or "pquota" in text


def record(limit: int, enforced_by: str, read_only_rootfs: bool) -> dict[str, Any]:
    """run.json's ``storage`` for a step: the bound, how it is held, what it covers."""
    out: dict[str, Any] = {
        "limit_bytes": limit, "enforced_by": enforced_by, "exceeded": False,
        "covers": "the container's writable layer"
        + ("" if read_only_rootfs else ", the workdir included"),
    }
    if enforced_by == MEASURED:
        out["poll_seconds"] = POLL
        out["note"] = (f"this storage driver has no size option: the size is measured every "
                       f"{POLL:g} s and the step killed once over, so a burst between two "
                       "measurements can exceed the bound")
    if read_only_rootfs:
        out["not_covered"] = "the workdir volume (read_only_rootfs)"
    return out


class Watch:
    """Polls a container's writable-layer size and kills it once over `limit`."""

    def __init__(self, api: Any, cid: str, limit: int, state: dict[str, Any]) -> None:
        self.api, self.cid, self.limit, self.state = api, cid, limit, state
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(POLL):
            try:
                found = self.api.containers(all=True, size=True, filters={"id": self.cid})
            except Exception:  # the engine is busy or gone: the step's wait reports that
                continue
            size = int(found[0].get("SizeRw") or 0) if found else 0
            self.state["max_measured_bytes"] = max(size, self.state.get("max_measured_bytes", 0))
            if size > self.limit:
                self.state["exceeded"] = True
                try:
                    self.api.kill(self.cid)
                except Exception:
                    pass
                return
