"""in-toto Statement v1 payloads: link and isolation per step, SLSA provenance per run.

Every payload is serialized with RFC 8785 (JCS), so the local and the Sigstore
signer sign the same bytes and a digest of a Statement is stable. Every
predicate carries the run binding (run id, spec digest, git commit).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import rfc8785

from sbx.attest.model import Artifact, Isolation, Probe, RunEvidence, StepEvidence

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
LINK_TYPE = "https://in-toto.io/attestation/link/v0.3"
ISOLATION_TYPE = "https://sbx.dev/attestation/isolation/v1"
PROVENANCE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://sbx.dev/buildtypes/sandboxed-pipeline/v1"


class Kind(StrEnum):
    """The three kinds of Statement sbx writes, as used in file names."""

    LINK = "link"
    ISOLATION = "isolation"
    PROVENANCE = "provenance"


@dataclass(frozen=True)
class Payload:
    """A Statement ready to sign: its canonical bytes and what it is about."""

    kind: Kind
    step: str | None
    body: bytes

    @property
    def sha256(self) -> str:
        """Digest of the exact bytes that get signed."""
        return hashlib.sha256(self.body).hexdigest()

    @property
    def stem(self) -> str:
        """File name stem: `<step>.<kind>` or `provenance`."""
        return f"{self.step}.{self.kind}" if self.step else self.kind


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON."""
    return rfc8785.dumps(value)


def statement(subjects: list[dict[str, Any]], predicate_type: str,
              predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 object."""
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": predicate_type,
            "predicate": predicate}


def _subjects(step: StepEvidence) -> list[dict[str, Any]]:
    # A Statement needs at least one subject: a step without outputs is about its log.
    chosen = step.products or step.logs
    return [Artifact(a.name, a.sha256).descriptor() for a in chosen]


def link_payload(step: StepEvidence, run: RunEvidence) -> Payload:
    """The step's in-toto link: command, materials, byproducts, environment."""
    byproducts: dict[str, Any] = {
        "status": step.status, "exitCode": step.exit_code,
        "logs": [a.descriptor() for a in step.logs],
    }
    if step.reason:
        byproducts["reason"] = step.reason
    environment: dict[str, Any] = {
        "run": run.binding.to_dict(), "image": step.image,
        "imageDigest": step.image_id, "imageRepoDigest": step.image_repo_digest,
        "imagePlatform": step.image_platform,
        "startedOn": step.started, "finishedOn": step.ended,
        "sbxVersion": run.sbx_version,
    }
    predicate = {
        "name": step.name, "command": list(step.command),
        "materials": [a.descriptor() for a in step.materials],
        "byproducts": byproducts,
        "environment": {k: v for k, v in environment.items() if v is not None},
    }
    return Payload(Kind.LINK, step.name,
                   canonical(statement(_subjects(step), LINK_TYPE, predicate)))


def _probe(p: Probe) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind, "target": p.target, "blocked": p.blocked,
            "detail": p.detail, "reachedIf": p.reached_if}


def isolation_predicate(iso: Isolation) -> dict[str, Any]:
    """sbx's isolation predicate body (without the run binding)."""
    return {
        "network": {"id": iso.network_id, "name": iso.network_name, "subnet": iso.subnet,
                    "internal": iso.internal, "attached": sorted(iso.attached),
                    "egressNetwork": iso.egress_network},
        "containers": dict(sorted(iso.containers.items())),
        "step": {"capDrop": sorted(iso.cap_drop), "capAdd": sorted(iso.cap_add),
                 "securityOpt": sorted(iso.security_opt), "privileged": iso.privileged},
        "agentCaps": dict(sorted(iso.agent_caps.items())),
        "engineVersion": iso.engine_version,
        "policy": dict(iso.policy), "policyDigest": {"sha256": iso.policy_digest},
        "probes": [_probe(p) for p in iso.probes],
        "peerProbes": [_probe(p) for p in iso.peer_probes],
        "flows": dict(sorted(iso.flows.items())),
        "destinations": sorted(iso.destinations),
        "events": {"digest": {"sha256": iso.events_sha256}, "count": iso.events_count},
        **({"recording": dict(sorted(iso.recording.items()))} if iso.recording is not None
           else {}),
        **({"actions": dict(iso.actions)} if iso.actions is not None else {}),
    }


def isolation_payload(step: StepEvidence, run: RunEvidence) -> Payload:
    """What the step's sandbox was and what it kept out; `sandbox` is null if none came up."""
    predicate: dict[str, Any] = {
        "run": run.binding.to_dict(), "step": step.name,
        "sandbox": isolation_predicate(step.isolation) if step.isolation else None,
    }
    return Payload(Kind.ISOLATION, step.name,
                   canonical(statement(_subjects(step), ISOLATION_TYPE, predicate)))


def provenance_payload(run: RunEvidence, step_payloads: list[Payload]) -> Payload:
    """SLSA provenance v1 of the run; byproducts point at every step Statement by digest."""
    products = [a for s in run.steps for a in s.products]
    subjects = [Artifact(a.name, a.sha256).descriptor()
                for a in (products or [a for s in run.steps for a in s.logs])]
    dependencies: list[dict[str, Any]] = [
        {"name": run.spec_path, "digest": {"sha256": run.binding.spec_digest}}]
    seen: set[tuple[str, str]] = set()
    for step in run.steps:
        if step.image_id and (step.image, step.image_id) not in seen:
            seen.add((step.image, step.image_id))
            algo, _, hexdigest = step.image_id.partition(":")
            annotations = {"kind": "container-image"}
            if step.image_repo_digest:
                annotations["repoDigest"] = step.image_repo_digest
            if step.image_platform:
                annotations["platform"] = step.image_platform
            dependencies.append({"name": step.image, "digest": {algo: hexdigest},
                                 "annotations": annotations})
        dependencies += [a.descriptor() for a in step.materials if a.source == "workspace"]
    internal: dict[str, Any] = {"run": run.binding.to_dict(), "interrupted": run.interrupted}
    external: dict[str, Any] = {"spec": {"path": run.spec_path,
                                         "digest": {"sha256": run.binding.spec_digest}},
                                "steps": [s.name for s in run.steps]}
    if run.pipeline_steps:
        external["pipelineSteps"] = list(run.pipeline_steps)
    if run.ci:
        internal["ci"] = dict(run.ci)
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": internal,
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": {"id": run.builder_id, "version": {"sbx": run.sbx_version}},
            "metadata": {"invocationId": run.binding.run_id, "startedOn": run.started,
                         "finishedOn": run.ended},
            "byproducts": [{"name": f"attestations/{p.stem}", "digest": {"sha256": p.sha256},
                            "mediaType": PAYLOAD_TYPE,
                            "annotations": {"step": p.step or "", "kind": p.kind}}
                           for p in step_payloads],
        },
    }
    return Payload(Kind.PROVENANCE, None,
                   canonical(statement(subjects, PROVENANCE_TYPE, predicate)))


def run_payloads(run: RunEvidence) -> list[Payload]:
    """Every Statement of a run, steps first, the provenance last."""
    steps = [p for s in run.steps for p in (link_payload(s, run), isolation_payload(s, run))]
    return [*steps, provenance_payload(run, steps)]
