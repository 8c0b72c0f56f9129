"""The facts a Statement is made from: plain frozen values, no Docker, no I/O.

The pipelines layer fills these from what the sandbox reported; the statement
builders in `sbx.attest.statements` turn them into predicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Artifact:
    """A file by name and sha256.

    Names of files in the run directory are relative to it (`outputs/build/dist/x.whl`,
    `logs/build.log`), so a verifier can re-hash them; `source` says where an input
    came from: `workspace` or the name of the step that produced it.
    """

    name: str
    sha256: str
    source: str | None = None

    def descriptor(self) -> dict[str, Any]:
        """The in-toto ResourceDescriptor."""
        rd: dict[str, Any] = {"name": self.name, "digest": {"sha256": self.sha256}}
        if self.source is not None:
            rd["annotations"] = {"source": self.source}
        return rd


@dataclass(frozen=True)
class RunBinding:
    """What ties a Statement to one run: carried by every Statement of it (no replay)."""

    run_id: str
    spec_digest: str  # hex sha256 of the step or pipeline file's bytes
    git_commit: str | None = None
    # Binds the jobs of one pipeline run as one GitLab job per step: evidence of
    # another pipeline cannot be mixed into the set `sbx verify` checks.
    pipeline_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `run` object inside each predicate."""
        data: dict[str, Any] = {"id": self.run_id, "specDigest": {"sha256": self.spec_digest}}
        if self.git_commit:
            data["gitCommit"] = self.git_commit
        if self.pipeline_id:
            data["pipelineId"] = self.pipeline_id
        return data


@dataclass(frozen=True)
class Probe:
    """One fail-closed probe from inside the step's namespace."""

    name: str
    kind: str
    target: str
    blocked: bool
    detail: str = ""
    reached_if: str = ""  # what would have counted as reached: what the probe tested


@dataclass(frozen=True)
class Isolation:
    """The sandbox as the engine reported it, and what crossed its boundary."""

    network_id: str
    network_name: str
    subnet: str
    internal: bool
    egress_network: str | None
    attached: tuple[str, ...]  # container ids attached to the step network
    containers: Mapping[str, str]  # role -> container id
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    security_opt: tuple[str, ...]
    privileged: bool
    agent_caps: Mapping[str, str]
    engine_version: str
    policy: Mapping[str, Any]
    policy_digest: str
    probes: tuple[Probe, ...]
    flows: Mapping[str, int]  # verdict -> count, the step's own traffic only
    destinations: tuple[str, ...]  # host:port the step actually reached
    events_sha256: str
    events_count: int
    peer_probes: tuple[Probe, ...] = ()
    # "N attempts, M itemized": attempts counted (decisions plus what each layer
    # dropped or refused without an event) against the decision events written.
    recording: Mapping[str, int] | None = None
    # Checked HTTP requests: counts per rule and verdict, the denied ones, the hosts whose
    # TLS was inspected and the run CA's fingerprint. None when there were none.
    actions: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StepEvidence:
    """Everything the link and isolation Statements of one step say."""

    name: str
    command: tuple[str, ...]
    materials: tuple[Artifact, ...]
    products: tuple[Artifact, ...]
    logs: tuple[Artifact, ...]
    status: str
    exit_code: int | None
    reason: str | None
    image: str
    image_id: str | None
    started: str | None
    ended: str | None
    isolation: Isolation | None  # None when the sandbox never came up
    # The registry's manifest digest (repository@sha256:...) the image came from, None for
    # an image built on this engine; and the image's os/architecture[/variant].
    image_repo_digest: str | None = None
    image_platform: str | None = None


@dataclass(frozen=True)
class RunEvidence:
    """The run as a whole, for the provenance Statement."""

    binding: RunBinding
    spec_path: str
    steps: tuple[StepEvidence, ...]
    sbx_version: str
    builder_id: str
    started: str
    ended: str
    interrupted: bool = False
    ci: Mapping[str, str] = field(default_factory=dict)
    # Every step of the pipeline file when this run is one job of it (`sbx run --step`):
    # the verifier of the set of jobs takes completeness from here.
    pipeline_steps: tuple[str, ...] = ()
