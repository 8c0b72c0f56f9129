"""The checks of a pipeline run as many jobs: pure functions over opened jobs.

A job is one `sbx run --step` (or a whole run): its run directory, verified on its
own by the checks of `sbx verify`, except the hand-offs it took from other jobs.
These checks judge the set: every step of the pipeline in exactly one job, every
hand-off equal to what its producer's job signed, one pipeline id, spec and commit,
one signer per job, no sandbox shared between jobs, and the release artifacts.
Every problem names the job it is about.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sbx.attest.statements import Kind
from sbx.attest.verify.model import Observed, Opened, Rejected, Status
from sbx.attest.verify.policy import ReleasePolicy
from sbx.attest.wire import IsolationPredicate, LinkPredicate, ProvenancePredicate, RunRef


class PipelineCheck(StrEnum):
    """The checks over the set of jobs, in report order."""

    COMPLETENESS = "pipeline.completeness"
    BINDING = "pipeline.binding"
    ARTIFACT_CHAIN = "pipeline.artifact-chain"
    SIGNERS = "pipeline.signers"
    SANDBOXES = "pipeline.distinct-sandboxes"
    RELEASE_ARTIFACTS = "pipeline.release-artifacts"


@dataclass(frozen=True)
class SetResult:
    """One check over the whole set of jobs."""

    check: PipelineCheck
    status: Status
    reason: str


@dataclass(frozen=True)
class Job:
    """One job's run directory, opened: what verified, what did not, what is on disk."""

    run_dir: Path
    opened: tuple[Opened, ...]
    rejected: tuple[Rejected, ...]
    observed: Observed

    def links(self) -> dict[str, list[Opened]]:
        """Step name -> its link Statements in this job."""
        found: dict[str, list[Opened]] = defaultdict(list)
        for o in self.opened:
            if o.kind is Kind.LINK and o.step is not None:
                found[o.step].append(o)
        return dict(found)

    def steps(self) -> list[str]:
        """The steps this job ran (by their link Statements)."""
        return sorted(self.links())

    @property
    def label(self) -> str:
        """How reports name the job: its steps and its run directory."""
        return f"job {','.join(self.steps()) or '(no verified step)'} ({self.run_dir})"

    def provenance(self) -> ProvenancePredicate | None:
        """The job's one provenance, or None when it has none or several."""
        found = [o.predicate for o in self.opened if o.kind is Kind.PROVENANCE]
        if len(found) != 1:
            return None
        assert isinstance(found[0], ProvenancePredicate)
        return found[0]

    def run(self) -> RunRef | None:
        """The job's run binding, from its provenance."""
        prov = self.provenance()
        return prov.buildDefinition.internalParameters.run if prov else None

    def pipeline_steps(self) -> tuple[str, ...] | None:
        """Every step of the pipeline file, as the job signed it."""
        prov = self.provenance()
        if prov is None:
            return None
        params = prov.buildDefinition.externalParameters
        return tuple(params.pipelineSteps if params.pipelineSteps is not None else params.steps)

    def handed_in(self) -> list[tuple[str, str, str, str]]:
        """(consumer step, material name, sha256, producer step) of every input this job
        took from a step it did not run itself."""
        own = set(self.links())
        found = []
        for step, links in sorted(self.links().items()):
            for o in links:
                assert isinstance(o.predicate, LinkPredicate)
                for m in o.predicate.materials:
                    source = m.annotations.get("source", "workspace")
                    if source != "workspace" and source not in own:
                        found.append((step, m.name, m.sha256 or "", source))
        return found

    def local_view(self) -> list[Opened]:
        """The Statements with inputs from other jobs left out of their links' materials,
        and the pipeline's other steps out of the provenance: the single-run checks then
        judge what this job holds, the set checks the rest.
        The signed digest of each Statement is kept, so completeness still binds them."""
        own = set(self.links())
        out = []
        for o in self.opened:
            if isinstance(o.predicate, LinkPredicate):
                kept = [m for m in o.predicate.materials
                        if m.annotations.get("source", "workspace") in own | {"workspace"}]
                o = dataclasses.replace(
                    o, predicate=o.predicate.model_copy(update={"materials": kept}))
            elif isinstance(o.predicate, ProvenancePredicate):
                # The pipeline's other steps are the set's to check, not this job's.
                build = o.predicate.buildDefinition
                params = build.externalParameters.model_copy(update={"pipelineSteps": None})
                o = dataclasses.replace(o, predicate=o.predicate.model_copy(update={
                    "buildDefinition": build.model_copy(
                        update={"externalParameters": params})}))
            out.append(o)
        return out


