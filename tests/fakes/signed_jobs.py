"""Synthetic jobs of one pipeline: one run directory per step, signed, no Docker.

Each job is what `sbx run pipeline.yaml --step NAME` leaves: the step's outputs,
log and event lines, and its link, isolation and provenance Statements, bound to a
pipeline id and listing every step of the pipeline. A hand-off is a material named
by the producer's output, with the producer as its source.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sbx.attest.model import Artifact, RunBinding, RunEvidence, StepEvidence
from sbx.attest.signing.local import KeyPair, LocalSigner
from sbx.attest.statements import run_payloads
from sbx.attest.store import write_signed

from .signed_run import isolation, sha

PIPELINE_ID = "gitlab.example/group/project/-/pipelines/7"
SPEC = b"name: fan\nsteps: {}\n"


def output_of(step: str, run_id: str) -> tuple[str, bytes]:
    """The one output file of a synthetic step: its run-directory name and bytes."""
    return f"outputs/{step}/out/{step}.txt", f"{step} of {run_id}\n".encode()


def build_job(root: Path, key: KeyPair, step: str, index: int, steps: tuple[str, ...], *,
              inputs: tuple[Artifact, ...] = (), pipeline_id: str = PIPELINE_ID,
              iso: dict[str, Any] | None = None) -> Path:
    """Write and sign one job's run directory for `step`; returns it."""
    run_id = f"20261203T000000Z-{index:04x}"
    name, data = output_of(step, run_id)
    (root / name).parent.mkdir(parents=True)
    (root / name).write_bytes(data)
    (root / "logs").mkdir()
    log = f"log of {step}\n".encode()
    (root / "logs" / f"{step}.log").write_bytes(log)
    lines = "".join(json.dumps({"kind": "tcp", "step": step, "n": n}, sort_keys=True,
                               separators=(",", ":")) + "\n" for n in range(2))
    (root / "events.jsonl").write_text(lines)
    box = replace(isolation(step, index, events_sha256=sha(lines.encode()), events_count=2),
                  **(iso or {}))
    evidence = StepEvidence(
        name=step, command=("make", step), materials=inputs,
        products=(Artifact(name, sha(data)),), logs=(Artifact(f"logs/{step}.log", sha(log)),),
        status="succeeded", exit_code=0, reason=None, image="sbx-step:bookworm",
        image_id="sha256:" + "d" * 64, started="2026-12-03T00:00:01Z",
        ended="2026-12-03T00:00:02Z", isolation=box)
    run = RunEvidence(
        binding=RunBinding(run_id, sha(SPEC), "c" * 40, pipeline_id), spec_path="pipeline.yaml",
        steps=(evidence,), sbx_version="0.test", builder_id="https://sbx.dev/builders/local",
        started="2026-12-03T00:00:00Z", ended="2026-12-03T00:00:03Z", pipeline_steps=steps)
    signer = LocalSigner(key.private)
    write_signed(root, [signer.sign(p) for p in run_payloads(run)])
    return root


def handed(job: Path, step: str) -> Artifact:
    """The producer `step`'s output in `job`, as its consumer's material."""
    name = next(p for p in (job / "outputs" / step).rglob("*") if p.is_file())
    rel = name.relative_to(job).as_posix()
    return Artifact(rel, sha(name.read_bytes()), step)
