"""Keyless signing and verification through sigstore-python, against a loopback
Sigstore instance: the real signing client and verifier, unmodified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes.signed_run import build_run
from fakes.sigstore_instance import DEFAULT_IDENTITY, SigstoreInstance

from sbx.attest.errors import EvidenceInputError, SigningError
from sbx.attest.signing.keyless import SigstoreSigner, find_token
from sbx.attest.signing.local import KeyPair
from sbx.attest.statements import run_payloads
from sbx.attest.store import write_signed
from sbx.attest.verify.model import Status
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import IdentityTrust, KeyTrust
from sbx.attest.verify.verifier import verify_run
from sbx.errors import EXIT_ENVIRONMENT


def _signed_run(tmp_path: Path, key: KeyPair, instance: Any) -> Path:
    run = build_run(tmp_path / "run", key, ("build", "test"))
    for doc in (run.root / "attestations").iterdir():
        doc.unlink()
    signer = SigstoreSigner(instance.token(), instance.trust_config)
    write_signed(run.root, [signer.sign(p) for p in run_payloads(run.evidence)])
    return run.root


def test_sigstore_bundles_verify_with_the_signer_identity(
        tmp_path: Path, attest_key: KeyPair, sigstore_instance: Any) -> None:
    inst = sigstore_instance
    root = _signed_run(tmp_path, attest_key, inst)
    docs = sorted(p.name for p in (root / "attestations").iterdir())
    assert docs == ["build.isolation.sigstore.json", "build.link.sigstore.json",
                    "provenance.sigstore.json", "test.isolation.sigstore.json",
                    "test.link.sigstore.json"]
    bundle = json.loads((root / "attestations/provenance.sigstore.json").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    lines = (root / "attestations.intoto.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(x)["mediaType"] == bundle["mediaType"]
                                   for x in lines)
    trust = IdentityTrust(inst.identity_of(DEFAULT_IDENTITY), inst.issuer_url, inst.trusted_root)
    report = verify_run(root, trust, DEFAULT_POLICY)
    assert report.passed, report.failed()


@pytest.mark.parametrize("wrong", ["identity", "issuer", "root"])
def test_a_wrong_identity_issuer_or_root_fails_signatures(
        tmp_path: Path, attest_key: KeyPair, sigstore_instance: Any, wrong: str) -> None:
    inst = sigstore_instance
    root = _signed_run(tmp_path, attest_key, inst)
    identity = inst.identity_of(DEFAULT_IDENTITY)
    issuer, trusted = inst.issuer_url, inst.trusted_root
    if wrong == "identity":
        identity = "https://gitlab.example/evil/project//.gitlab-ci.yml@refs/heads/main"
    elif wrong == "issuer":
        issuer = "https://gitlab.com"
    else:
        with SigstoreInstance(tmp_path / "other", name="other") as other:
            trusted = other.trusted_root
    report = verify_run(root, IdentityTrust(identity, issuer, trusted), DEFAULT_POLICY)
    results = {r.check.value: r for r in report.results}
    assert results["signatures"].status is Status.FAIL
    words = {"identity": "SANs do not match", "issuer": "OIDCIssuer does not match",
             "root": "certificate chain"}[wrong]
    assert words in results["signatures"].reason
    assert not report.passed


def test_a_key_cannot_verify_a_bundle_and_says_so(tmp_path: Path, attest_key: KeyPair,
                                                  sigstore_instance: Any) -> None:
    from sbx.attest.signing.local import load_public_key

    root = _signed_run(tmp_path, attest_key, sigstore_instance)
    report = verify_run(root, KeyTrust([load_public_key(attest_key.public)]), DEFAULT_POLICY)
    assert "a Sigstore bundle" in report.failed()[0].reason


def test_no_token_anywhere_is_an_environment_error() -> None:
    with pytest.raises(SigningError, match="no identity token") as info:
        find_token(None, {})
    assert info.value.exit_code == EXIT_ENVIRONMENT


def test_the_gitlab_variable_is_the_token(sigstore_instance: Any) -> None:
    token = sigstore_instance.token()
    assert find_token(None, {"SIGSTORE_ID_TOKEN": token}) == token
    assert find_token("explicit", {"SIGSTORE_ID_TOKEN": token}) == "explicit"


def test_an_expired_token_is_refused_before_signing(sigstore_instance: Any) -> None:
    with pytest.raises(SigningError, match="identity token is not usable"):
        SigstoreSigner(sigstore_instance.token(lifetime=0), sigstore_instance.trust_config)


def test_an_unreachable_instance_is_an_environment_error(
        tmp_path: Path, attest_key: KeyPair, sigstore_instance: Any) -> None:
    inst = sigstore_instance
    signer = SigstoreSigner(inst.token(), inst.trust_config)
    inst.stop()  # offline: nothing answers on its ports any more
    run = build_run(tmp_path / "run", attest_key)
    with pytest.raises(SigningError, match=r"signing build\.link failed") as info:
        signer.sign(run_payloads(run.evidence)[0])
    assert info.value.exit_code == EXIT_ENVIRONMENT


def test_a_trust_config_that_is_not_one_is_an_environment_error(tmp_path: Path) -> None:
    bad = tmp_path / "trust.json"
    bad.write_text('{"mediaType": "nonsense"}')
    with pytest.raises(SigningError, match="cannot load trust material"):
        SigstoreSigner("x.y.z", bad)


def test_a_trusted_root_that_is_not_one_is_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "root.json"
    bad.write_text("[]")
    with pytest.raises(EvidenceInputError, match="not a Sigstore trusted root"):
        IdentityTrust("x", "https://issuer", bad)


@pytest.mark.online
def test_public_sigstore_round_trip(tmp_path: Path, attest_key: KeyPair) -> None:
    """Against the public instance: needs network and an ambient CI identity token."""
    import os

    run = build_run(tmp_path / "run", attest_key)
    token = find_token(None, os.environ)
    signer = SigstoreSigner(token)
    write_signed(run.root, [signer.sign(p) for p in run_payloads(run.evidence)])
    from sigstore.oidc import IdentityToken

    ident = IdentityToken(token)
    trust = IdentityTrust(ident.identity, ident.issuer, None)
    assert verify_run(run.root, trust, DEFAULT_POLICY).passed