def _result(check: PipelineCheck, problems: list[str], ok: str) -> SetResult:
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        return SetResult(check, Status.FAIL, "; ".join(problems[:4]) + more)
    return SetResult(check, Status.PASS, ok)


def _majority(values: Mapping[str, object]) -> object:
    return Counter(values.values()).most_common(1)[0][0] if values else None


def pipeline_steps(jobs: Sequence[Job]) -> tuple[str, ...]:
    """The pipeline's steps as most jobs signed them."""
    lists = {j.label: j.pipeline_steps() for j in jobs if j.pipeline_steps() is not None}
    found = _majority(lists)
    return found if isinstance(found, tuple) else ()


def check_completeness(jobs: Sequence[Job], policy: ReleasePolicy) -> SetResult:
    """Every step of the pipeline ran in exactly one job; no job ran anything else."""
    if not jobs:
        return SetResult(PipelineCheck.COMPLETENESS, Status.FAIL, "no run directories given")
    problems: list[str] = []
    expected = pipeline_steps(jobs)
    for job in jobs:
        listed = job.pipeline_steps()
        if listed is None:
            problems.append(f"{job.label}: no verified provenance lists the pipeline's steps")
        elif listed != expected:
            problems.append(f"{job.label}: signed another pipeline's steps "
                            f"({', '.join(listed)}), not {', '.join(expected)}")
    ran: dict[str, list[str]] = defaultdict(list)
    for job in jobs:
        for step in job.steps():
            ran[step].append(job.label)
    for step in expected:
        if not ran.get(step):
            problems.append(f"step {step!r}: no job ran it (its run directory is missing)")
        elif len(ran[step]) > 1:
            problems.append(f"step {step!r} ran {len(ran[step])} times: "
                            f"{', '.join(ran[step])}")
    for step, labels in sorted(ran.items()):
        if step not in expected:
            problems.append(f"{', '.join(labels)}: ran {step!r}, which the pipeline "
                            "does not have")
    for step in policy.required_steps:
        if step not in expected:
            problems.append(f"required step {step!r} is not in the pipeline")
    return _result(PipelineCheck.COMPLETENESS, problems,
                   f"{len(expected)} step(s) of the pipeline, each in exactly one of "
                   f"{len(jobs)} job(s)")


def check_binding(jobs: Sequence[Job]) -> SetResult:
    """One pipeline id, spec digest and commit across all jobs; no job given twice."""
    refs = {j.label: j.run() for j in jobs}
    known = {label: ref for label, ref in refs.items() if ref is not None}
    problems = [f"{label}: no verified run binding" for label, ref in refs.items()
                if ref is None]
    for label, ref in known.items():
        if not ref.pipelineId:
            problems.append(f"{label}: carries no pipeline id")
    for what, index in (("pipeline id", 3), ("spec digest", 1), ("git commit", 2)):
        values = {label: ref.key()[index] for label, ref in known.items()}
        want = _majority(values)
        for label, value in values.items():
            if value != want:
                problems.append(f"{label}: {what} {value!r}, not {want!r} as the other jobs")
    runs: dict[str, list[str]] = defaultdict(list)
    for label, ref in known.items():
        runs[ref.id].append(label)
    problems += [f"{', '.join(labels)} are one run ({run_id}) given twice"
                 for run_id, labels in runs.items() if len(labels) > 1]
    pid = _majority({label: ref.pipelineId for label, ref in known.items()})
    return _result(PipelineCheck.BINDING, problems,
                   f"{len(jobs)} job(s) of pipeline {pid}, one spec and commit")


