"""The checks of `sbx verify`, as pure functions over opened Statements.

Nothing here reads a file or checks a signature: the verifier hands in the
Statements whose signatures verified, the documents that did not, and the
digests it observed on disk. Each check returns one `CheckResult` whose reason
names what failed and where.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sbx.attest.statements import Kind
from sbx.attest.verify.policy import ReleasePolicy, destination_allowed
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
    RELEASE_ARTIFACTS = "release-artifacts"
    STEPS_SUCCEEDED = "steps-succeeded"
    INTERNAL_NETWORK = "isolation.internal-network"
    DISTINCT_NETWORKS = "isolation.distinct-networks"
    CAPABILITIES = "isolation.capabilities"
    PROBES = "isolation.probes"
    DENIED_FLOWS = "isolation.denied-flows"
    EGRESS_MODE = "isolation.egress-mode"
    DESTINATIONS = "isolation.destinations"


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


def check_signatures(opened: Sequence[Opened], rejected: Sequence[Rejected],
                     trust: str) -> CheckResult:
    """Every document's signature verifies for the trusted signer."""
    bad = [f"{r.source}: {r.reason}" for r in rejected if r.signature]
    if not opened and not bad:
        bad = ["no signed documents in the run directory"]
    signers = sorted({o.signer for o in opened})
    return _result(Check.SIGNATURES, bad,
                   f"{len(opened)} documents signed by {', '.join(signers) or trust}")


def check_statements(rejected: Sequence[Rejected], count: int) -> CheckResult:
    """Every signed payload is an in-toto Statement v1 of a predicate type sbx writes."""
    bad = [f"{r.source}: {r.reason}" for r in rejected if not r.signature]
    return _result(Check.STATEMENTS, bad,
                   f"{count} in-toto Statement v1 payloads, canonical, of known types")


def check_completeness(run: _Run, opened: Sequence[Opened],
                       policy: ReleasePolicy) -> CheckResult:
    """One provenance; every listed step has one link and one isolation Statement,
    each the very one the provenance lists by digest; nothing else is present."""
    provs = [o for o in opened if o.kind is Kind.PROVENANCE]
    if len(provs) != 1:
        return CheckResult(Check.COMPLETENESS, Status.FAIL,
                           f"{len(provs)} provenance Statements found; a run has exactly one")
    problems: list[str] = []
    for step in policy.required_steps:
        if step not in run.steps:
            problems.append(f"required step {step!r} is not in the run")
    prov = run.provenance
    assert prov is not None and isinstance(prov.predicate, ProvenancePredicate)
    listed = {(b.annotations.get("step", ""), b.annotations.get("kind", "")): b.sha256
              for b in prov.predicate.runDetails.byproducts}
    for step in run.steps:
        for kind, found in ((Kind.LINK, run.links.get(step, [])),
                            (Kind.ISOLATION, run.isolations.get(step, []))):
            if not found:
                problems.append(f"step {step!r} has no {kind} Statement")
                continue
            if len(found) > 1:
                problems.append(f"step {step!r} has {len(found)} {kind} Statements "
                                f"({', '.join(o.source for o in found)})")
            want = listed.get((step, kind))
            for o in found:
                if want != o.sha256:
                    problems.append(f"{o.source} is not the {kind} Statement the provenance "
                                    f"lists for {step!r} (sha256 {o.sha256[:12]}, listed "
                                    f"{(want or 'none')[:12]})")
    for step in sorted(set(run.links) | set(run.isolations)):
        if step not in run.steps:
            problems.append(f"Statements for step {step!r}, which the run does not list")
    return _result(Check.COMPLETENESS, problems,
                   f"{len(run.steps)} step(s), each with its link and isolation Statement "
                   "as listed in the provenance")


