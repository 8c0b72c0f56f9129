"""`sbx run pipeline.yaml --step NAME`: one step of a pipeline as one CI job.

GitLab schedules the jobs and carries each job's run directory to the jobs that
need it as an artifact. Nothing of a producer enters this job's sandbox before its
job's evidence verifies (signed by the trusted signer, whole, unchanged, its step
succeeded, the same pipeline file and pipeline id) and each handed file equals the
digest its producer signed. The verified bytes are copied into this run's store
and hashed again there, so a file swapped after the check is refused too.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from sbx.attest.digests import sha256_file
from sbx.attest.model import Artifact
from sbx.attest.signing.interface import Signer
from sbx.errors import EXIT_FAILED, InputError, SbxError
from sbx.pipelines.run.handoff import STORE
from sbx.pipelines.spec.pipeline import InputFrom, Pipeline, PlannedStep

if TYPE_CHECKING:  # imported where used: only a `--step` job verifies producers, and
    # the verifier's imports (Sigstore, pydantic models) are most of `sbx run`'s start-up.
    from sbx.attest.verify.pipeline_checks import Job
    from sbx.attest.verify.trust import Trust



class HandoffRefused(SbxError):
    """A producer's evidence or files do not verify: the step does not run (exit 1)."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class JobOptions:
    """`--step`, `--inputs-from`, `--pipeline-id` and whom to trust for the inputs."""

    step: str | None = None
    inputs_from: tuple[Path, ...] = ()
    pipeline_id: str | None = None
    trust_keys: tuple[Path, ...] = ()
    trust_identity: str | None = None
    trust_issuer: str | None = None
    trusted_root: Path | None = None


def gitlab_pipeline_id(environ: Mapping[str, str]) -> str | None:
    """GitLab's pipeline of this job, with its project (ids are per instance)."""
    pid = environ.get("CI_PIPELINE_ID")
    project = environ.get("CI_PROJECT_PATH") or environ.get("CI_PROJECT_ID")
    if not (pid and project):
        return None
    host = environ.get("CI_SERVER_HOST") or "gitlab"
    return f"{host}/{project}/-/pipelines/{pid}"


def fresh_pipeline_id() -> str:
    """A pipeline id for a run outside GitLab; later jobs take it from their inputs."""
    return f"sbx-{uuid.uuid4().hex}"


def input_trust(options: JobOptions, signer: Signer, trust_config: Path | None) -> Trust:
    """Whom producers must be signed by: the flags, else the signer this job signs with."""
    from sbx.attest.signing.keyless import SigstoreSigner
    from sbx.attest.signing.local import LocalSigner
    from sbx.attest.verify.trust import IdentityTrust, KeyTrust, TrustFlags

    flags = TrustFlags(options.trust_keys, options.trust_identity, options.trust_issuer,
                       options.trusted_root, key_flag="--inputs-key",
                       identity_flag="--inputs-cert-identity",
                       issuer_flag="--inputs-cert-oidc-issuer")
    chosen = flags.trust(trust_config)
    if chosen is not None:
        return chosen
    if isinstance(signer, LocalSigner):
        return KeyTrust([signer.public_key])
    if isinstance(signer, SigstoreSigner):
        identity, issuer = signer.certificate_identity()
        return IdentityTrust(identity, issuer, options.trusted_root or trust_config)
    raise InputError("no trust for the inputs: pass --inputs-key or --inputs-cert-identity")


@dataclass(frozen=True)
class Producers:
    """The verified producers of one step: the pipeline id and the files to hand in."""

    pipeline_id: str
    files: tuple[tuple[Path, Artifact], ...] = ()  # (file in the producer's run dir, material)
    jobs: tuple[str, ...] = field(default=())


def _safe_name(name: str, producer: str) -> str | None:
    """The path inside the producer's outputs, or None for a name that could escape."""
    parts = PurePosixPath(name).parts
    if (len(parts) < 3 or parts[:2] != ("outputs", producer) or name.startswith("/")
            or any(p in ("", ".", "..") or "\\" in p for p in parts)):
        return None
    return "/".join(parts[2:])


def _files(step: str, item: InputFrom, job: Job) -> list[tuple[Path, Artifact]]:
    links = job.links()[item.from_]
    want = item.path.rstrip("/")
    chosen: list[tuple[Path, Artifact]] = []
    for name, digest in sorted(links[0].subjects().items()):
        rel = _safe_name(name, item.from_)
        if rel is None or not (rel == want or rel.startswith(want + "/")):
            continue
        chosen.append((job.run_dir / name, Artifact(name, digest, item.from_)))
    if not chosen:
        raise HandoffRefused(f"{step}: input {item.path} from {item.from_}: {job.label} "
                             "signed no such output")
    return chosen


