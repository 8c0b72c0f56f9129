"""Finding and removing what killed runs left on the engine (`sbx gc`)."""

from __future__ import annotations

from dataclasses import dataclass

import docker

from sbx.sandbox import labels as L
from sbx.sandbox.teardown import remove_by_label


@dataclass(frozen=True)
class GcResult:
    """What a clean-up removed, and the runs it left alone because they still run."""

    removed: tuple[str, ...]
    live_runs: tuple[str, ...]


def _runs(client: docker.DockerClient) -> dict[str, set[str | None]]:
    """Run id -> the owners named by its objects' labels.

    Filtered on the run label, not on sbx.managed: sbx's images carry sbx.managed, and a
    user's own container started from one inherits it.
    """
    found: dict[str, set[str | None]] = {}
    objects = [*client.api.containers(all=True, filters={"label": L.RUN}),
               *client.api.networks(filters={"label": L.RUN}),
               *(client.api.volumes(filters={"label": L.RUN}).get("Volumes") or [])]
    for obj in objects:
        tags = obj.get("Labels") or {}
        found.setdefault(tags[L.RUN], set()).add(tags.get(L.OWNER))
    return found


def collect(client: docker.DockerClient, run_id: str | None = None,
            force: bool = False) -> GcResult:
    """Remove the objects of dead runs (or of `run_id` only).

    A run whose creating sbx process is still alive is skipped unless `force`.
    """
    removed: list[str] = []
    live: list[str] = []
    for run, owners in sorted(_runs(client).items()):
        if run_id is not None and run != run_id:
            continue
        if not force and any(L.owner_alive(o) for o in owners):
            live.append(run)
            continue
        removed += remove_by_label(client, {L.RUN: run})
    return GcResult(tuple(removed), tuple(live))
