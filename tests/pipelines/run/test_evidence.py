"""Signed evidence from real runs, verified as a release job would: `sbx run` then
`sbx verify`, with a local key and keylessly through a loopback Sigstore."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes.sigstore_instance import DEFAULT_IDENTITY

from sbx.attest.signing.local import KeyPair
from sbx.errors import EXIT_ENVIRONMENT, EXIT_FAILED, EXIT_INPUT, EXIT_OK
from sbx.pipelines.cli import main
from tests.conftest import Internet, only_step

pytestmark = pytest.mark.docker

STEP = {
    "name": "build", "image": "sbx-step:bookworm",
    "run": "mkdir -p dist && sha256sum src.txt > dist/app.sha && cp src.txt dist/app.txt",
    "inputs": ["src.txt"], "outputs": ["dist/"],
    "egress": {"mode": "enforce", "allow": ["web.sbx.test:8080"]},
    "resources": {"timeout": 60},
}


def _workspace(tmp_path: Path, spec: dict[str, Any]) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "src.txt").write_text("release me\n")
    (ws / "step.yaml").write_text(yaml.safe_dump(spec))
    return ws / "step.yaml"


def _run(step: Path, out: Path, internet: Internet, *extra: str) -> int:
    return main(["run", str(step), "--out", str(out), "--quiet",
                 "--egress-network", internet.network, *extra])


def _verify(out: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    capsys.readouterr()
    code = main(["verify", str(out), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _failed(report: dict) -> set[str]:  # type: ignore[type-arg]
    return {c["check"] for c in report["checks"] if c["status"] == "fail"}


def test_a_run_signed_with_a_local_key_verifies_and_gates_the_release(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _run(_workspace(tmp_path, STEP), out, internet) == EXIT_OK
    record = json.loads((out / "run.json").read_text())
    assert record["evidence"]["error"] is None
    assert sorted(record["evidence"]["files"]) == [
        "attestations.intoto.jsonl", "attestations/build.isolation.dsse.json",
        "attestations/build.link.dsse.json", "attestations/provenance.dsse.json"]
    assert len((out / "attestations.intoto.jsonl").read_text().splitlines()) == 3
    artifact = out / "outputs/build/dist/app.txt"
    code, report = _verify(out, "--key", str(signing_key.public), "--artifact", str(artifact),
                           capsys=capsys)
    assert code == EXIT_OK and report["passed"], report
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["release-artifacts"]["status"] == "pass"
    assert "outputs/build/dist/app.txt" in checks["release-artifacts"]["reason"]

    # A release artifact that is not what the run built is refused.
    forged = tmp_path / "app.txt"
    forged.write_text("not what was built\n")
    code, report = _verify(out, "--key", str(signing_key.public), "--artifact", str(forged),
                           capsys=capsys)
    assert code == EXIT_FAILED and _failed(report) == {"release-artifacts"}

    # So is an output rewritten after the run.
    artifact.write_text("trojan\n")
    code, report = _verify(out, "--key", str(signing_key.public), capsys=capsys)
    assert code == EXIT_FAILED and _failed(report) == {"run-files"}


def test_a_denied_attempt_is_signed_and_fails_verification(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = dict(STEP, run="curl -sS --max-time 3 http://other.sbx.test:8080/x || true; "
                          "mkdir -p dist && cp src.txt dist/app.txt")
    out = tmp_path / "run"
    assert _run(_workspace(tmp_path, spec), out, internet) == EXIT_FAILED
    code, report = _verify(out, "--key", str(signing_key.public), capsys=capsys)
    assert code == EXIT_FAILED
    # The violation fails the step (enforce mode), and the evidence says so twice.
    assert _failed(report) == {"isolation.denied-flows", "steps-succeeded"}
    reason = next(c["reason"] for c in report["checks"]
                  if c["check"] == "isolation.denied-flows")
    assert re.search(r"build: \d+ denied egress attempt\(s\), the policy allows 0", reason)
    # The policy can accept a known violation; everything else still holds.
    policy = tmp_path / "release.yaml"
    policy.write_text("version: 1\nsteps_succeeded: false\nisolation: {max_denied_flows: 5}\n")
    code, report = _verify(out, "--key", str(signing_key.public), "--policy", str(policy),
                           capsys=capsys)
    assert code == EXIT_OK, report


def test_allowed_destinations_are_recorded_and_limited_by_the_policy(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = dict(STEP, run="curl -fsS http://web.sbx.test:8080/dep > dep.txt && "
                          "mkdir -p dist && cp dep.txt dist/app.txt")
    out = tmp_path / "run"
    assert _run(_workspace(tmp_path, spec), out, internet) == EXIT_OK
    policy = tmp_path / "release.yaml"
    policy.write_text("version: 1\ndestinations:\n  build: ['mirror.internal:443']\n")
    code, report = _verify(out, "--key", str(signing_key.public), "--policy", str(policy),
                           capsys=capsys)
    assert code == EXIT_FAILED and _failed(report) == {"isolation.destinations"}
    assert "web.sbx.test:8080" in json.dumps(report)
    policy.write_text("version: 1\ndestinations:\n  '*': ['web.sbx.test:8080']\n")
    code, report = _verify(out, "--key", str(signing_key.public), "--policy", str(policy),
                           capsys=capsys)
    assert code == EXIT_OK, report


def test_keyless_run_and_verify_through_a_loopback_sigstore(
        tmp_path: Path, internet: Internet, sigstore_instance: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    inst = sigstore_instance
    out = tmp_path / "run"
    step = _workspace(tmp_path, STEP)
    code = _run(step, out, internet, "--signer", "sigstore", "--trust-config",
                str(inst.trust_config), "--identity-token", inst.token())
    assert code == EXIT_OK
    docs = sorted(p.name for p in (out / "attestations").iterdir())
    assert docs == ["build.isolation.sigstore.json", "build.link.sigstore.json",
                    "provenance.sigstore.json"]
    identity = inst.identity_of(DEFAULT_IDENTITY)
    args = ["--cert-identity", identity, "--cert-oidc-issuer", inst.issuer_url,
            "--trusted-root", str(inst.trusted_root)]
    code, report = _verify(out, *args, capsys=capsys)
    assert code == EXIT_OK and report["passed"], report
    assert identity in report["checks"][0]["reason"]

    wrong_identity = ["--cert-identity", "https://gitlab.example/evil//x@refs/heads/main",
                      *args[2:]]
    assert _verify(out, *wrong_identity, capsys=capsys)[0] == EXIT_FAILED
    wrong_issuer = [*args[:2], "--cert-oidc-issuer", "https://gitlab.com", *args[4:]]
    assert _verify(out, *wrong_issuer, capsys=capsys)[0] == EXIT_FAILED

    # The same bundles verify with sigstore-python's own command line.
    done = subprocess.run(
        [sys.executable, "-m", "sigstore", "--trust-config", str(inst.trust_config), "verify",
         "identity", "--bundle", str(out / "attestations/build.link.sigstore.json"),
         "--cert-identity", identity, "--cert-oidc-issuer", inst.issuer_url,
         str(out / "outputs/build/dist/app.txt")],
        capture_output=True, text=True, env={**os.environ, **inst.environ}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "OK:" in done.stderr


def test_sigstore_without_a_token_stops_before_anything_runs(
        tmp_path: Path, internet: Internet, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SIGSTORE_IDENTITY_TOKEN", "SIGSTORE_ID_TOKEN", "GITLAB_CI",
                 "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "run"
    code = _run(_workspace(tmp_path, STEP), out, internet, "--signer", "sigstore")
    err = capsys.readouterr().err
    assert code == EXIT_ENVIRONMENT
    assert "no identity token" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_sigstore_unreachable_at_signing_keeps_the_statements_unsigned(
        tmp_path: Path, internet: Internet, sigstore_instance: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    inst = sigstore_instance
    token = inst.token()
    inst.stop()  # the instance goes away: Fulcio and Rekor no longer answer
    out = tmp_path / "run"
    code = _run(_workspace(tmp_path, STEP), out, internet, "--signer", "sigstore",
                "--trust-config", str(inst.trust_config), "--identity-token", token)
    err = capsys.readouterr().err
    assert code == EXIT_ENVIRONMENT and "Traceback" not in err
    assert "sigstore: signing build.link failed" in err
    record = json.loads((out / "run.json").read_text())
    assert only_step(record)["status"] == "succeeded"
    assert "signing build.link failed" in record["evidence"]["error"]
    kept = sorted(p.name for p in (out / "attestations").iterdir())
    assert kept == ["build.isolation.statement.json", "build.link.statement.json",
                    "provenance.statement.json"]


def test_a_bad_key_stops_the_run_before_anything_runs(
        tmp_path: Path, internet: Internet, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "sbx.key"
    key.write_text("not a key")
    out = tmp_path / "run"
    code = _run(_workspace(tmp_path, STEP), out, internet, "--key", str(key))
    err = capsys.readouterr().err
    assert code == EXIT_INPUT and str(key) in err and "Traceback" not in err
    assert not out.exists()
