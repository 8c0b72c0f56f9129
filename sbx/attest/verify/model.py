"""What the checks of `sbx verify` take and give: opened Statements, rejected documents,
what was observed on disk, the run they index into, and one result per check."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sbx.attest.statements import Kind
from sbx.attest.wire import (
    IsolationPredicate,
    LinkPredicate,
    ProvenancePredicate,
    RunRef,
    Sandbox,
    StatementWire,
)


class Check(StrEnum):
    """Every check `sbx verify` runs, in report order."""

    SIGNATURES = "signatures"
    STATEMENTS = "statements"
    COMPLETENESS = "completeness"
    RUN_BINDING = "run-binding"
    ARTIFACT_CHAIN = "artifact-chain"
    RUN_FILES = "run-files"
    BUNDLE = "attestations-bundle"
    RELEASE_ARTIFACTS = "release-artifacts"
    STEPS_SUCCEEDED = "steps-succeeded"
    INTERNAL_NETWORK = "isolation.internal-network"
    DISTINCT_NETWORKS = "isolation.distinct-networks"
    CAPABILITIES = "isolation.capabilities"
    PROBES = "isolation.probes"
    DENIED_FLOWS = "isolation.denied-flows"
    EGRESS_MODE = "isolation.egress-mode"
    DESTINATIONS = "isolation.destinations"
    ACTIONS = "isolation.actions"


class Status(StrEnum):
    """A check passes, fails, or does not apply (skip)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One row of the report."""

    check: Check
    status: Status
    reason: str


@dataclass(frozen=True)
class Opened:
    """A Statement whose signature verified and whose shape is sbx's."""

    source: str  # file name in the run directory
    sha256: str  # of the signed payload bytes
    signer: str
    statement: StatementWire
    predicate: LinkPredicate | IsolationPredicate | ProvenancePredicate

    @property
    def kind(self) -> Kind:
        """link, isolation or provenance."""
        if isinstance(self.predicate, LinkPredicate):
            return Kind.LINK
        if isinstance(self.predicate, IsolationPredicate):
            return Kind.ISOLATION
        return Kind.PROVENANCE

    @property
    def step(self) -> str | None:
        """The step a link or isolation Statement is about."""
        if isinstance(self.predicate, LinkPredicate):
            return self.predicate.name
        if isinstance(self.predicate, IsolationPredicate):
            return self.predicate.step
        return None

    @property
    def run(self) -> RunRef:
        """The run binding, wherever this predicate type keeps it."""
        p = self.predicate
        if isinstance(p, LinkPredicate):
            return p.environment.run
        if isinstance(p, IsolationPredicate):
            return p.run
        return p.buildDefinition.internalParameters.run

    def subjects(self) -> dict[str, str]:
        """Subject name -> sha256."""
        return {s.name: s.sha256 or "" for s in self.statement.subject}


@dataclass(frozen=True)
class Rejected:
    """A document that was not accepted, and why."""

    source: str
    reason: str
    signature: bool  # True: the signature failed; False: the payload is not sbx's


@dataclass(frozen=True)
class Observed:
    """What the verifier found on disk and was given on the command line."""

    files: Mapping[str, str | None]  # run-dir name -> sha256, None when missing
    events: Mapping[str, tuple[str, int]]  # step -> (sha256, count) in events.jsonl
    artifacts: tuple[tuple[str, str], ...] = ()  # (path given, sha256)
    # What is wrong with attestations.intoto.jsonl against the documents (`bundle`).
    bundle_problems: tuple[str, ...] = ()


@dataclass
class _Run:
    """The accepted Statements of the run, indexed."""

    provenance: Opened | None
    steps: list[str]
    links: dict[str, list[Opened]] = field(default_factory=lambda: defaultdict(list))
    isolations: dict[str, list[Opened]] = field(default_factory=lambda: defaultdict(list))

    def link(self, step: str) -> LinkPredicate | None:
        found = self.links.get(step) or []
        return found[0].predicate if found and isinstance(found[0].predicate,
                                                          LinkPredicate) else None

    def sandboxes(self) -> list[tuple[str, Sandbox | None]]:
        """Each step's sandbox; steps skipped before their command ran are left out:
        nothing ran in them, so there is nothing to have isolated."""
        out: list[tuple[str, Sandbox | None]] = []
        for step in sorted(self.isolations):
            link = self.link(step)
            if link is not None and link.byproducts.status == "skipped":
                continue
            for o in self.isolations[step]:
                assert isinstance(o.predicate, IsolationPredicate)
                out.append((step, o.predicate.sandbox))
        return out


def _index(opened: Sequence[Opened]) -> _Run:
    provs = [o for o in opened if o.kind is Kind.PROVENANCE]
    prov = provs[0] if len(provs) == 1 else None
    steps = (list(prov.predicate.buildDefinition.externalParameters.steps)
             if prov and isinstance(prov.predicate, ProvenancePredicate) else [])
    run = _Run(prov, steps)
    for o in opened:
        if o.kind is Kind.LINK and o.step is not None:
            run.links[o.step].append(o)
        elif o.kind is Kind.ISOLATION and o.step is not None:
            run.isolations[o.step].append(o)
    return run


def _result(check: Check, problems: list[str], ok: str) -> CheckResult:
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return CheckResult(check, Status.FAIL, "; ".join(problems[:3]) + more)
    return CheckResult(check, Status.PASS, ok)

