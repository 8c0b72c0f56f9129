"""Private wire models of sbx's Statements, for reading them back strictly.

Payloads are untrusted input to the verifier even after their signature
checks out (a key can be stolen, a policy can be lax), so they are parsed with
strict pydantic models: no coercion, no unknown fields, every field typed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sbx.attest.statements import (
    ISOLATION_TYPE,
    LINK_TYPE,
    PROVENANCE_TYPE,
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              populate_by_name=True)


class Descriptor(_Wire):
    """An in-toto ResourceDescriptor, the fields sbx writes."""

    name: str = ""
    digest: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    mediaType: str | None = None

    @property
    def sha256(self) -> str | None:
        """The sha256 digest, if any."""
        return self.digest.get("sha256")


class RunRef(_Wire):
    """The run binding every predicate carries."""

    id: str
    specDigest: dict[str, str]
    gitCommit: str | None = None
    pipelineId: str | None = None

    def key(self) -> tuple[str, str, str | None, str | None]:
        """What must agree across all Statements of one run."""
        return (self.id, self.specDigest.get("sha256", ""), self.gitCommit, self.pipelineId)


class LinkByproducts(_Wire):
    """Byproducts of a link: how the command ended and its logs."""

    status: str
    exitCode: int | None
    logs: list[Descriptor]
    reason: str | None = None


class LinkEnvironment(_Wire):
    """Where the command ran."""

    run: RunRef
    image: str
    imageDigest: str | None = None
    imageRepoDigest: str | None = None
    imagePlatform: str | None = None
    startedOn: str | None = None
    finishedOn: str | None = None
    sbxVersion: str


class LinkPredicate(_Wire):
    """in-toto link v0.3 as sbx writes it."""

    name: str
    command: list[str]
    materials: list[Descriptor]
    byproducts: LinkByproducts
    environment: LinkEnvironment


class Network(_Wire):
    """The step's network as the engine reported it."""

    id: str
    name: str
    subnet: str
    internal: bool
    attached: list[str]
    egressNetwork: str | None


class StepSecurity(_Wire):
    """The step container's privileges."""

    capDrop: list[str]
    capAdd: list[str]
    securityOpt: list[str]
    privileged: bool


class ProbeWire(_Wire):
    """One probe result."""

    name: str
    kind: str
    target: str
    blocked: bool
    detail: str
    reachedIf: str = ""


class EventsRef(_Wire):
    """The step's lines of events.jsonl, by digest."""

    digest: dict[str, str]
    count: int


class Sandbox(_Wire):
    """sbx isolation predicate: the sandbox part."""

    network: Network
    containers: dict[str, str]
    step: StepSecurity
    agentCaps: dict[str, str]
    engineVersion: str
    policy: dict[str, Any]
    policyDigest: dict[str, str]
    probes: list[ProbeWire]
    peerProbes: list[ProbeWire]
    flows: dict[str, int]
    destinations: list[str]
    events: EventsRef
    recording: dict[str, int] | None = None
    actions: dict[str, Any] | None = None


class IsolationPredicate(_Wire):
    """sbx isolation v1."""

    run: RunRef
    step: str
    sandbox: Sandbox | None


class Spec(_Wire):
    """The spec file the run was started from."""

    path: str
    digest: dict[str, str]


class ExternalParameters(_Wire):
    """What the user asked for."""

    spec: Spec
    steps: list[str]
    pipelineSteps: list[str] | None = None


class InternalParameters(_Wire):
    """What sbx decided."""

    run: RunRef
    interrupted: bool
    ci: dict[str, str] | None = None


class BuildDefinition(_Wire):
    """SLSA buildDefinition."""

    buildType: str
    externalParameters: ExternalParameters
    internalParameters: InternalParameters
    resolvedDependencies: list[Descriptor]


class Builder(_Wire):
    """SLSA builder."""

    id: str
    version: dict[str, str]


class Metadata(_Wire):
    """SLSA run metadata."""

    invocationId: str
    startedOn: str
    finishedOn: str


class RunDetails(_Wire):
    """SLSA runDetails."""

    builder: Builder
    metadata: Metadata
    byproducts: list[Descriptor]


class ProvenancePredicate(_Wire):
    """SLSA provenance v1 as sbx writes it."""

    buildDefinition: BuildDefinition
    runDetails: RunDetails


class StatementWire(_Wire):
    """An in-toto Statement v1 with a predicate sbx knows."""

    type_: Literal["https://in-toto.io/Statement/v1"] = Field(alias="_type")
    subject: list[Descriptor] = Field(min_length=1)
    predicateType: Literal["https://in-toto.io/attestation/link/v0.3",
                           "https://sbx.dev/attestation/isolation/v1",
                           "https://slsa.dev/provenance/v1"]
    predicate: dict[str, Any]


PREDICATES: dict[str, type[_Wire]] = {
    LINK_TYPE: LinkPredicate,
    ISOLATION_TYPE: IsolationPredicate,
    PROVENANCE_TYPE: ProvenancePredicate,
}
