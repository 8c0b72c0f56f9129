"""The loopback Sigstore instance against sigstore-python's real signer, verifier and CLI."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from sigstore import dsse
from sigstore._internal.fulcio.client import FulcioClientError
from sigstore._internal.rekor.client import RekorClient
from sigstore.errors import VerificationError
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityError, IdentityToken
from sigstore.sign import SigningContext
from sigstore.verify import Verifier, policy

from .sigstore_instance import DEFAULT_IDENTITY, SigstoreInstance

ARTIFACT = b"sbx build output\n"
PREDICATE_TYPE = "https://sbx.example/evidence/v1"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"


@pytest.fixture(scope="module")
def loopback_only() -> Iterator[None]:
    """Keep `requests` off any configured proxy: everything here is on 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("NO_PROXY", "no_proxy"):
            mp.setenv(var, ",".join(p for p in (os.environ.get(var), "127.0.0.1,localhost") if p))
        yield


@pytest.fixture(scope="module")
def instance(
    tmp_path_factory: pytest.TempPathFactory, loopback_only: None
) -> Iterator[SigstoreInstance]:
    with SigstoreInstance(tmp_path_factory.mktemp("sigstore")) as inst:
        yield inst


@pytest.fixture(scope="module")
def other(
    tmp_path_factory: pytest.TempPathFactory, loopback_only: None
) -> Iterator[SigstoreInstance]:
    with SigstoreInstance(tmp_path_factory.mktemp("other"), name="other") as inst:
        yield inst


def signing_context(inst: SigstoreInstance) -> SigningContext:
    return SigningContext.from_trust_config(
        ClientTrustConfig.from_json(inst.trust_config.read_text())
    )


def verifier(inst: SigstoreInstance) -> Verifier:
    return Verifier(trusted_root=TrustedRoot.from_file(str(inst.trusted_root)))


def statement_bytes(artifact: bytes = ARTIFACT) -> bytes:
    """A canonical-JSON in-toto Statement v1 about `artifact`."""
    return rfc8785.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [
                {"name": "out.bin", "digest": {"sha256": hashlib.sha256(artifact).hexdigest()}}
            ],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"step": "build", "exitCode": 0},
        }
    )


@pytest.fixture(scope="module")
def dsse_bundle(instance: SigstoreInstance) -> Bundle:
    with signing_context(instance).signer(IdentityToken(instance.token())) as signer:
        bundle = signer.sign_dsse(dsse.Statement(statement_bytes()))
    return Bundle.from_json(bundle.to_json())  # what a consumer reads back from disk


def run_cli(inst: SigstoreInstance, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sigstore",
            "--trust-config",
            str(inst.trust_config),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **inst.environ},
    )


# --- trust material ---


def test_trust_config_points_at_the_loopback_services(instance: SigstoreInstance) -> None:
    config = ClientTrustConfig.from_json(instance.trust_config.read_text())
    signing = config.signing_config
    (tlog,) = signing.get_tlogs()
    assert isinstance(tlog, RekorClient)  # Rekor v1
    assert tlog.url == f"{instance.rekor_url}/api/v1"
    assert signing.get_fulcio().url == instance.fulcio_url
    assert signing.get_oidc_url() == instance.issuer_url
    assert signing.get_tsas() == []
    for url in (instance.rekor_url, instance.fulcio_url, instance.issuer_url):
        assert url.startswith("http://127.0.0.1:")

    root = TrustedRoot.from_file(str(instance.trusted_root))
    assert root.get_fulcio_certs() == [
        instance.intermediate_certificate,
        instance.root_certificate,
    ]
    assert (
        json.loads(instance.trusted_root.read_text())
        == json.loads(instance.trust_config.read_text())["trustedRoot"]
    )


def test_two_instances_have_independent_keys(
    instance: SigstoreInstance, other: SigstoreInstance
) -> None:
    mine = json.loads(instance.trusted_root.read_text())
    theirs = json.loads(other.trusted_root.read_text())
    for field in ("tlogs", "ctlogs"):
        assert mine[field][0]["logId"] != theirs[field][0]["logId"]
    assert instance.root_certificate.public_key() != other.root_certificate.public_key()
    assert instance.issuer_url != other.issuer_url


# --- signing and verifying with the library ---


