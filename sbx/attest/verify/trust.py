"""Opening signed documents: the only place signatures are checked.

A `Trust` turns one signed document (a DSSE envelope or a Sigstore bundle) into
the payload it vouches for, or raises `TrustFailure` saying why it does not.
A trust failure is a verdict about the evidence, not an error of the tool:
the verifier turns it into a failed check.
"""

from __future__ import annotations

import binascii
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError as SslibVerificationError
from securesystemslib.signer import Key

from sbx.attest.errors import EvidenceInputError
from sbx.attest.signing.local import load_public_key
from sbx.attest.statements import PAYLOAD_TYPE


class TrustFailure(Exception):
    """A signed document does not verify; the message says why."""


@dataclass(frozen=True)
class Opened:
    """A verified payload and who signed it."""

    payload: bytes
    signer: str


class Trust(Protocol):
    """Verifies one signed document."""

    def describe(self) -> str:
        """Whom this trust accepts, for the report."""
        ...

    def open(self, document: bytes) -> Opened:
        """The payload, if the document's signature verifies; else TrustFailure."""
        ...


def _json(document: bytes) -> dict[str, Any]:
    try:
        data = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrustFailure(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TrustFailure("not a JSON object")
    return data


class KeyTrust:
    """DSSE envelopes signed by one of the given Ed25519 keys (securesystemslib)."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys

    def describe(self) -> str:
        """The accepted key ids."""
        return "key " + ", ".join(k.keyid[:16] for k in self.keys)

    def open(self, document: bytes) -> Opened:
        """Verify the envelope's signature over the DSSE PAE of its payload."""
        data = _json(document)
        if "verificationMaterial" in data:
            raise TrustFailure("a Sigstore bundle, but verification was asked for a key: "
                               "pass --cert-identity and --cert-oidc-issuer")
        try:
            # from_dict rewrites the signature dicts it is given: hand it a copy.
            envelope = Envelope.from_dict(copy.deepcopy(data))
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError) as exc:
            raise TrustFailure(f"not a DSSE envelope: {type(exc).__name__} {exc}") from exc
        if envelope.payload_type != PAYLOAD_TYPE:
            raise TrustFailure(f"payload type {envelope.payload_type!r}, not {PAYLOAD_TYPE}")
        if not envelope.signatures:
            raise TrustFailure("the envelope carries no signature")
        known = {k.keyid for k in self.keys}
        foreign = [kid for kid in envelope.signatures if kid not in known]
        if len(foreign) == len(envelope.signatures):
            raise TrustFailure(f"signed by key {foreign[0][:16]}, not by the trusted "
                               f"{self.describe()}")
        try:
            verified = envelope.verify(self.keys, 1)
        except SslibVerificationError as exc:
            raise TrustFailure(f"signature does not verify over the DSSE PAE with "
                               f"{self.describe()}") from exc
        keyid = next(iter(verified))
        return Opened(envelope.payload, f"key {keyid[:16]}")


class IdentityTrust:
    """Sigstore bundles whose certificate names the identity and issuer (sigstore-python)."""

    def __init__(self, identity: str, issuer: str, trusted_root: Path | None) -> None:
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity

        self.identity, self.issuer = identity, issuer
        self._policy = Identity(identity=identity, issuer=issuer)
        self._verifier = Verifier(trusted_root=_trusted_root(trusted_root))

    def describe(self) -> str:
        """The accepted identity and issuer."""
        return f"identity {self.identity} (issuer {self.issuer})"

    def open(self, document: bytes) -> Opened:
        """Verify chain, SCT, log inclusion, identity and the DSSE signature, offline."""
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle

        data = _json(document)
        if "verificationMaterial" not in data:
            raise TrustFailure("a DSSE envelope without a certificate, but verification was "
                               "asked for a Sigstore identity: pass --key")
        try:
            bundle = Bundle.from_json(document)
            payload_type, payload = self._verifier.verify_dsse(bundle, self._policy)
        except SigstoreError as exc:
            raise TrustFailure(" ".join(str(exc.diagnostics()).split())) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustFailure(f"not a usable Sigstore bundle: {exc}") from exc
        if payload_type != PAYLOAD_TYPE:
            raise TrustFailure(f"payload type {payload_type!r}, not {PAYLOAD_TYPE}")
        # The certificate's fingerprint tells one job's certificate from another's: a
        # pipeline run as many jobs is signed with one certificate per job.
        fingerprint = bundle.signing_certificate.fingerprint(hashes.SHA256()).hex()
        return Opened(payload, f"identity {self.identity} (certificate {fingerprint[:16]})")


def _trusted_root(path: Path | None) -> Any:
    """A TrustedRoot from a trusted-root JSON or a client trust config JSON."""
    from sigstore.models import ClientTrustConfig, TrustedRoot

    if path is None:
        try:
            return ClientTrustConfig.production().trusted_root
        except Exception as exc:  # TUF over the network: offline ends here
            raise EvidenceInputError(
                "cannot fetch the public Sigstore trusted root "
                f"({' '.join(str(exc).split())}): pass --trusted-root FILE") from exc
    try:
        text = path.read_text(encoding="utf-8")
        media = str(json.loads(text).get("mediaType", ""))
        if "clienttrustconfig" in media.lower():
            return ClientTrustConfig.from_json(text).trusted_root
        return TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise EvidenceInputError(f"{path}: cannot read the trusted root ({exc.strerror}): "
                                 "pass an existing --trusted-root file") from exc
    except Exception as exc:  # JSON, protobuf and schema errors from sigstore alike
        raise EvidenceInputError(f"{path}: not a Sigstore trusted root or trust config "
                                 f"({' '.join(str(exc).split())[:200]}): pass the "
                                 "trusted_root.json of your Sigstore instance") from exc


@dataclass(frozen=True)
class TrustFlags:
    """Whom the command line says to trust, and the flag names its errors cite."""

    keys: tuple[Path, ...] = ()
    identity: str | None = None
    issuer: str | None = None
    trusted_root: Path | None = None
    key_flag: str = "--key"
    identity_flag: str = "--cert-identity"
    issuer_flag: str = "--cert-oidc-issuer"

    def trust(self, default_root: Path | None = None) -> Trust | None:
        """The trust the flags name, or None if they name none."""
        if self.keys and (self.identity or self.issuer):
            raise EvidenceInputError(
                f"{self.key_flag} and {self.identity_flag} exclude each other: trust either "
                "a local key or a Sigstore identity")
        if self.identity or self.issuer:
            if not (self.identity and self.issuer):
                raise EvidenceInputError(
                    f"{self.identity_flag} and {self.issuer_flag} go together: pass both")
            return IdentityTrust(self.identity, self.issuer, self.trusted_root or default_root)
        if self.keys:
            return KeyTrust([load_public_key(k) for k in self.keys])
        return None
