"""`sbx keygen` key files and the local DSSE signer."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope

from sbx.attest.errors import KeyFileError
from sbx.attest.signing.local import LocalSigner, keygen, load_public_key, load_signer
from sbx.attest.statements import PAYLOAD_TYPE, Kind, Payload
from sbx.attest.verify.trust import KeyTrust, TrustFailure
from sbx.errors import EXIT_INPUT


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pair.public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_public_key(pair.public).keyid == pair.keyid == LocalSigner(pair.private).keyid


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    first = keygen(tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        keygen(tmp_path)
    assert load_public_key(first.public).keyid == first.keyid


def test_signing_is_dsse_over_the_pae(tmp_path: Path) -> None:
    pair = keygen(tmp_path)
    signed = LocalSigner(pair.private).sign(Payload(Kind.LINK, "s", b'{"a":1}'))
    env = json.loads(signed.document)
    assert env["payloadType"] == PAYLOAD_TYPE and base64.b64decode(env["payload"]) == b'{"a":1}'
    assert env["signatures"][0]["keyid"] == pair.keyid
    envelope = Envelope.from_dict(json.loads(signed.document))
    envelope.verify([load_public_key(pair.public)], 1)
    opened = KeyTrust([load_public_key(pair.public)]).open(signed.document.encode())
    assert opened.payload == b'{"a":1}'


def test_another_key_does_not_open_the_envelope(tmp_path: Path) -> None:
    signed = LocalSigner(keygen(tmp_path / "a").private).sign(Payload(Kind.LINK, "s", b"{}"))
    other = load_public_key(keygen(tmp_path / "b").public)
    with pytest.raises(TrustFailure, match="not by the trusted key"):
        KeyTrust([other]).open(signed.document.encode())


@pytest.mark.parametrize(("content", "words"), [
    (b"", "not an unencrypted PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an unencrypted"),
])
def test_bad_key_files_are_input_errors(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=words) as info:
        load_signer(path)
    assert info.value.exit_code == EXIT_INPUT and str(path) in info.value.diagnostics()


def test_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_signer(path)
    pub = tmp_path / "ec.pub"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(pub)


def test_a_missing_key_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="run `sbx keygen` or pass --key"):
        load_signer(tmp_path / "nope.key")