def test_sign_and_verify_dsse_statement(instance: SigstoreInstance, dsse_bundle: Bundle) -> None:
    document = json.loads(dsse_bundle.to_json())
    assert document["mediaType"] == BUNDLE_V03
    assert document["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    (entry,) = document["verificationMaterial"]["tlogEntries"]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert entry["inclusionProof"]["checkpoint"]["envelope"]
    assert entry["inclusionPromise"]["signedEntryTimestamp"]

    payload_type, payload = verifier(instance).verify_dsse(
        dsse_bundle,
        policy.Identity(
            identity=instance.identity_of(DEFAULT_IDENTITY), issuer=instance.issuer_url
        ),
    )
    assert payload_type == "application/vnd.in-toto+json"
    assert payload == statement_bytes()


def test_statement_builder_and_artifact_signing(instance: SigstoreInstance) -> None:
    statement = (
        dsse.StatementBuilder()
        .subjects([dsse.Subject(name="a", digest={"sha256": "ab" * 32})])
        .predicate_type(PREDICATE_TYPE)
        .predicate({"k": "v"})
        .build()
    )
    identity = policy.Identity(
        identity=instance.identity_of(DEFAULT_IDENTITY), issuer=instance.issuer_url
    )
    with signing_context(instance).signer(IdentityToken(instance.token())) as signer:
        envelope_bundle = signer.sign_dsse(statement)
        blob_bundle = signer.sign_artifact(ARTIFACT)
    verifier(instance).verify_dsse(envelope_bundle, identity)
    verifier(instance).verify_artifact(ARTIFACT, blob_bundle, identity)
    assert blob_bundle.log_entry._inner.kind_version.kind == "hashedrekord"
    with pytest.raises(VerificationError):
        verifier(instance).verify_artifact(ARTIFACT + b"x", blob_bundle, identity)


def test_leaf_certificate_matches_fulcio_profile(
    instance: SigstoreInstance, dsse_bundle: Bundle
) -> None:
    cert = dsse_bundle.signing_certificate
    ext = cert.extensions
    assert cert.subject == x509.Name([])
    assert cert.issuer == instance.intermediate_certificate.subject
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(minutes=10)
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://gitlab.example/group/project//.gitlab-ci.yml@refs/heads/main"
    ]
    assert (
        ExtendedKeyUsageOID.CODE_SIGNING in ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    issuer_v1 = ext.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"))
    issuer_v2 = ext.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"))
    assert isinstance(issuer_v1.value, x509.UnrecognizedExtension)
    assert isinstance(issuer_v2.value, x509.UnrecognizedExtension)
    assert issuer_v1.value.value == instance.issuer_url.encode()
    url = instance.issuer_url.encode()
    assert issuer_v2.value.value == bytes([0x0C, len(url)]) + url  # DER UTF8String
    policy.OIDCIssuerV2(instance.issuer_url).verify(cert)
    (sct,) = ext.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value
    ctlog_id = json.loads(instance.trusted_root.read_text())["ctlogs"][0]["logId"]["keyId"]
    assert sct.log_id == base64.b64decode(ctlog_id)
    integrated = dt.datetime.fromtimestamp(
        dsse_bundle.log_entry._inner.integrated_time or 0, dt.UTC
    )
    assert cert.not_valid_before_utc <= integrated <= cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("identity", "san_type"),
    [
        ("alice@example.org", x509.RFC822Name),
        ("https://ci.example/jobs/42", x509.UniformResourceIdentifier),
        (DEFAULT_IDENTITY, x509.UniformResourceIdentifier),
    ],
)
def test_identity_kinds(instance: SigstoreInstance, identity: str, san_type: type) -> None:
    expected = instance.identity_of(identity)
    with signing_context(instance).signer(IdentityToken(instance.token(identity))) as signer:
        bundle = signer.sign_artifact(ARTIFACT)
    san = bundle.signing_certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(san_type) == [expected]
    verifier(instance).verify_artifact(
        ARTIFACT, bundle, policy.Identity(identity=expected, issuer=instance.issuer_url)
    )


def test_log_proofs_verify_as_the_tree_grows(tmp_path: Path, loopback_only: None) -> None:
    """Entries re-fetched from a grown log carry longer proofs; all must verify."""
    with SigstoreInstance(tmp_path) as inst:
        artifacts = [f"artifact {i}".encode() for i in range(7)]
        with signing_context(inst).signer(IdentityToken(inst.token())) as signer:
            bundles = [signer.sign_artifact(a) for a in artifacts]
        assert inst.log_size == 7
        rekor = RekorClient(inst.rekor_url)
        identity = policy.Identity(identity=inst.identity_of(DEFAULT_IDENTITY))
        for artifact, bundle in zip(artifacts, bundles, strict=True):
            verifier(inst).verify_artifact(artifact, bundle, identity)  # proof at its own size
            uuid = _uuid_at(inst, bundle.log_entry._inner.log_index)
            entry = rekor.log.entries.get(uuid=uuid)
            assert entry._inner.inclusion_proof.tree_size == 7
            refreshed = Bundle.from_parts(bundle.signing_certificate, bundle.signature, entry)
            verifier(inst).verify_artifact(artifact, refreshed, identity)


