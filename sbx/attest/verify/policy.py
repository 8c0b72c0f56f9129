"""The release policy: what a run's evidence must show before anything ships.

A YAML file, validated here with `extra="forbid"`; `sbx schema --release-policy`
prints its JSON Schema and `sbx lint` checks it. Every field has a strict
default, so an empty policy (`version: 1`) is the strictest one.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignerPolicy(_Model):
    """Who must have signed: a public key file, or a Sigstore identity and issuer."""

    key: str | None = Field(None, description="path of the Ed25519 public key (sbx.pub)")
    identity: str | None = Field(
        None, description="certificate identity (SAN), e.g. "
        "https://gitlab.com/group/project//.gitlab-ci.yml@refs/heads/main")
    issuer: str | None = Field(None, description="OIDC issuer, e.g. https://gitlab.com")
    trusted_root: str | None = Field(
        None, description="Sigstore trusted root JSON of a self-hosted instance")

    @model_validator(mode="after")
    def _one_way(self) -> SignerPolicy:
        if self.key and (self.identity or self.issuer):
            raise ValueError("give either key or identity and issuer, not both")
        if not self.key and not (self.identity and self.issuer):
            raise ValueError("give key (a public key file), or both identity and issuer")
        return self


class IsolationPolicy(_Model):
    """What every step's isolation Statement must show."""

    internal_network: StrictBool = Field(True, description="each step on an internal network")
    distinct_networks: StrictBool = Field(
        True, description="no network and no container shared by two steps")
    no_capabilities: StrictBool = Field(
        True, description="step: all capabilities dropped, no-new-privileges, not privileged")
    probes_blocked: StrictBool = Field(True, description="every fail-closed probe was blocked")
    max_denied_flows: StrictInt = Field(
        0, ge=0, description="denied egress attempts allowed per step")
    allow_audit_mode: StrictBool = Field(
        False, description="accept steps whose egress policy was in audit mode")
    max_denied_requests: StrictInt = Field(
        0, ge=0, description="HTTP requests denied by action-level checks allowed per step")


class ReleasePolicy(_Model):
    """What `sbx verify --policy` enforces."""

    version: Literal[1] = Field(description="policy format version; write 1")
    signer: SignerPolicy | None = None
    required_steps: tuple[str, ...] = Field(
        (), description="steps the run must contain (besides every step it lists)")
    steps_succeeded: StrictBool = Field(True, description="every step exited 0")
    isolation: IsolationPolicy = IsolationPolicy()
    destinations: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="per step (or '*' for every step): host:port patterns the step may "
        "have reached; a step not listed (and no '*') is not limited")

    inspected_hosts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="per step (or '*' for every step): hosts whose TLS the step's signed "
        "policy must inspect (an action-level rule covers them)")

    def inspected_hosts_for(self, step: str) -> tuple[str, ...]:
        """Hosts the step's policy must inspect (those of the step, else of '*')."""
        if step in self.inspected_hosts:
            return self.inspected_hosts[step]
        return self.inspected_hosts.get("*", ())

    def destinations_for(self, step: str) -> tuple[str, ...] | None:
        """The allowed destination patterns of a step, or None when it is not limited."""
        if step in self.destinations:
            return self.destinations[step]
        return self.destinations.get("*")


def destination_allowed(destination: str, patterns: tuple[str, ...]) -> bool:
    """`host:port` against patterns such as `mirror.internal:443` or `*.example.com:*`."""
    return any(fnmatch.fnmatchcase(destination.lower(), p.lower()) for p in patterns)


def release_policy_schema() -> dict[str, Any]:
    """JSON Schema of a release policy file."""
    return ReleasePolicy.model_json_schema()


DEFAULT_POLICY = ReleasePolicy(version=1)
