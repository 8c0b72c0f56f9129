"""Local signing: an Ed25519 key pair in PEM files, DSSE envelopes with a key id."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from sbx.attest.errors import KeyFileError
from sbx.attest.signing.interface import Signed, SignerKind
from sbx.attest.statements import PAYLOAD_TYPE, Payload

PRIVATE_NAME = "sbx.key"
PUBLIC_NAME = "sbx.pub"


@dataclass(frozen=True)
class KeyPair:
    """Where `keygen` wrote a key pair, and the key id verifiers will see."""

    private: Path
    public: Path
    keyid: str


def keygen(out_dir: Path, *, overwrite: bool = False) -> KeyPair:
    """Make an Ed25519 key pair: `sbx.key` (PKCS#8 PEM, mode 0600) and `sbx.pub`."""
    private, public = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    if not overwrite and (private.exists() or public.exists()):
        raise KeyFileError(f"{private}: a key already exists there: pass another --out "
                           "or remove it first")
    key = Ed25519PrivateKey.generate()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Mode 0600 from the start: the private key is never readable by others.
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise KeyFileError(f"{out_dir}: cannot write the key pair ({exc.strerror}): "
                           "choose a writable --out directory") from exc
    return KeyPair(private, public, SSlibKey.from_crypto(key.public_key()).keyid)


def load_public_key_bytes(pem: bytes) -> SSlibKey:
    """An Ed25519 public key from PEM, with securesystemslib's default key id."""
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return SSlibKey.from_crypto(key)


def load_public_key(path: Path) -> SSlibKey:
    """Read a verification key; names the file and the fix when it is not usable."""
    try:
        return load_public_key_bytes(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the public key ({exc.strerror}): "
                           "pass the sbx.pub that `sbx keygen` wrote") from exc
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}: pass the sbx.pub that `sbx keygen` wrote") \
            from exc


def load_signer(path: Path) -> CryptoSigner:
    """Read an Ed25519 private key (PKCS#8 PEM, unencrypted) as a CryptoSigner."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the signing key ({exc.strerror}): "
                           "run `sbx keygen` or pass --key") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: "
                           "use the sbx.key that `sbx keygen` wrote") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key: make one with `sbx keygen`")
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key()))


class LocalSigner:
    """DSSE envelopes signed with a local Ed25519 key (securesystemslib)."""

    kind = SignerKind.LOCAL

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._signer = load_signer(key_path)

    @property
    def keyid(self) -> str:
        """The key id in every signature (securesystemslib's default for the key)."""
        return str(self._signer.public_key.keyid)

    @property
    def public_key(self) -> SSlibKey:
        """The public half: what a verifier of this signer's documents trusts."""
        key = self._signer.public_key
        assert isinstance(key, SSlibKey)
        return key

    def describe(self) -> str:
        """The key id and where the key is."""
        return f"ed25519 key {self.keyid} ({self.key_path})"

    def sign(self, payload: Payload) -> Signed:
        """Sign the DSSE PAE of the payload."""
        envelope = Envelope(payload.body, PAYLOAD_TYPE, {})
        envelope.sign(self._signer)
        document = json.dumps(envelope.to_dict(), indent=2) + "\n"
        return Signed(payload, document, ".dsse.json", self.describe())
