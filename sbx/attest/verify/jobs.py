"""`sbx verify DIR DIR ...`: a pipeline run as one job per step, verified as one.

Each job's run directory gets the checks of `sbx verify` (its hand-offs from other
jobs excepted), then the set gets the checks of `pipeline_checks`. The same per-job
verification gates a hand-off: `sbx run --step` accepts a producer's files only when
the producer's job verifies (`handoff_failures`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sbx.attest.errors import EvidenceInputError
from sbx.attest.verify import evidence
from sbx.attest.verify.checks import run_checks
from sbx.attest.verify.model import Check, CheckResult, Status
from sbx.attest.verify.pipeline_checks import Job, SetResult, set_checks
from sbx.attest.verify.policy import DEFAULT_POLICY, ReleasePolicy
from sbx.attest.verify.trust import Trust
from sbx.attest.verify.verifier import open_run

# What a producer's job must pass before its files enter another job's sandbox: its
# evidence is whole, signed by the trusted signer, unchanged, and its step succeeded.
# Isolation is the release policy's matter, judged over the whole set by `sbx verify`.
HANDOFF_CHECKS = frozenset({Check.SIGNATURES, Check.STATEMENTS, Check.COMPLETENESS,
                            Check.RUN_BINDING, Check.ARTIFACT_CHAIN, Check.RUN_FILES,
                            Check.STEPS_SUCCEEDED})


def is_run_dir(path: Path) -> bool:
    """A directory `sbx run` wrote: it has evidence or a run record."""
    return path.is_dir() and any((path / name).exists() for name in (
        evidence.ATTESTATIONS_DIR, evidence.BUNDLE_FILE, "run.json"))


def expand_run_dirs(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """Each path a run directory, or a directory holding one run directory per job."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise EvidenceInputError(f"{path}: not a directory: pass the run directories "
                                     "of the pipeline's jobs (or the folder holding them)")
        if is_run_dir(path):
            found.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if not p.is_symlink() and is_run_dir(p))
        if not inner:
            raise EvidenceInputError(f"{path}: not an sbx run directory, nor a folder of "
                                     "run directories: pass what `sbx run --out` wrote")
        found += inner
    seen: set[Path] = set()
    unique = []
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def open_job(run_dir: Path, trust: Trust) -> Job:
    """Open one job's documents and read the files they name."""
    opened, rejected, observed = open_run(run_dir, trust)
    return Job(run_dir, tuple(opened), tuple(rejected), observed)


def job_checks(job: Job, policy: ReleasePolicy, trust: str) -> tuple[CheckResult, ...]:
    """The checks of `sbx verify` over one job, hand-offs from other jobs excepted."""
    local = policy.model_copy(update={"required_steps": ()})
    results = run_checks(job.local_view(), job.rejected, replace(job.observed, artifacts=()),
                         local, trust)
    return tuple(r for r in results if r.check is not Check.RELEASE_ARTIFACTS)


def handoff_failures(job: Job, trust: str) -> list[CheckResult]:
    """The checks a producer's job fails that bar its files from a hand-off."""
    return [r for r in job_checks(job, DEFAULT_POLICY, trust)
            if r.check in HANDOFF_CHECKS and r.status is Status.FAIL]


@dataclass(frozen=True)
class JobReport:
    """One job's checks."""

    label: str
    run_dir: Path
    results: tuple[CheckResult, ...]


@dataclass(frozen=True)
class PipelineReport:
    """The outcome of `sbx verify` over many jobs."""

    trust: str
    jobs: tuple[JobReport, ...]
    results: tuple[SetResult, ...]

    @property
    def passed(self) -> bool:
        """True only when no check of any job and no check of the set failed."""
        return not self.failures()

    def failures(self) -> list[tuple[str, str, str]]:
        """(job or `pipeline`, check, reason) of every failed check."""
        found = [(j.label, r.check.value, r.reason) for j in self.jobs for r in j.results
                 if r.status is Status.FAIL]
        return found + [("pipeline", r.check.value, r.reason) for r in self.results
                        if r.status is Status.FAIL]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        return {"trust": self.trust, "passed": self.passed,
                "jobs": [{"job": j.label, "run_dir": str(j.run_dir),
                          "checks": [{"check": r.check.value, "status": r.status.value,
                                      "reason": r.reason} for r in j.results]}
                         for j in self.jobs],
                "pipeline": [{"check": r.check.value, "status": r.status.value,
                              "reason": r.reason} for r in self.results]}


def verify_pipeline(dirs: list[Path], trust: Trust, policy: ReleasePolicy,
                    artifacts: tuple[Path, ...] = ()) -> PipelineReport:
    """Verify the jobs' run directories as one pipeline."""
    jobs = [open_job(d, trust) for d in dirs]
    described = trust.describe()
    reports = tuple(JobReport(j.label, j.run_dir, job_checks(j, policy, described))
                    for j in jobs)
    given = tuple((str(p), evidence.artifact_sha256(p)) for p in artifacts)
    return PipelineReport(described, reports, tuple(set_checks(jobs, policy, given)))
