"""The checks of `sbx verify`, as pure functions over opened Statements.

Nothing here reads a file or checks a signature: the verifier hands in the
Statements whose signatures verified, the documents that did not, and the
digests it observed on disk. Each check returns one `CheckResult` whose reason
names what failed and where.
"""

from __future__ import annotations

from collections.abc import Sequence

from sbx.attest.statements import Kind
from sbx.attest.verify.bundle import check_bundle
from sbx.attest.verify.isolation import check_isolation
from sbx.attest.verify.model import (
    Check,
    CheckResult,
    Observed,
    Opened,
    Rejected,
    Status,
    _index,
    _result,
    _Run,
)
from sbx.attest.verify.policy import ReleasePolicy
from sbx.attest.wire import (
    IsolationPredicate,
    LinkPredicate,
    ProvenancePredicate,
)

__all__ = [
    "Check",
    "CheckResult",
    "Observed",
    "Opened",
    "Rejected",
    "Status",
    "run_checks",
]


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
    whole = prov.predicate.buildDefinition.externalParameters.pipelineSteps
    if whole is not None and whole != run.steps:
        # One job of a pipeline run as many (`sbx run --step`) is not a release by itself.
        problems.append(f"this run is one job ({', '.join(run.steps)}) of a pipeline of "
                        f"{', '.join(whole)}: verify every job's run directory together")
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
    """Run id, spec digest, git commit and pipeline id agree across every Statement."""
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
                "another spec" if got[1] != want[1] else
                "another commit" if got[2] != want[2] else f"pipeline {got[3]}")
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
        check_bundle(observed),
        check_release_artifacts(run, observed),
        check_steps_succeeded(run, policy),
        *check_isolation(run, policy),
    ]

