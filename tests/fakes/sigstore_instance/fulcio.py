"""The Fulcio-like HTTP API: `POST /api/v2/signingCert`, `GET /api/v2/trustBundle`.

Like Fulcio, it authenticates the bearer token against the one issuer it trusts,
fetching the issuer's keys through OIDC discovery and JWKS (over loopback only),
checks proof of possession of the private key (the CSR's self-signature, or a
signature over the token's `sub`/`email` for a bare public key request), and
issues a 10-minute leaf whose identity comes from the token:

* `ci_config_ref_uri` claim (GitLab): URI SAN `https://<ci_config_ref_uri>`, and
  that URI also as Build Signer URI (1.3.6.1.4.1.57264.1.9) and Build Config
  URI (1.3.6.1.4.1.57264.1.18), as Fulcio does for GitLab;
* else `email` claim (must be verified): e-mail SAN;
* else `sub`: URI SAN.

Every leaf carries the issuer URL in 1.3.6.1.4.1.57264.1.1 (raw bytes, the
legacy encoding) and 1.3.6.1.4.1.57264.1.8 (DER UTF8String).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .ca import CertificateAuthority, der_utf8
from .keys import PublicKey, supported_key, verify
from .server import HTTPError, Request, Response, error_response, json_response

OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
BUILD_SIGNER_URI_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.9")
BUILD_CONFIG_URI_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.18")

# No proxies: the issuer is on loopback, and nothing may leave this machine.
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def identity_from_claims(claims: Mapping[str, Any]) -> tuple[x509.GeneralName, str]:
    """The SAN Fulcio puts in a certificate for these token claims, and its string form."""
    if claims.get("ci_config_ref_uri"):
        uri = f"https://{claims['ci_config_ref_uri']}"
        return x509.UniformResourceIdentifier(uri), uri
    if claims.get("email"):
        if claims.get("email_verified") is not True:
            raise HTTPError(401, "email is not verified")
        return x509.RFC822Name(str(claims["email"])), str(claims["email"])
    sub = str(claims["sub"])
    return x509.UniformResourceIdentifier(sub), sub


class FulcioService:
    """HTTP handler for the CA; trusts exactly one OIDC issuer."""

    def __init__(self, ca: CertificateAuthority, *, audience: str = "sigstore") -> None:
        self.ca = ca
        self.audience = audience
        self.issuer_url = ""
        self._keys: dict[str, jwt.PyJWK] = {}
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        """Routes of the Fulcio v2 REST API that clients use."""
        if request.path == "/api/v2/signingCert" and request.method == "POST":
            return self._signing_cert(request)
        if request.path == "/api/v2/trustBundle" and request.method == "GET":
            chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in self.ca.chain]
            return json_response(200, {"chains": [{"certificates": chain}]})
        if request.path == "/api/v2/configuration" and request.method == "GET":
            return json_response(
                200,
                {
                    "issuers": [
                        {
                            "issuerUrl": self.issuer_url,
                            "audience": self.audience,
                            "challengeClaim": "sub",
                        }
                    ]
                },
            )
        return error_response(404, f"no route {request.method} {request.path}")

    # --- signingCert ---

    def _signing_cert(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "request body must be a JSON object")
        token = _bearer(request.headers) or (body.get("credentials") or {}).get("oidcIdentityToken")
        if not token:
            raise HTTPError(401, "missing identity token")
        claims = self._authenticate(str(token))
        san, identity = identity_from_claims(claims)
        # Fulcio's challenge for a bare public key: the e-mail for e-mail
        # identities, the subject otherwise.
        challenge = identity if isinstance(san, x509.RFC822Name) else str(claims["sub"])
        public_key = self._proof_of_possession(body, challenge)

        extensions = [
            x509.UnrecognizedExtension(OIDC_ISSUER_OID, str(claims["iss"]).encode()),
            x509.UnrecognizedExtension(OIDC_ISSUER_V2_OID, der_utf8(str(claims["iss"]))),
        ]
        if claims.get("ci_config_ref_uri"):
            extensions += [
                x509.UnrecognizedExtension(BUILD_SIGNER_URI_OID, der_utf8(identity)),
                x509.UnrecognizedExtension(BUILD_CONFIG_URI_OID, der_utf8(identity)),
            ]
        issued = self.ca.issue_leaf(public_key, san, extensions, dt.datetime.now(dt.UTC))
        return json_response(
            201,
            {"signedCertificateEmbeddedSct": {"chain": {"certificates": issued.pem_chain()}}},
        )

    def _authenticate(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise HTTPError(401, f"malformed identity token: {exc}") from exc
        if unverified.get("iss") != self.issuer_url:
            raise HTTPError(401, f"untrusted token issuer {unverified.get('iss')!r}")
        key = self._key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["ES256", "RS256"],
                audience=self.audience,
                issuer=self.issuer_url,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise HTTPError(401, f"invalid identity token: {exc}") from exc
        return claims

    def _key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            if kid not in self._keys:
                self._keys = self._fetch_jwks()
            if kid not in self._keys:
                raise HTTPError(401, f"identity token signed with unknown key {kid!r}")
            return self._keys[kid]

    def _fetch_jwks(self) -> dict[str, jwt.PyJWK]:
        discovery = _get_json(f"{self.issuer_url}/.well-known/openid-configuration")
        jwks = _get_json(str(discovery["jwks_uri"]))
        return {str(k.key_id): k for k in jwt.PyJWKSet.from_dict(jwks).keys}

    def _proof_of_possession(self, body: Mapping[str, Any], challenge: str) -> PublicKey:
        try:
            if "certificateSigningRequest" in body:
                raw = base64.b64decode(body["certificateSigningRequest"], validate=True)
                csr = (
                    x509.load_pem_x509_csr(raw)
                    if raw.lstrip().startswith(b"-----")
                    else x509.load_der_x509_csr(raw)
                )
                # The CSR's self-signature is the proof of possession.
                if not csr.is_signature_valid:
                    raise HTTPError(400, "certificate signing request signature is invalid")
                return supported_key(csr.public_key())
            if "publicKeyRequest" in body:
                request = body["publicKeyRequest"]
                key = supported_key(
                    serialization.load_pem_public_key(str(request["publicKey"]["content"]).encode())
                )
                proof = base64.b64decode(request["proofOfPossession"], validate=True)
                if not verify(key, proof, challenge.encode()):
                    raise HTTPError(400, "proof of possession is invalid")
                return key
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPError(400, f"malformed key material: {exc}") from exc
        raise HTTPError(400, "need certificateSigningRequest or publicKeyRequest")


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _get_json(url: str) -> Any:
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise HTTPError(500, f"refusing to fetch non-loopback URL {url}")
    with _LOOPBACK_OPENER.open(url, timeout=10) as resp:
        return json.load(resp)
