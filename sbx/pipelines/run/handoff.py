"""The run's content-addressed store: outputs go in by digest, hand-offs come out of it."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sbx.attest.digests import sha256_file
from sbx.attest.model import Artifact
from sbx.pipelines.spec.pipeline import PlannedStep
from sbx.sandbox.archive import OutputFile
from sbx.sandbox.sandbox import SandboxFailure

STORE = "store/sha256"

Staged = tuple[tuple[Path, str], ...]


def store_outputs(out: Path, outputs: Sequence[OutputFile], root: Path) -> None:
    """Copy each output into store/sha256/<hex>, the only source of hand-offs."""
    store = out / STORE
    store.mkdir(parents=True, exist_ok=True)
    for o in outputs:
        dest = store / o.sha256
        if not dest.exists():
            tmp = dest.with_name(dest.name + f".{threading.get_ident()}.tmp")
            shutil.copyfile(root / o.path, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)


def hand_off(out: Path, plan: PlannedStep,
             records: Mapping[str, Mapping[str, Any]]) -> tuple[Staged, tuple[Artifact, ...]]:
    """The producers' outputs `plan` takes, by digest, verified on the way in.

    `records` are the steps' run.json entries (their `outputs`)."""
    staged: list[tuple[Path, str]] = []
    handed: list[Artifact] = []
    for item in plan.handoffs:
        want = item.path.rstrip("/")
        chosen = [o for o in records[item.from_]["outputs"]
                  if o["path"] == want or o["path"].startswith(want + "/")]
        if not chosen:
            raise SandboxFailure(f"input {item.path} from {item.from_}: {item.from_} "
                                 "produced no such file")
        for o in chosen:
            blob = out / STORE / o["sha256"]
            if sha256_file(blob) != o["sha256"]:
                raise SandboxFailure(f"input {o['path']} from {item.from_}: the stored "
                                     "copy no longer matches its digest; refusing it")
            staged.append((blob, o["path"]))
            handed.append(Artifact(f"outputs/{item.from_}/{o['path']}", o["sha256"],
                                   item.from_))
    return tuple(staged), tuple(handed)