def check_run_binding(run: _Run, opened: Sequence[Opened]) -> CheckResult:
    """Run id, spec digest and git commit agree across every Statement (no replay)."""
    if run.provenance is None:
        return CheckResult(Check.RUN_BINDING, Status.FAIL, "no single provenance to bind to")
    prov = run.provenance
    assert isinstance(prov.predicate, ProvenancePredicate)
    want = prov.run.key()
    problems = []
    if prov.predicate.runDetails.metadata.invocationId != want[0]:
        problems.append(f"{prov.source}: invocationId differs from its run id {want[0]}")
    if prov.predicate.buildDefinition.externalParameters.spec.digest.get("sha256") != want[1]:
        problems.append(f"{prov.source}: spec digest differs from its run binding")
    for o in opened:
        got = o.run.key()
        if got != want:
            what = ("run " + got[0]) if got[0] != want[0] else (
                "another spec" if got[1] != want[1] else "another commit")
            problems.append(f"{o.source} belongs to {what}, not run {want[0]}")
    return _result(Check.RUN_BINDING, problems,
                   f"all {len(opened)} Statements bound to run {want[0]}")


def check_artifact_chain(run: _Run, opened: Sequence[Opened]) -> CheckResult:
    """Inputs taken from a step equal that step's outputs; the provenance's subjects
    are exactly the steps' outputs; workspace inputs are resolved dependencies."""
    problems: list[str] = []
    products: dict[str, dict[str, str]] = {
        step: found[0].subjects() for step, found in run.links.items() if found}
    for step, found in sorted(run.links.items()):
        for o in found:
            assert isinstance(o.predicate, LinkPredicate)
            for m in o.predicate.materials:
                source = m.annotations.get("source", "workspace")
                if source == "workspace":
                    continue
                if source not in products:
                    problems.append(f"{step}: input {m.name} comes from {source!r}, "
                                    "which has no link Statement")
                elif products[source].get(m.name) != m.sha256:
                    problems.append(f"{step}: input {m.name} (sha256 {(m.sha256 or '')[:12]})"
                                    f" is not what {source} produced")
        for iso in run.isolations.get(step, []):
            if iso.subjects() != found[0].subjects():
                problems.append(f"{iso.source}: subjects differ from the link's")
    if run.provenance is not None:
        prov = run.provenance
        assert isinstance(prov.predicate, ProvenancePredicate)
        outputs = {n: d for step, subs in products.items() for n, d in subs.items()
                   if not n.startswith("logs/")}
        if not outputs:
            outputs = {n: d for subs in products.values() for n, d in subs.items()}
        subjects = prov.subjects()
        for name in sorted(set(subjects) ^ set(outputs)):
            where = "provenance" if name in subjects else "step outputs"
            problems.append(f"{name} appears only in the {where}")
        for name in sorted(set(subjects) & set(outputs)):
            if subjects[name] != outputs[name]:
                problems.append(f"{name}: provenance digest differs from the step's output")
        deps = {(d.name, d.sha256) for d in prov.predicate.buildDefinition.resolvedDependencies}
        for step, found in sorted(run.links.items()):
            assert isinstance(found[0].predicate, LinkPredicate)
            for m in found[0].predicate.materials:
                if m.annotations.get("source", "workspace") == "workspace" and \
                        (m.name, m.sha256) not in deps:
                    problems.append(f"{step}: workspace input {m.name} is not a resolved "
                                    "dependency of the provenance")
    return _result(Check.ARTIFACT_CHAIN, problems,
                   "every hand-off and every provenance subject matches by sha256")


def check_run_files(run: _Run, observed: Observed) -> CheckResult:
    """Outputs, logs and each step's event lines on disk are the ones that were signed."""
    problems: list[str] = []
    checked = 0
    for _, found in sorted(run.links.items()):
        link = found[0]
        assert isinstance(link.predicate, LinkPredicate)
        named = dict(link.subjects())
        named.update({d.name: d.sha256 or "" for d in link.predicate.byproducts.logs})
        for name, signed in sorted(named.items()):
            checked += 1
            got = observed.files.get(name)
            if got is None:
                problems.append(f"{name} is missing from the run directory")
            elif got != signed:
                problems.append(f"{name} changed after the run (sha256 {got[:12]}, "
                                f"signed {signed[:12]})")
    for step, found in sorted(run.isolations.items()):
        assert isinstance(found[0].predicate, IsolationPredicate)
        sandbox = found[0].predicate.sandbox
        if sandbox is None:
            continue
        checked += 1
        got_digest, got_count = observed.events.get(step, ("", 0))
        if got_digest != sandbox.events.digest.get("sha256"):
            problems.append(f"events.jsonl lines of {step} changed after the run "
                            f"({got_count} lines now, {sandbox.events.count} signed)")
    return _result(Check.RUN_FILES, problems,
                   f"{checked} files and event logs match their signed digests")