def _uuid_at(inst: SigstoreInstance, index: int) -> str:
    response = requests.get(
        f"{inst.rekor_url}/api/v1/log/entries", params={"logIndex": index}, timeout=10
    )
    response.raise_for_status()
    (uuid,) = response.json()
    return str(uuid)


# --- what must not verify ---


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong identity", "SANs do not match"),
        ("wrong issuer", "OIDCIssuer does not match"),
        ("other instance's root", "certificate chain"),
    ],
)
def test_verification_fails(
    instance: SigstoreInstance,
    other: SigstoreInstance,
    dsse_bundle: Bundle,
    case: str,
    reason: str,
) -> None:
    identity = instance.identity_of(DEFAULT_IDENTITY)
    issuer = instance.issuer_url
    trusted = instance
    if case == "wrong identity":
        identity = instance.identity_of(
            "gitlab.example/group/other//.gitlab-ci.yml@refs/heads/main"
        )
    elif case == "wrong issuer":
        issuer = other.issuer_url
    else:
        trusted = other
    with pytest.raises(VerificationError, match=reason):
        verifier(trusted).verify_dsse(
            dsse_bundle, policy.Identity(identity=identity, issuer=issuer)
        )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("integrated time", "SET: invalid inclusion promise"),
        ("inclusion proof", "inclusion proof contains invalid root hash"),
        ("checkpoint", "checkpoint: invalid signature"),
        ("payload", "DSSE: invalid signature"),
    ],
)
def test_tampered_bundle_fails(
    instance: SigstoreInstance, dsse_bundle: Bundle, tamper: str, reason: str
) -> None:
    document = json.loads(dsse_bundle.to_json())
    entry = document["verificationMaterial"]["tlogEntries"][0]
    if tamper == "integrated time":  # later, so still inside the leaf's validity: only the SET
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)
    elif tamper == "inclusion proof":
        entry["inclusionProof"]["rootHash"] = base64.b64encode(b"\x00" * 32).decode()
    elif tamper == "checkpoint":
        envelope = entry["inclusionProof"]["checkpoint"]["envelope"]
        origin, rest = envelope.split("\n", 1)
        entry["inclusionProof"]["checkpoint"]["envelope"] = f"{origin}x\n{rest}"
    else:
        document["dsseEnvelope"]["payload"] = base64.b64encode(statement_bytes(b"evil")).decode()
    bundle = Bundle.from_json(json.dumps(document))
    with pytest.raises(VerificationError, match=reason):
        verifier(instance).verify_dsse(
            bundle,
            policy.Identity(
                identity=instance.identity_of(DEFAULT_IDENTITY), issuer=instance.issuer_url
            ),
        )


# --- the command line ---


def test_cli_verifies_dsse_bundle(
    instance: SigstoreInstance, dsse_bundle: Bundle, tmp_path: Path
) -> None:
    """`verify identity` checks a DSSE bundle against a file (or digest) among its subjects."""
    bundle_path = tmp_path / "statement.sigstore.json"
    bundle_path.write_text(dsse_bundle.to_json())
    artifact = tmp_path / "out.bin"
    artifact.write_bytes(ARTIFACT)
    identity = instance.identity_of(DEFAULT_IDENTITY)

    def verify(identity: str, subject: str | Path) -> subprocess.CompletedProcess[str]:
        return run_cli(
            instance,
            "verify",
            "identity",
            "--bundle",
            bundle_path,
            "--cert-identity",
            identity,
            "--cert-oidc-issuer",
            instance.issuer_url,
            subject,
        )

    ok = verify(identity, artifact)
    assert ok.returncode == 0, ok.stderr
    assert f"OK: {artifact}" in ok.stderr
    assert json.loads(ok.stdout) == json.loads(statement_bytes())  # the verified statement

    by_digest = verify(identity, f"sha256:{hashlib.sha256(ARTIFACT).hexdigest()}")
    assert by_digest.returncode == 0, by_digest.stderr

    other_file = tmp_path / "other.bin"
    other_file.write_bytes(b"not a subject")
    not_a_subject = verify(identity, other_file)
    assert not_a_subject.returncode != 0
    assert "no subject for digest" in not_a_subject.stderr

    wrong_identity = verify("https://gitlab.example/someone/else", artifact)
    assert wrong_identity.returncode != 0
    assert "FAIL" in wrong_identity.stderr


