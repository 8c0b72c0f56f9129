"""Keyless signing with sigstore-python: a Fulcio certificate for the CI identity,
a Rekor entry, and one Sigstore bundle (v0.3) per Statement.

The identity token comes from `--identity-token`, else SIGSTORE_IDENTITY_TOKEN
(sigstore-python's CLI variable), else SIGSTORE_ID_TOKEN (what a GitLab
`id_tokens:` entry with `aud: sigstore` sets), else sigstore-python's ambient
detection. Every failure is a `SigningError` (exit 3): offline, no token, an
expired token, a refusal by Fulcio or Rekor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sbx.attest.errors import SigningError
from sbx.attest.signing.interface import Signed, SignerKind
from sbx.attest.statements import Payload

TOKEN_VARIABLES = ("SIGSTORE_IDENTITY_TOKEN", "SIGSTORE_ID_TOKEN")


def find_token(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The OIDC identity token to sign with, or a SigningError saying how to provide one."""
    if explicit:
        return explicit
    for name in TOKEN_VARIABLES:
        if environ.get(name):
            return environ[name]
    from sigstore.oidc import IdentityError, detect_credential

    try:
        found = detect_credential()
    except IdentityError as exc:
        raise SigningError(f"sigstore: no identity token: {_one_line(exc)}") from exc
    if not found:
        raise SigningError(
            "sigstore: no identity token: pass --identity-token, or set SIGSTORE_ID_TOKEN "
            "(GitLab: id_tokens with aud: sigstore), or use --signer local")
    return str(found)


def _one_line(exc: BaseException) -> str:
    text = exc.diagnostics() if hasattr(exc, "diagnostics") else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


class SigstoreSigner:
    """Signs each Statement as a DSSE envelope inside a Sigstore bundle."""

    kind = SignerKind.SIGSTORE

    def __init__(self, token: str, trust_config: Path | None = None) -> None:
        from sigstore.models import ClientTrustConfig
        from sigstore.oidc import IdentityToken
        from sigstore.sign import SigningContext

        self.trust_config = trust_config
        try:
            if trust_config is not None:
                trust = ClientTrustConfig.from_json(trust_config.read_text(encoding="utf-8"))
            else:
                trust = ClientTrustConfig.production()
        except OSError as exc:
            raise SigningError(f"{trust_config}: cannot read the trust config "
                               f"({exc.strerror}): pass an existing --trust-config") from exc
        except Exception as exc:  # TUF refresh, JSON and schema errors all end here
            where = trust_config or "the public Sigstore instance"
            raise SigningError(f"sigstore: cannot load trust material for {where}: "
                               f"{_one_line(exc)}") from exc
        self._raw_token = token
        try:
            self._token = IdentityToken(token)
        except Exception as exc:
            raise SigningError(f"sigstore: the identity token is not usable: "
                               f"{_one_line(exc)}") from exc
        self._context = SigningContext.from_trust_config(trust)
        self._signer: Any = None

    def certificate_identity(self) -> tuple[str, str]:
        """The SAN and issuer Fulcio writes into this token's certificate.

        Fulcio's mapping of claims: GitLab's `ci_config_ref_uri` as an https URI, else
        the e-mail address, else `sub`; the issuer is the token's `iss`. A job that
        trusts "whoever signs like me" verifies its producers against this.
        """
        import jwt

        claims = jwt.decode(self._raw_token, options={"verify_signature": False})
        if claims.get("ci_config_ref_uri"):
            san = f"https://{claims['ci_config_ref_uri']}"
        else:
            san = str(claims.get("email") or claims.get("sub") or "")
        return san, str(claims.get("iss", ""))

    def describe(self) -> str:
        """The token's identity and issuer."""
        return f"sigstore identity {self._token.identity} (issuer {self._token.issuer})"

    def sign(self, payload: Payload) -> Signed:
        """Sign through Fulcio and Rekor; the first call fetches the certificate."""
        from sigstore.dsse import Statement

        try:
            if self._signer is None:
                # One certificate for the whole run: sigstore caches the key and cert.
                with self._context.signer(self._token, cache=True) as signer:
                    self._signer = signer
            bundle = self._signer.sign_dsse(Statement(payload.body))
        except Exception as exc:  # requests, Fulcio, Rekor and sigstore errors alike
            raise SigningError(f"sigstore: signing {payload.stem} failed: "
                               f"{_one_line(exc)}") from exc
        return Signed(payload, bundle.to_json() + "\n", ".sigstore.json", self.describe())