def check_release_artifacts(run: _Run, observed: Observed) -> CheckResult:
    """Each release artifact given equals a provenance subject by sha256."""
    if not observed.artifacts:
        return CheckResult(Check.RELEASE_ARTIFACTS, Status.SKIP, "no --artifact given")
    subjects = run.provenance.subjects() if run.provenance else {}
    by_digest = {d: n for n, d in subjects.items()}
    problems = [f"{path} (sha256 {digest[:12]}) is not a subject of the provenance"
                for path, digest in observed.artifacts if digest not in by_digest]
    matched = ", ".join(f"{p} = {by_digest[d]}" for p, d in observed.artifacts
                        if d in by_digest)
    return _result(Check.RELEASE_ARTIFACTS, problems, matched)


def check_steps_succeeded(run: _Run, policy: ReleasePolicy) -> CheckResult:
    """Every step exited 0 and the run was not interrupted."""
    if not policy.steps_succeeded:
        return CheckResult(Check.STEPS_SUCCEEDED, Status.SKIP, "the policy allows failed steps")
    problems: list[str] = []
    if run.provenance is not None:
        assert isinstance(run.provenance.predicate, ProvenancePredicate)
        if run.provenance.predicate.buildDefinition.internalParameters.interrupted:
            problems.append("the run was interrupted")
    for step in run.steps:
        link = run.link(step)
        if link is None:
            continue
        b = link.byproducts
        if b.status != "succeeded" or b.exitCode != 0:
            why = f": {b.reason}" if b.reason else ""
            problems.append(f"{step} {b.status} (exit {b.exitCode}){why}")
    return _result(Check.STEPS_SUCCEEDED, problems, f"{len(run.steps)} step(s) exited 0")


def _per_sandbox(check: Check, enabled: bool, what: str,
                 judge: Iterable[tuple[str, Sandbox | None]],
                 test: Callable[[str, Sandbox], str | None]) -> CheckResult:
    if not enabled:
        return CheckResult(check, Status.SKIP, "not required by the policy")
    problems: list[str] = []
    count = 0
    for step, sandbox in judge:
        count += 1
        if sandbox is None:
            problems.append(f"{step}: no sandbox came up")
            continue
        problem = test(step, sandbox)
        if problem:
            problems.append(f"{step}: {problem}")
    if count == 0:
        problems.append("no isolation Statements")
    return _result(check, problems, f"{count} step(s): {what}")


def _capabilities(_: str, s: Sandbox) -> str | None:
    if "ALL" not in s.step.capDrop:
        return f"capabilities not all dropped (cap_drop {s.step.capDrop})"
    if s.step.capAdd:
        return f"capabilities added: {', '.join(s.step.capAdd)}"
    if s.step.privileged:
        return "privileged container"
    if not any(o.startswith("no-new-privileges") for o in s.step.securityOpt):
        return "no-new-privileges not set"
    if not s.agentCaps:
        return "the agent did not report its capabilities"
    sets = {k: v for k, v in s.agentCaps.items() if k.startswith("Cap")}
    try:
        left = [k for k, v in sorted(sets.items()) if int(v, 16)]
    except ValueError:
        return "the agent's capability sets are not hexadecimal"
    if len(sets) < 5 or left:
        return f"the agent kept capabilities ({', '.join(left) or 'sets missing'})"
    if s.agentCaps.get("NoNewPrivs") != "1":
        return "the agent runs without no-new-privs"
    return None