def verify_producers(planned: PlannedStep, spec_digest: str, dirs: tuple[Path, ...],
                     trust: Trust, pipeline_id: str | None) -> Producers:
    """Open and verify every producer this step needs; refuse in one line if one fails."""
    from sbx.attest.verify.jobs import expand_run_dirs, handoff_failures, open_job

    step = planned.spec.name
    if planned.needs and not dirs:
        raise InputError(f"step {step} needs {', '.join(planned.needs)}: pass --inputs-from "
                         "with their run directories (the artifacts of their jobs)")
    jobs = [open_job(d, trust) for d in expand_run_dirs(list(dirs))] if dirs else []
    described = trust.describe()
    for job in jobs:
        if job.rejected and not job.opened:
            raise HandoffRefused(f"{step}: {job.run_dir}: its evidence does not verify "
                                 f"against {described}: {job.rejected[0].reason}")
    by_step: dict[str, list[Job]] = {}
    for job in jobs:
        for name in job.steps():
            by_step.setdefault(name, []).append(job)
    chosen: dict[str, Job] = {}
    for need in planned.needs:
        found = by_step.get(need, [])
        if not found:
            raise InputError(f"step {step} needs {need}, and no run directory given with "
                             f"--inputs-from holds {need}'s signed evidence: pass its job's "
                             "run directory")
        if len(found) > 1:
            raise HandoffRefused(f"{step}: {need} ran in {len(found)} of the given run "
                                 f"directories ({', '.join(str(j.run_dir) for j in found)}); "
                                 "a pipeline runs each step once")
        chosen[need] = found[0]
    ids: dict[str, str] = {}
    for need, job in chosen.items():
        failures = handoff_failures(job, described)
        if failures:
            first = failures[0]
            raise HandoffRefused(f"{step}: producer {need} refused: {job.label}: "
                                 f"{first.check.value}: {first.reason}")
        run = job.run()
        assert run is not None  # run-binding passed
        if run.specDigest.get("sha256") != spec_digest:
            raise HandoffRefused(f"{step}: producer {need} refused: {job.label} ran another "
                                 "pipeline file (its spec digest differs from this one's)")
        if not run.pipelineId:
            raise HandoffRefused(f"{step}: producer {need} refused: {job.label} carries no "
                                 "pipeline id")
        ids[need] = run.pipelineId
    distinct = sorted(set(ids.values()))
    if len(distinct) > 1:
        raise HandoffRefused(f"{step}: producers of different pipelines: " + ", ".join(
            f"{n} of {p}" for n, p in sorted(ids.items())))
    if distinct and pipeline_id and distinct[0] != pipeline_id:
        need = next(iter(ids))
        raise HandoffRefused(f"{step}: producer {need} refused: {chosen[need].label} belongs "
                             f"to pipeline {distinct[0]}, not {pipeline_id}")
    files = [f for item in planned.handoffs for f in _files(step, item, chosen[item.from_])]
    return Producers(pipeline_id or (distinct[0] if distinct else fresh_pipeline_id()),
                     tuple(files), tuple(j.label for j in chosen.values()))


def stage(producers: Producers, out: Path, step: str,
          ) -> tuple[tuple[tuple[Path, str], ...], tuple[Artifact, ...]]:
    """Copy each verified file into this run's store, hash the copy, and hand back
    what the sandbox copies in (store file, path) and the step's materials."""
    store = out / STORE
    store.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, str]] = []
    materials: list[Artifact] = []
    for source, artifact in producers.files:
        dest = store / artifact.sha256
        if not dest.exists():
            tmp = dest.with_name(f"{dest.name}.{threading.get_ident()}.tmp")
            try:
                # O_NOFOLLOW: a file swapped for a link after the check is refused, not read.
                try:
                    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError as exc:
                    raise HandoffRefused(f"{step}: input {artifact.name} is not a readable "
                                         "file in its producer's run directory "
                                         f"({exc.strerror})") from None
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, a device
                    os.close(fd)
                    raise HandoffRefused(f"{step}: input {artifact.name} is not a regular "
                                         "file in its producer's run directory")
                with os.fdopen(fd, "rb") as src, tmp.open("xb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256_file(tmp) != artifact.sha256:
                    raise HandoffRefused(f"{step}: input {artifact.name} changed after "
                                         f"{artifact.source} signed it; refusing it")
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        staged.append((dest, artifact.name.split("/", 2)[2]))
        materials.append(artifact)
    return tuple(staged), tuple(materials)


def select_step(path: Path, pipeline: Pipeline, kind: str,
                name: str) -> tuple[Pipeline, PlannedStep]:
    """The pipeline cut down to one step (its needs met by other jobs), and that step."""
    if kind != "pipeline":
        raise InputError(f"{path}: --step {name}: this is a step file, not a pipeline file: "
                         "drop --step")
    names = [s.spec.name for s in pipeline.steps]
    if name not in names:
        raise InputError(f"{path}: --step {name}: no such step; use one of {', '.join(names)}")
    planned = pipeline.step(name)
    return Pipeline(pipeline.name, (replace(planned, needs=(), handoffs=()),)), planned
