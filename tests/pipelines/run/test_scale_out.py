"""One pipeline as one GitLab job per step: four `sbx run --step` processes, each in its own
job directory with its own --out, run directories handed on by copying them as GitLab's
artifacts would, then `sbx verify` over the set. Every way of breaking the set fails with
the job and the check named; every bad hand-off is refused before a container starts."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sbx.attest.signing.local import KeyPair, LocalSigner, keygen
from sbx.attest.statements import Kind, Payload
from sbx.attest.store import write_signed
from sbx.errors import EXIT_FAILED, EXIT_INPUT
from tests.redteam.faults_support import spawn_sbx

pytestmark = pytest.mark.docker

PIPELINE = {"name": "fan", "steps": {
    "source": {"image": "sbx-step:bookworm", "run": "mkdir -p src && echo hello > src/a.txt",
               "outputs": ["src/"]},
    "upper": {"image": "sbx-step:bookworm", "inputs": [{"from": "source", "path": "src/"}],
              "run": "mkdir -p up && tr a-z A-Z < src/a.txt > up/a.txt", "outputs": ["up/"]},
    "count": {"image": "sbx-step:bookworm", "inputs": [{"from": "source", "path": "src/"}],
              "run": "mkdir -p n && wc -c < src/a.txt > n/count.txt", "outputs": ["n/"]},
    "join": {"image": "sbx-step:bookworm",
             "inputs": [{"from": "upper", "path": "up/"}, {"from": "count", "path": "n/"}],
             "run": "mkdir -p out && cat up/a.txt n/count.txt > out/result.txt",
             "outputs": ["out/"]},
}}
GITLAB = {"CI_PIPELINE_ID": "4242", "CI_PROJECT_PATH": "group/project",
          "CI_SERVER_HOST": "gitlab.example"}
GITLAB_ID = "gitlab.example/group/project/-/pipelines/4242"


@dataclass
class Jobs:
    """The pipeline's jobs as a runner left them: one directory per job."""

    root: Path

    def job_dir(self, step: str) -> Path:
        return self.root / f"job-{step}"

    def run_dir(self, step: str) -> Path:
        return self.job_dir(step) / "sbx-runs" / step


def _copy_artifacts(into: Path, runs: list[Path]) -> None:
    """What GitLab does with `needs: artifacts: true`: the producers' paths, restored."""
    for run in runs:
        shutil.copytree(run, into / "sbx-runs" / run.name)


