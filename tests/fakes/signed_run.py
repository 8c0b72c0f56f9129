"""Synthetic runs for the attest layer: real files, real signatures, no Docker.

`make_run` writes a run directory as `sbx run` lays it out (outputs, logs,
events.jsonl) for any number of steps, builds the Statements with the real
builders and signs them with the real local signer. Tests then tamper with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbx.attest.model import Artifact, Isolation, Probe, RunBinding, RunEvidence, StepEvidence
from sbx.attest.signing.local import KeyPair, LocalSigner, load_public_key
from sbx.attest.statements import run_payloads
from sbx.attest.store import write_signed
from sbx.attest.verify.trust import KeyTrust


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def isolation(step: str, index: int, **changes: Any) -> Isolation:
    """A sandbox that meets the strict default policy."""
    iso = Isolation(
        network_id=f"net{index:02d}" + "0" * 58, network_name=f"sbx-x-{step}-net",
        subnet=f"10.222.{index}.0/28", internal=True, egress_network=f"sbx-x-{step}-egress",
        attached=(f"gw{index:02d}" + "a" * 60, f"ag{index:02d}" + "b" * 60),
        containers={"gateway": f"gw{index:02d}" + "a" * 60, "agent": f"ag{index:02d}" + "b" * 60,
                    "step": f"st{index:02d}" + "c" * 60},
        cap_drop=("ALL",), cap_add=(), security_opt=("no-new-privileges:true",),
        privileged=False,
        agent_caps={k: "0000000000000000" for k in
                    ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} | {"NoNewPrivs": "1"},
        engine_version="20.10.24", policy={"mode": "enforce", "rules": []},
        policy_digest="ab" * 32,
        probes=(Probe("egress-raw-ip", "tcp", "198.18.0.1:80", True, "reset"),),
        flows={"allowed": 1, "audit": 0, "denied": 0, "failed": 0},
        destinations=("mirror.sbx.test:8080",), events_sha256="", events_count=0)
    return replace(iso, **changes)


@dataclass
class SyntheticRun:
    """A signed run directory and what made it."""

    root: Path
    evidence: RunEvidence
    key: KeyPair

    def trust(self) -> KeyTrust:
        return KeyTrust([load_public_key(self.key.public)])

    def doc(self, stem: str) -> Path:
        return self.root / "attestations" / f"{stem}.dsse.json"

    def envelope(self, stem: str) -> dict[str, Any]:
        return json.loads(self.doc(stem).read_text())

    def payload(self, stem: str) -> dict[str, Any]:
        return json.loads(base64.b64decode(self.envelope(stem)["payload"]))


StepChanges = dict[str, dict[str, Any]]


def build_run(root: Path, key: KeyPair, steps: tuple[str, ...] = ("build",), *,
              run_id: str = "20261122T000000Z-aaaa", changes: StepChanges | None = None,
              hand_off: bool = True, spec: bytes = b"name: build\n") -> SyntheticRun:
    """Build and sign a run of steps in `root`; `hand_off` makes each step consume the
    previous step's first output; `changes[step]` overrides isolation fields of a step."""
    (root / "logs").mkdir(parents=True)
    events: list[str] = []
    built: list[StepEvidence] = []
    for i, step in enumerate(steps):
        out = root / "outputs" / step / "dist"
        out.mkdir(parents=True)
        data = f"{step} output of {run_id}\n".encode()
        (out / f"{step}.txt").write_bytes(data)
        log = f"log of {step}\n".encode()
        (root / "logs" / f"{step}.log").write_bytes(log)
        lines = [json.dumps({"kind": "tcp", "step": step, "verdict": "allowed", "n": n},
                            sort_keys=True, separators=(",", ":")) + "\n"
                 for n in range(3)]
        events += lines
        materials: tuple[Artifact, ...] = (Artifact("src/app.py", sha(b"print()"),
                                                    "workspace"),)
        if hand_off and built:
            prev = built[-1].products[0]
            materials += (Artifact(prev.name, prev.sha256, built[-1].name),)
        iso = isolation(step, i, events_sha256=sha("".join(lines).encode()),
                        events_count=len(lines),
                        **((changes or {}).get(step, {})))
        built.append(StepEvidence(
            name=step, command=("make", step), materials=materials,
            products=(Artifact(f"outputs/{step}/dist/{step}.txt", sha(data)),),
            logs=(Artifact(f"logs/{step}.log", sha(log)),), status="succeeded",
            exit_code=0, reason=None, image="sbx-step:bookworm",
            image_id="sha256:" + "d" * 64, started="2026-11-22T00:00:01Z",
            ended="2026-11-22T00:00:02Z", isolation=iso))
    # Interleave nothing: each step's lines are contiguous, as a single step writes.
    (root / "events.jsonl").write_text("".join(events))
    evidence = RunEvidence(
        binding=RunBinding(run_id, sha(spec), "c" * 40), spec_path="pipeline.yaml",
        steps=tuple(built), sbx_version="0.test", builder_id="https://sbx.dev/builders/local",
        started="2026-11-22T00:00:00Z", ended="2026-11-22T00:00:03Z")
    signer = LocalSigner(key.private)
    write_signed(root, [signer.sign(p) for p in run_payloads(evidence)])
    return SyntheticRun(root, evidence, key)

