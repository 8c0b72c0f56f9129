"""A step's entry in run.json: its shape before the step starts, and what it gains."""

from __future__ import annotations

from typing import Any

from sbx.attest.model import Artifact
from sbx.pipelines.spec.pipeline import PlannedStep
from sbx.sandbox.archive import OutputFile
from sbx.sandbox.config import ProbeResult, StepConfig


def step_record(step: PlannedStep, config: StepConfig) -> dict[str, Any]:
    """A step's entry in run.json before it starts."""
    return {
        "name": config.name, "needs": list(step.needs), "status": "pending",
        "exit_code": None, "reason": None, "started": None, "step_started": None,
        "ended": None, "image": {"ref": config.image, "id": None},
        "policy": {"mode": config.policy.mode, "digest": config.policy.digest(),
                   "allow": [r.text for r in config.policy.rules]},
        "docker": {}, "probes": [], "peer_probes": [], "inputs": [], "outputs": [],
        "flows": {}, "recording": None, "faults": [], "timings": {},
    }


def input_dict(a: Artifact) -> dict[str, Any]:
    """An input in run.json: its path in the step's workdir, digest and source."""
    # Hand-offs are named by their place in the run directory, outputs/<step>/<path>.
    path = a.name if a.source == "workspace" else a.name.split("/", 2)[2]
    return {"path": path, "sha256": a.sha256, "from": a.source}


def probe_dict(p: ProbeResult) -> dict[str, Any]:
    """A probe in run.json."""
    return {"name": p.name, "kind": p.kind, "target": p.target, "blocked": p.blocked,
            "detail": p.detail, "reached_if": p.reached_if}


def output_dict(o: OutputFile) -> dict[str, Any]:
    """An output in run.json."""
    return {"path": o.path, "sha256": o.sha256, "size": o.size}