def run_job(root: Path, step: str, needs: list[Path], *extra: str,
            env: dict[str, str] | None = None, wait: bool = True,
            pipeline: dict[str, Any] = PIPELINE) -> subprocess.Popen[bytes]:
    """One GitLab job: a fresh checkout, its needs' artifacts, `sbx run --step`."""
    job = root / f"job-{step}"
    job.mkdir(parents=True)
    (job / "pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    _copy_artifacts(job, needs)
    args = ["run", str(job / "pipeline.yaml"), "--step", step, "--quiet",
            "--out", str(job / "sbx-runs" / step)]
    for need in needs:
        args += ["--inputs-from", str(job / "sbx-runs" / need.name)]
    proc = spawn_sbx([*args, *extra], env={**GITLAB, **(env or {})})
    if wait:
        proc.wait(timeout=600)
    return proc


def _done(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    code = proc.wait(timeout=600)
    return code, proc.stderr.read().decode() if proc.stderr else ""


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, sbx_images: tuple[str, str]) -> Jobs:
    """The fan-out and fan-in run as four jobs; upper and count at the same time."""
    jobs = Jobs(tmp_path_factory.mktemp("jobs"))
    source = run_job(jobs.root, "source", [])
    code, err = _done(source)
    assert code == 0, err
    fan = [run_job(jobs.root, s, [jobs.run_dir("source")], wait=False)
           for s in ("upper", "count")]
    for proc in fan:
        code, err = _done(proc)
        assert code == 0, err
    join = run_job(jobs.root, "join", [jobs.run_dir("upper"), jobs.run_dir("count")])
    code, err = _done(join)
    assert code == 0, err
    return jobs


def verify(dirs: list[Path], *extra: str) -> tuple[int, dict[str, Any]]:
    """`sbx verify DIR... --json`, trusting the session's key unless told otherwise."""
    trust = list(extra) or ["--key", os.environ["SBX_SIGNING_KEY"].replace(".key", ".pub")]
    proc = spawn_sbx(["verify", *map(str, dirs), "--json", *trust])
    code = proc.wait(timeout=300)
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert out.strip(), f"sbx verify printed no report (exit {code}): {err}"
    report: dict[str, Any] = json.loads(out)
    return code, report


def failed(report: dict[str, Any]) -> dict[str, str]:
    """(job or `pipeline`) + check -> reason, of every failed check."""
    found = {f"{j['job']}: {c['check']}": c["reason"] for j in report["jobs"]
             for c in j["checks"] if c["status"] == "fail"}
    found |= {f"pipeline: {c['check']}": c["reason"] for c in report["pipeline"]
              if c["status"] == "fail"}
    return found


def the_set(jobs: Jobs, into: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The four run directories gathered into one folder, as the verify job gets them."""
    into.mkdir()
    for step in PIPELINE["steps"]:
        if step not in skip:
            shutil.copytree(jobs.run_dir(step), into / step)
    return sorted(into.iterdir())


def test_the_four_jobs_verify_as_one_pipeline(jobs: Jobs, tmp_path: Path) -> None:
    result = (jobs.run_dir("join") / "outputs/join/out/result.txt").read_text()
    assert result == "HELLO\n6\n"
    the_set(jobs, tmp_path / "set")
    code, report = verify([tmp_path / "set"])  # a folder holding one run directory per job
    assert code == 0 and report["passed"], failed(report)
    assert len(report["jobs"]) == 4
    records = [json.loads((jobs.run_dir(s) / "run.json").read_text())
               for s in PIPELINE["steps"]]
    assert {r["pipeline"]["id"] for r in records} == \
        {"gitlab.example/group/project/-/pipelines/4242"}
    # The hand-off is in the consumer's signed materials, named as its producer signed it.
    link = _payload(jobs.run_dir("join"), "join.link")
    sources = {m["annotations"]["source"] for m in link["predicate"]["materials"]}
    assert sources == {"upper", "count"}
    prov = _payload(jobs.run_dir("join"), "provenance")
    assert prov["predicate"]["buildDefinition"]["externalParameters"]["pipelineSteps"] == \
        list(PIPELINE["steps"])


def _payload(run_dir: Path, stem: str) -> dict[str, Any]:
    envelope = json.loads((run_dir / "attestations" / f"{stem}.dsse.json").read_text())
    data: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return data


def test_an_artifact_changed_between_jobs_fails_run_files(jobs: Jobs, tmp_path: Path) -> None:
    dirs = the_set(jobs, tmp_path / "set")
    (tmp_path / "set/upper/outputs/upper/up/a.txt").write_text("EVIL\n")
    code, report = verify(dirs)
    assert code == EXIT_FAILED
    reasons = failed(report)
    key = next(k for k in reasons if k.startswith("job upper") and k.endswith(": run-files"))
    assert "outputs/upper/up/a.txt changed" in reasons[key]


def test_a_missing_run_directory_fails_completeness(jobs: Jobs, tmp_path: Path) -> None:
    code, report = verify(the_set(jobs, tmp_path / "set", skip=("count",)))
    assert code == EXIT_FAILED
    reasons = failed(report)
    assert "step 'count': no job ran it" in reasons["pipeline: pipeline.completeness"]
    assert "from 'count', which no job in the set ran" in \
        reasons["pipeline: pipeline.artifact-chain"]


def test_a_step_run_twice_fails_completeness(jobs: Jobs, tmp_path: Path) -> None:
    dirs = the_set(jobs, tmp_path / "set")
    shutil.copytree(jobs.run_dir("upper"), tmp_path / "again")
    code, report = verify([*dirs, tmp_path / "again"])
    assert code == EXIT_FAILED
    reasons = failed(report)
    assert "step 'upper' ran 2 times" in reasons["pipeline: pipeline.completeness"]
    assert "given twice" in reasons["pipeline: pipeline.binding"]


def test_evidence_of_another_pipeline_fails_binding_and_is_refused(
        jobs: Jobs, tmp_path: Path) -> None:
    other = run_job(tmp_path, "source", [], env={"CI_PIPELINE_ID": "999"})
    assert other.returncode == 0
    dirs = the_set(jobs, tmp_path / "set", skip=("source",))
    code, report = verify([*dirs, tmp_path / "job-source/sbx-runs/source"])
    assert code == EXIT_FAILED
    reasons = failed(report)
    assert "job source" in reasons["pipeline: pipeline.binding"]
    assert "pipelines/999" in reasons["pipeline: pipeline.binding"]
    # And the next job of pipeline 4242 refuses it as its input.
    proc = run_job(tmp_path / "next", "upper", [tmp_path / "job-source/sbx-runs/source"])
    code, err = _done(proc)
    assert code == EXIT_FAILED, err
    assert "belongs to pipeline gitlab.example/group/project/-/pipelines/999" in err
    assert len(err.strip().splitlines()) == 1, err


def _resign(run_dir: Path, key: KeyPair) -> None:
    """The producer's Statements, byte for byte, signed by another key."""
    signer = LocalSigner(key.private)
    signed = []
    for doc in sorted((run_dir / "attestations").glob("*.dsse.json")):
        body = base64.b64decode(json.loads(doc.read_text())["payload"])
        stem = doc.name.removesuffix(".dsse.json")
        step, _, kind = stem.rpartition(".")
        payload = Payload(Kind(kind or stem), step or None, body)
        signed.append(signer.sign(payload))
    write_signed(run_dir, signed)


def _refused_before_any_container(tmp_path: Path, producer: Path, step: str = "upper",
                                  *extra: str) -> str:
    proc = run_job(tmp_path, step, [producer], *extra)
    code, err = _done(proc)
    assert code == EXIT_FAILED, err
    assert len(err.strip().splitlines()) == 1, err
    # Refused before the run began: no run record, so no sandbox was ever made.
    assert not (tmp_path / f"job-{step}/sbx-runs/{step}/run.json").exists()
    return err


def test_a_producer_signed_by_another_key_is_refused(jobs: Jobs, tmp_path: Path) -> None:
    forged = tmp_path / "forged" / "source"
    shutil.copytree(jobs.run_dir("source"), forged)
    _resign(forged, keygen(tmp_path / "other-key"))
    err = _refused_before_any_container(tmp_path, forged)
    assert "does not verify" in err and "signed by key" in err
    # Its signatures are sound, for whoever trusts that other key.
    _, report = verify([forged, jobs.run_dir("upper")], "--key",
                       str(tmp_path / "other-key/sbx.pub"))
    checks = {c["check"]: c["status"] for c in report["jobs"][0]["checks"]}
    assert report["jobs"][0]["job"].startswith("job source") and checks["signatures"] == "pass"


def test_a_hand_off_file_swapped_after_signing_is_refused(jobs: Jobs, tmp_path: Path) -> None:
    swapped = tmp_path / "swapped" / "source"
    shutil.copytree(jobs.run_dir("source"), swapped)
    (swapped / "outputs/source/src/a.txt").write_text("evil\n")
    err = _refused_before_any_container(tmp_path, swapped)
    assert "run-files" in err and "outputs/source/src/a.txt changed" in err


def test_a_missing_producer_is_refused_as_bad_input(jobs: Jobs, tmp_path: Path) -> None:
    proc = run_job(tmp_path, "join", [jobs.run_dir("upper")])
    code, err = _done(proc)
    assert code == EXIT_INPUT, err
    assert "needs count" in err and len(err.strip().splitlines()) == 1


@pytest.mark.usefixtures("sbx_images")
def test_keyless_jobs_each_sign_with_their_own_certificate(tmp_path: Path,
                                                           sigstore_instance: Any) -> None:
    """Each job gets its own token and so its own certificate for the same identity; the
    consumer trusts producers of its own identity; the set verifies for that identity only."""
    from fakes.sigstore_instance import DEFAULT_IDENTITY

    inst = sigstore_instance
    pair = {"name": "pair", "steps": {k: PIPELINE["steps"][k] for k in ("source", "upper")}}
    keyless = ("--signer", "sigstore", "--trust-config", str(inst.trust_config))
    source = run_job(tmp_path, "source", [], *keyless, pipeline=pair,
                     env={"SIGSTORE_ID_TOKEN": inst.token()})
    code, err = _done(source)
    assert code == 0, err
    produced = tmp_path / "job-source/sbx-runs/source"
    upper = run_job(tmp_path, "upper", [produced], *keyless, pipeline=pair,
                    env={"SIGSTORE_ID_TOKEN": inst.token()})
    code, err = _done(upper)
    assert code == 0, err
    dirs = [produced, tmp_path / "job-upper/sbx-runs/upper"]
    identity = inst.identity_of(DEFAULT_IDENTITY)
    trust = ["--cert-oidc-issuer", inst.issuer_url, "--trusted-root", str(inst.trusted_root)]
    code, report = verify(dirs, "--cert-identity", identity, *trust)
    assert code == 0 and report["passed"], failed(report)
    signers = next(c["reason"] for c in report["pipeline"] if c["check"] == "pipeline.signers")
    certificates = re.findall(r"certificate ([0-9a-f]{16})", signers)
    assert len(certificates) == 2 and len(set(certificates)) == 2, signers

    other = "https://gitlab.example/evil/project//.gitlab-ci.yml@refs/heads/main"
    code, report = verify(dirs, "--cert-identity", other, *trust)
    assert code == EXIT_FAILED
    reasons = failed(report)
    for step in ("source", "upper"):
        key = next(k for k in reasons if k.startswith(f"job (no verified step) ({tmp_path}"
                                                       f"/job-{step}") and k.endswith("signatures"))
        assert "SANs do not match" in reasons[key]
    # A job of another identity does not take this job's output as its input.
    proc = run_job(tmp_path / "evil", "upper", [produced], *keyless, pipeline=pair,
                   env={"SIGSTORE_ID_TOKEN": inst.token("gitlab.example/evil/p//x.yml@main")})
    code, err = _done(proc)
    assert code == EXIT_FAILED and "does not verify" in err, err


def test_a_file_swapped_between_the_check_and_the_copy_is_refused(
        jobs: Jobs, tmp_path: Path, signing_key: KeyPair) -> None:
    """The verified producer's file is copied, then hashed again: a swap in between (the
    producer's directory is the job's own disk, writable by whatever else runs there) is
    caught on the copy, before the sandbox is given it."""
    from sbx.attest.signing.local import load_public_key
    from sbx.attest.verify.trust import KeyTrust
    from sbx.pipelines.run.runner import load_run_file
    from sbx.pipelines.run.step_job import HandoffRefused, select_step, stage, verify_producers
    from sbx.pipelines.spec.step import spec_digest

    producer = tmp_path / "source"
    shutil.copytree(jobs.run_dir("source"), producer)
    spec = jobs.job_dir("upper") / "pipeline.yaml"
    loaded, pipeline, kind = load_run_file(spec)
    _, planned = select_step(spec, pipeline, kind, "upper")
    producers = verify_producers(planned, spec_digest(loaded).removeprefix("sha256:"),
                                 (producer,), KeyTrust([load_public_key(signing_key.public)]),
                                 GITLAB_ID)
    assert [a.name for _, a in producers.files] == ["outputs/source/src/a.txt"]
    (producer / "outputs/source/src/a.txt").write_text("swapped\n")
    with pytest.raises(HandoffRefused, match="changed after source signed it"):
        stage(producers, tmp_path / "out", "upper")
    assert not list((tmp_path / "out/store/sha256").iterdir())