def test_cli_signs_and_verifies_blob_and_attestation(
    instance: SigstoreInstance, tmp_path: Path
) -> None:
    artifact = tmp_path / "out.bin"
    artifact.write_bytes(ARTIFACT)
    identity = instance.identity_of(DEFAULT_IDENTITY)
    blob_bundle = tmp_path / "blob.sigstore.json"
    signed = run_cli(
        instance, "sign", "--identity-token", instance.token(), "--bundle", blob_bundle, artifact
    )
    assert signed.returncode == 0, signed.stderr

    predicate = tmp_path / "predicate.json"
    predicate.write_text(
        json.dumps(
            {
                "buildDefinition": {
                    "buildType": "https://sbx.example/build/v1",
                    "externalParameters": {},
                },
                "runDetails": {"builder": {"id": "https://sbx.example/builder"}},
            }
        )
    )
    attestation = tmp_path / "attestation.sigstore.json"
    attested = run_cli(
        instance,
        "attest",
        "--identity-token",
        instance.token(),
        "--predicate",
        predicate,
        "--predicate-type",
        "https://slsa.dev/provenance/v1",
        "--bundle",
        attestation,
        artifact,
    )
    assert attested.returncode == 0, attested.stderr
    assert json.loads(attestation.read_text())["dsseEnvelope"]

    for bundle in (blob_bundle, attestation):
        verified = run_cli(
            instance,
            "verify",
            "identity",
            "--bundle",
            bundle,
            "--cert-identity",
            identity,
            "--cert-oidc-issuer",
            instance.issuer_url,
            artifact,
        )
        assert verified.returncode == 0, verified.stderr


# --- the CA refuses bad tokens and bad proofs ---


@pytest.mark.timeout(60)
def test_expired_token_is_refused(instance: SigstoreInstance) -> None:
    expired = instance.token(lifetime=-60)
    # sigstore-python itself refuses an expired token before it reaches Fulcio ...
    with pytest.raises(IdentityError):
        IdentityToken(expired)
    # ... and so does the fake Fulcio when sent one anyway.
    response = _post_csr(instance, expired)
    assert response.status_code == 401
    assert "expired" in response.json()["message"].lower()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["other issuer", "forged signature", "wrong audience"])
def test_invalid_token_is_refused(
    instance: SigstoreInstance, other: SigstoreInstance, case: str
) -> None:
    if case == "other issuer":
        token = other.token()
    elif case == "forged signature":  # right `iss`, signed with another issuer's key
        token = other.token(claims={"iss": instance.issuer_url})
    else:
        token = instance.token(audience="not-sigstore")
    assert _post_csr(instance, token).status_code == 401
    if case == "wrong audience":
        with pytest.raises(IdentityError):  # sigstore-python refuses it before Fulcio does
            IdentityToken(token)
        return
    with pytest.raises(FulcioClientError), signing_context(instance).signer(IdentityToken(token)):
        pass


@pytest.mark.timeout(60)
def test_proof_of_possession_is_checked(instance: SigstoreInstance) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    der[-3] ^= 0x01  # inside the signature's last INTEGER
    response = requests.post(
        f"{instance.fulcio_url}/api/v2/signingCert",
        json={"certificateSigningRequest": base64.b64encode(bytes(der)).decode()},
        headers={"Authorization": f"Bearer {instance.token()}"},
        timeout=10,
    )
    assert response.status_code == 400, response.text

    # A bare public key with a signature over the token's subject is accepted.
    token = instance.token("alice@example.org")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for challenge, status in ((b"alice@example.org", 201), (b"mallory@example.org", 400)):
        proof = key.sign(challenge, ec.ECDSA(hashes.SHA256()))
        response = requests.post(
            f"{instance.fulcio_url}/api/v2/signingCert",
            json={
                "credentials": {"oidcIdentityToken": token},
                "publicKeyRequest": {
                    "publicKey": {"algorithm": "ECDSA", "content": pem.decode()},
                    "proofOfPossession": base64.b64encode(proof).decode(),
                },
            },
            timeout=10,
        )
        assert response.status_code == status, response.text


def _post_csr(inst: SigstoreInstance, token: str) -> requests.Response:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return requests.post(
        f"{inst.fulcio_url}/api/v2/signingCert",
        json={
            "certificateSigningRequest": base64.b64encode(
                csr.public_bytes(serialization.Encoding.PEM)
            ).decode()
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
