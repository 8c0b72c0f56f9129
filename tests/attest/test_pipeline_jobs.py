"""`verify_pipeline`: many jobs' run directories as one pipeline, on synthetic signed jobs.

source -> (left, right) -> join, each step its own job. Every check over the set fails,
naming the job, when the set is broken its way; the real-Docker run of the same shape is
tests/pipelines/run/test_scale_out.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fakes.signed_jobs import build_job, handed, output_of

from sbx.attest.digests import sha256_file
from sbx.attest.signing.local import KeyPair, keygen, load_public_key
from sbx.attest.verify.jobs import expand_run_dirs, handoff_failures, open_job, verify_pipeline
from sbx.attest.verify.policy import DEFAULT_POLICY, ReleasePolicy
from sbx.attest.verify.trust import KeyTrust

STEPS = ("source", "left", "right", "join")


def make_jobs(root: Path, key: KeyPair, **per_step: dict[str, Any]) -> dict[str, Path]:
    """The four jobs; `per_step[step]` passes build_job options for that step."""
    jobs: dict[str, Path] = {}
    needs = {"left": ("source",), "right": ("source",), "join": ("left", "right")}
    for i, step in enumerate(STEPS):
        inputs = tuple(handed(jobs[n], n) for n in needs.get(step, ()))
        options = {"inputs": inputs, **per_step.get(step, {})}
        jobs[step] = build_job(root / step, key, step, i, STEPS, **options)
    return jobs


def trust(*keys: KeyPair) -> KeyTrust:
    return KeyTrust([load_public_key(k.public) for k in keys])


def failures(dirs: list[Path], key_trust: KeyTrust, policy: ReleasePolicy = DEFAULT_POLICY,
             artifacts: tuple[Path, ...] = ()) -> dict[str, str]:
    report = verify_pipeline(dirs, key_trust, policy, artifacts)
    return {f"{job}: {check}": reason for job, check, reason in report.failures()}


def test_the_jobs_verify_as_one_pipeline(tmp_path: Path, attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key)
    report = verify_pipeline(expand_run_dirs([tmp_path]), trust(attest_key), DEFAULT_POLICY)
    assert report.passed, report.failures()
    assert [j.label.split(" (")[0] for j in report.jobs] == \
        ["job join", "job left", "job right", "job source"]
    chain = next(r for r in report.results if r.check.value == "pipeline.artifact-chain")
    assert "4 hand-off(s)" in chain.reason
    assert jobs["join"].is_dir()


def test_a_hand_off_that_differs_from_its_producer_fails_the_chain(
        tmp_path: Path, attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key)
    # `join` signed an input that `left` never produced: rebuild join with a forged material.
    forged = handed(jobs["left"], "left")
    shutil.rmtree(jobs["join"])
    build_job(jobs["join"], attest_key, "join", 3, STEPS, inputs=(
        type(forged)(forged.name, "0" * 64, "left"), handed(jobs["right"], "right")))
    found = failures(list(jobs.values()), trust(attest_key))
    assert list(found) == ["pipeline: pipeline.artifact-chain"], found
    assert "job join" in found["pipeline: pipeline.artifact-chain"]
    assert "not what left produced" in found["pipeline: pipeline.artifact-chain"]


def test_another_pipeline_id_fails_binding_naming_the_job(tmp_path: Path,
                                                          attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key, right={"pipeline_id": "elsewhere/-/pipelines/1"})
    found = failures(list(jobs.values()), trust(attest_key))
    assert list(found) == ["pipeline: pipeline.binding"], found
    assert found["pipeline: pipeline.binding"].startswith("job right")
    assert "'elsewhere/-/pipelines/1'" in found["pipeline: pipeline.binding"]


def test_a_job_signed_by_two_keys_fails_signers(tmp_path: Path, attest_key: KeyPair) -> None:
    other = keygen(tmp_path / "other")
    jobs = make_jobs(tmp_path / "jobs", attest_key)
    # Half of `left`'s documents re-signed by the other key: both keys are trusted, so each
    # signature verifies, but one job is one signer.
    mixed = make_jobs(tmp_path / "mixed", other)
    (jobs["left"] / "attestations/left.isolation.dsse.json").write_bytes(
        (mixed["left"] / "attestations/left.isolation.dsse.json").read_bytes())
    found = failures(list(jobs.values()), trust(attest_key, other))
    assert "pipeline: pipeline.signers" in found, found
    assert found["pipeline: pipeline.signers"].startswith("job left")
    assert "2 signers" in found["pipeline: pipeline.signers"]


def test_a_sandbox_in_two_jobs_fails_distinct_sandboxes(tmp_path: Path,
                                                        attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key, right={"iso": {"network_id": "net01" + "0" * 59}})
    found = failures(list(jobs.values()), trust(attest_key))
    assert list(found) == ["pipeline: pipeline.distinct-sandboxes"], found
    reason = found["pipeline: pipeline.distinct-sandboxes"]
    assert "job left" in reason and "job right" in reason


def test_release_artifacts_are_some_jobs_outputs(tmp_path: Path, attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key)
    wheel = jobs["join"] / output_of("join", "20261203T000000Z-0003")[0]
    assert not failures(list(jobs.values()), trust(attest_key), artifacts=(wheel,))
    stranger = tmp_path / "stranger.whl"
    stranger.write_bytes(b"not built here")
    found = failures(list(jobs.values()), trust(attest_key), artifacts=(stranger,))
    assert list(found) == ["pipeline: pipeline.release-artifacts"], found
    assert sha256_file(stranger)[:12] in found["pipeline: pipeline.release-artifacts"]


def test_required_steps_and_per_job_checks_still_apply(tmp_path: Path,
                                                       attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key, left={"iso": {"privileged": True}})
    policy = DEFAULT_POLICY.model_copy(update={"required_steps": ("sign",)})
    found = failures(list(jobs.values()), trust(attest_key), policy)
    left = next(k for k in found if k.startswith("job left"))
    assert left.endswith("isolation.capabilities") and "privileged" in found[left]
    assert "required step 'sign'" in found["pipeline: pipeline.completeness"]


def test_a_producer_job_with_a_changed_output_is_barred_from_hand_off(
        tmp_path: Path, attest_key: KeyPair) -> None:
    jobs = make_jobs(tmp_path, attest_key)
    job = open_job(jobs["source"], trust(attest_key))
    assert handoff_failures(job, "key") == []
    (jobs["source"] / output_of("source", "20261203T000000Z-0000")[0]).write_text("swapped")
    failed = handoff_failures(open_job(jobs["source"], trust(attest_key)), "key")
    assert [r.check.value for r in failed] == ["run-files"]


def test_one_job_alone_is_not_a_verified_pipeline(tmp_path: Path, attest_key: KeyPair) -> None:
    """A release gate given one job's run directory (say the job without hand-offs) must not
    pass it as if it were the whole pipeline."""
    from sbx.attest.verify.verifier import verify_run

    jobs = make_jobs(tmp_path, attest_key)
    report = verify_run(jobs["source"], trust(attest_key), DEFAULT_POLICY)
    failed = {r.check.value: r.reason for r in report.failed()}
    assert list(failed) == ["completeness"], failed
    assert "one job (source) of a pipeline of source, left, right, join" in failed["completeness"]
