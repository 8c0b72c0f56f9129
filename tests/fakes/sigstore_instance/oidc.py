"""The OIDC issuer: ES256 JWT identity tokens, discovery document and JWKS.

sigstore-python never verifies an identity token itself (it only forwards it to
Fulcio), and needs `/.well-known/openid-configuration` only for the interactive
browser flow, which tests don't use. The fake Fulcio, like the real one, finds
the issuer's keys through discovery and JWKS, so both are served.

Identity strings map to claims like this (see `claims_for`):

* `user@example.org` (an e-mail address): `email` (verified) and `sub`;
* `https://...` or any other `scheme://...`: `sub` only;
* anything else is a GitLab-style `ci_config_ref_uri`
  (`host/group/project//path/to/ci.yml@refs/heads/main`) plus the GitLab claims
  that can be derived from it (`sub`, `project_path`, `ref`, `ref_type`).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from .server import Request, Response, error_response, json_response

_EMAIL = re.compile(r"^[^@/\s:]+@[^@/\s:]+$")
_CI_CONFIG_REF = re.compile(r"^(?P<host>[^/]+)/(?P<project>.+?)//(?P<path>[^@]+)@(?P<ref>.+)$")


def claims_for(identity: str) -> dict[str, Any]:
    """The identity-bearing claims (no `iss`/`aud`/times) for an identity string."""
    if _EMAIL.match(identity):
        return {"sub": identity, "email": identity, "email_verified": True}
    if "://" in identity:
        return {"sub": identity}
    claims: dict[str, Any] = {"sub": identity, "ci_config_ref_uri": identity}
    match = _CI_CONFIG_REF.match(identity)
    if match:
        project, ref = match["project"], match["ref"]
        ref_type, _, short_ref = ref.removeprefix("refs/").partition("/")
        ref_type = {"heads": "branch", "tags": "tag"}.get(ref_type, ref_type)
        short_ref = short_ref or ref
        claims.update(
            sub=f"project_path:{project}:ref_type:{ref_type}:ref:{short_ref}",
            project_path=project,
            namespace_path=project.rpartition("/")[0] or project,
            ref=short_ref,
            ref_type=ref_type,
        )
    return claims


class OIDCIssuer:
    """Issues signed identity tokens; serves discovery and JWKS."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        spki = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha256(spki).hexdigest()[:16]
        self.url = ""

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set with this issuer's public key."""
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="ES256")
        return {"keys": [jwk]}

    def discovery(self) -> dict[str, Any]:
        """The OpenID Connect discovery document."""
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/keys",
            "authorization_endpoint": f"{self.url}/auth",
            "token_endpoint": f"{self.url}/token",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "email"],
        }

    def issue(
        self,
        identity: str,
        *,
        audience: str,
        lifetime: int,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed JWT for `identity`; `claims` are added last (they may override)."""
        now = int(time.time())
        exp = now + lifetime
        iat = now if lifetime > 0 else exp - 600
        payload: dict[str, Any] = {
            "iss": self.url,
            "aud": audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": str(uuid.uuid4()),
            **claims_for(identity),
            **(claims or {}),
        }
        return jwt.encode(payload, self._key, algorithm="ES256", headers={"kid": self.kid})

    def handle(self, request: Request) -> Response:
        """HTTP routes: discovery, JWKS; the interactive endpoints refuse politely."""
        if request.method != "GET" and request.path in (
            "/.well-known/openid-configuration",
            "/keys",
        ):
            return error_response(405, "method not allowed")
        if request.path == "/.well-known/openid-configuration":
            return json_response(200, self.discovery())
        if request.path == "/keys":
            return json_response(200, self.jwks())
        if request.path in ("/auth", "/token"):
            return error_response(400, "interactive flows are not supported; use a token")
        return error_response(404, f"no route {request.path}")