def _probes(_: str, s: Sandbox) -> str | None:
    if not s.probes:
        return "no probes were run"
    through = [f"{p.name} {p.target}" for p in [*s.probes, *s.peerProbes] if not p.blocked]
    return f"probes got through: {', '.join(through)}" if through else None


def check_isolation(run: _Run, policy: ReleasePolicy) -> list[CheckResult]:
    """Every isolation claim the release policy asks for."""
    iso = policy.isolation
    boxes = run.sandboxes()
    results = [
        _per_sandbox(Check.INTERNAL_NETWORK, iso.internal_network,
                     "each on an internal network", boxes,
                     lambda _, s: None if s.network.internal
                     else f"network {s.network.name} is not internal"),
        _distinct(iso.distinct_networks, boxes),
        _per_sandbox(Check.CAPABILITIES, iso.no_capabilities,
                     "no capabilities, no-new-privileges", boxes, _capabilities),
        _per_sandbox(Check.PROBES, iso.probes_blocked, "every probe blocked", boxes,
                     _probes),
        _per_sandbox(Check.DENIED_FLOWS, True,
                     f"at most {iso.max_denied_flows} denied flow(s) each", boxes,
                     lambda _, s: None if s.flows.get("denied", 0) <= iso.max_denied_flows
                     else f"{s.flows.get('denied', 0)} denied egress attempt(s), the policy "
                     f"allows {iso.max_denied_flows}"),
        _per_sandbox(Check.EGRESS_MODE, not iso.allow_audit_mode, "egress enforced",
                     boxes, lambda _, s: None if s.policy.get("mode") == "enforce"
                     else f"egress policy mode is {s.policy.get('mode')!r}, not enforce"),
        _per_sandbox(Check.DESTINATIONS, bool(policy.destinations),
                     "destinations within the policy", boxes,
                     lambda step, s: _destinations(policy, step, s)),
    ]
    return results


def _destinations(policy: ReleasePolicy, step: str, s: Sandbox) -> str | None:
    allowed = policy.destinations_for(step)
    if allowed is None:
        return None
    extra = [d for d in s.destinations if not destination_allowed(d, allowed)]
    return f"reached {', '.join(extra)}, outside the policy's set" if extra else None


def _distinct(enabled: bool,
              boxes: list[tuple[str, Sandbox | None]]) -> CheckResult:
    if not enabled:
        return CheckResult(Check.DISTINCT_NETWORKS, Status.SKIP, "not required by the policy")
    problems: list[str] = []
    owners: dict[str, set[str]] = defaultdict(set)
    for step, s in boxes:
        if s is None:
            problems.append(f"{step}: no sandbox came up")
            continue
        for key in [f"network {s.network.id[:12]}", f"subnet {s.network.subnet}",
                    *(f"container {c[:12]}" for c in s.network.attached),
                    *(f"container {c[:12]}" for c in s.containers.values())]:
            owners[key].add(step)
    counts = Counter(step for step, _ in boxes)
    problems += [f"step {step!r} has {n} isolation Statements" for step, n in counts.items()
                 if n > 1]
    problems += [f"{key} shared by {', '.join(sorted(steps))}"
                 for key, steps in sorted(owners.items()) if len(steps) > 1]
    return _result(Check.DISTINCT_NETWORKS, problems,
                   f"{len(boxes)} step(s), no network or container shared")


def run_checks(opened: Sequence[Opened], rejected: Sequence[Rejected], observed: Observed,
               policy: ReleasePolicy, trust: str) -> list[CheckResult]:
    """Every check, in report order."""
    run = _index(opened)
    return [
        check_signatures(opened, rejected, trust),
        check_statements(rejected, len(opened)),
        check_completeness(run, opened, policy),
        check_run_binding(run, opened),
        check_artifact_chain(run, opened),
        check_run_files(run, observed),
        check_release_artifacts(run, observed),
        check_steps_succeeded(run, policy),
        *check_isolation(run, policy),
    ]