def check_artifact_chain(jobs: Sequence[Job]) -> SetResult:
    """Every input a job took from another job equals what that job's step signed."""
    products: dict[str, list[tuple[Job, dict[str, str]]]] = defaultdict(list)
    for job in jobs:
        for step, links in job.links().items():
            products[step].append((job, links[0].subjects()))
    problems: list[str] = []
    count = 0
    for job in jobs:
        for consumer, name, digest, producer in job.handed_in():
            count += 1
            found = products.get(producer, [])
            if not found:
                problems.append(f"{job.label}: {consumer} took {name} from {producer!r}, "
                                "which no job in the set ran")
                continue
            for pjob, subjects in found:
                if subjects.get(name) != digest:
                    problems.append(f"{job.label}: {consumer} took {name} (sha256 "
                                    f"{digest[:12]}), which is not what {producer} produced "
                                    f"in {pjob.label}")
    return _result(PipelineCheck.ARTIFACT_CHAIN, problems,
                   f"{count} hand-off(s) between jobs match their producers by sha256")


def check_signers(jobs: Sequence[Job]) -> SetResult:
    """Each job's documents were signed by one signer (one key, or one certificate)."""
    problems: list[str] = []
    named: list[str] = []
    for job in jobs:
        signers = sorted({o.signer for o in job.opened})
        if not signers:
            problems.append(f"{job.label}: no document verified against the trusted signer")
        elif len(signers) > 1:
            problems.append(f"{job.label}: signed by {len(signers)} signers "
                            f"({'; '.join(signers)}), not one")
        else:
            named.append(f"{','.join(job.steps())} by {signers[0]}")
    return _result(PipelineCheck.SIGNERS, problems, "one signer per job: " + "; ".join(named))


def check_sandboxes(jobs: Sequence[Job]) -> SetResult:
    """No network or container appears in the isolation evidence of two jobs."""
    owners: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        for o in job.opened:
            if not isinstance(o.predicate, IsolationPredicate) or o.predicate.sandbox is None:
                continue
            box = o.predicate.sandbox
            for key in [f"network {box.network.id[:12]}",
                        *(f"container {c[:12]}" for c in box.containers.values())]:
                owners[key].add(job.label)
    problems = [f"{key} appears in {', '.join(sorted(labels))}"
                for key, labels in sorted(owners.items()) if len(labels) > 1]
    return _result(PipelineCheck.SANDBOXES, problems,
                   f"{len(jobs)} job(s), no network or container shared")


def check_release_artifacts(jobs: Sequence[Job],
                            artifacts: tuple[tuple[str, str], ...]) -> SetResult:
    """Each release artifact given equals an output some job's provenance names."""
    if not artifacts:
        return SetResult(PipelineCheck.RELEASE_ARTIFACTS, Status.SKIP, "no --artifact given")
    subjects: dict[str, str] = {}
    for job in jobs:
        for o in job.opened:
            if o.kind is Kind.PROVENANCE:
                subjects.update({d: f"{n} of {job.label}" for n, d in o.subjects().items()})
    problems = [f"{path} (sha256 {digest[:12]}) is no job's provenance subject"
                for path, digest in artifacts if digest not in subjects]
    return _result(PipelineCheck.RELEASE_ARTIFACTS, problems, ", ".join(
        f"{p} = {subjects[d]}" for p, d in artifacts if d in subjects))


def set_checks(jobs: Sequence[Job], policy: ReleasePolicy,
               artifacts: tuple[tuple[str, str], ...] = ()) -> list[SetResult]:
    """Every check over the set, in report order."""
    return [check_completeness(jobs, policy), check_binding(jobs),
            check_artifact_chain(jobs), check_signers(jobs), check_sandboxes(jobs),
            check_release_artifacts(jobs, artifacts)]
