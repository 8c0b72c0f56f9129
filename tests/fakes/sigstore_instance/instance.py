"""`SigstoreInstance`: the three services, their keys and the client trust material."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .ca import CertificateAuthority, CTLog
from .fulcio import FulcioService, identity_from_claims
from .keys import PublicKey, spki_der
from .log import TransparencyLog
from .oidc import OIDCIssuer, claims_for
from .server import LoopbackServer

DEFAULT_IDENTITY = "gitlab.example/group/project//.gitlab-ci.yml@refs/heads/main"

TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
SIGNING_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
CLIENT_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"

_LOOPBACK = "127.0.0.1,localhost,::1"


class SigstoreInstance:
    """A loopback Sigstore: OIDC issuer, Fulcio-like CA, Rekor-like log.

    Keys are generated per instance, so two instances never trust each other.
    `start()` binds three HTTP servers on 127.0.0.1 (ephemeral ports) and writes
    `trusted_root` and `trust_config` into `workdir` (file names prefixed with
    `name`, so instances with different names may share a directory).
    """

    def __init__(self, workdir: Path, name: str = "sbx-test") -> None:
        self.workdir = Path(workdir)
        self.name = name
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "sigstore"
        self._slug = slug
        self.created = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._oidc = OIDCIssuer()
        self._ca = CertificateAuthority(slug, CTLog(), self.created)
        self._rekor = TransparencyLog(f"{slug}.rekor.local")
        self._fulcio = FulcioService(self._ca)
        self._servers = {
            "oidc": LoopbackServer(f"{slug}-oidc", self._oidc.handle),
            "fulcio": LoopbackServer(f"{slug}-fulcio", self._fulcio.handle),
            "rekor": LoopbackServer(f"{slug}-rekor", self._rekor.handle),
        }
        self._started = False

    # --- lifecycle ---

    def start(self) -> None:
        """Start the three services and write the trust material."""
        if self._started:
            raise RuntimeError("instance already started")
        try:
            for server in self._servers.values():
                server.start()
            self._oidc.url = self._servers["oidc"].url
            self._fulcio.issuer_url = self._oidc.url
            self._started = True
            self.workdir.mkdir(parents=True, exist_ok=True)
            _write_json(self.trusted_root, self.trusted_root_json())
            _write_json(self.trust_config, self.trust_config_json())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the services (idempotent); the files stay."""
        for server in self._servers.values():
            server.stop()
        self._started = False

    def __enter__(self) -> SigstoreInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- where things are ---

    @property
    def issuer_url(self) -> str:
        """The OIDC issuer URL: the tokens' `iss` and the certificates' issuer extension."""
        return self._servers["oidc"].url

    @property
    def fulcio_url(self) -> str:
        """Base URL of the CA."""
        return self._servers["fulcio"].url

    @property
    def rekor_url(self) -> str:
        """Base URL of the transparency log."""
        return self._servers["rekor"].url

    @property
    def trusted_root(self) -> Path:
        """TrustedRoot JSON (for `Verifier(trusted_root=TrustedRoot.from_file(...))`)."""
        return self.workdir / f"{self._slug}.trusted_root.json"

    @property
    def trust_config(self) -> Path:
        """ClientTrustConfig JSON (for `ClientTrustConfig.from_json` and `--trust-config`)."""
        return self.workdir / f"{self._slug}.trust_config.json"

    @property
    def environ(self) -> dict[str, str]:
        """Environment variables for clients of this instance.

        `requests` (sigstore-python's HTTP client) honours HTTP(S)_PROXY, and
        would send loopback traffic to a proxy unless NO_PROXY exempts it.
        """
        current = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
        no_proxy = ",".join(p for p in (current, _LOOPBACK) if p)
        return {"NO_PROXY": no_proxy, "no_proxy": no_proxy}

    @property
    def root_certificate(self) -> x509.Certificate:
        """The CA's self-signed root."""
        return self._ca.root

    @property
    def intermediate_certificate(self) -> x509.Certificate:
        """The CA's intermediate (the leaves' issuer)."""
        return self._ca.intermediate

    @property
    def log_size(self) -> int:
        """Entries integrated in the transparency log so far."""
        return len(self._rekor)

    # --- identities ---

    def token(
        self,
        identity: str = DEFAULT_IDENTITY,
        *,
        audience: str = "sigstore",
        lifetime: int = 600,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed OIDC identity token for `identity`.

        `identity` is a GitLab `ci_config_ref_uri` (the default), an e-mail
        address, or a URI (then it is the `sub`). A `lifetime` of zero or less
        gives an already expired token. `claims` are merged in last and may
        override anything, `iss` included.
        """
        if not self._started:
            raise RuntimeError("start the instance before asking for tokens")
        return self._oidc.issue(identity, audience=audience, lifetime=lifetime, claims=claims)

    def identity_of(self, identity: str) -> str:
        """The SAN value a certificate for `token(identity)` carries."""
        return identity_from_claims(claims_for(identity))[1]

    # --- trust material ---

    def trusted_root_json(self) -> dict[str, Any]:
        """The TrustedRoot (protobuf-specs v0.1 JSON) for this instance."""
        start = _rfc3339(self._ca.not_before)
        return {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [
                _log_instance(self.rekor_url, self._rekor.public_key, self._rekor.log_id, start)
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": self._slug, "commonName": f"{self._slug}-root"},
                    "uri": self.fulcio_url,
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in self._ca.chain
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [
                _log_instance(
                    self.fulcio_url, self._ca.ct_log.public_key, self._ca.ct_log.log_id, start
                )
            ],
            "timestampAuthorities": [],
        }

    def signing_config_json(self) -> dict[str, Any]:
        """SigningConfig v0.2: this instance's CA, OIDC issuer and Rekor v1 log."""
        valid_for = {"start": _rfc3339(self._ca.not_before)}

        def service(url: str) -> dict[str, Any]:
            return {"url": url, "majorApiVersion": 1, "validFor": valid_for, "operator": self._slug}

        return {
            "mediaType": SIGNING_CONFIG_MEDIA_TYPE,
            "caUrls": [service(self.fulcio_url)],
            "oidcUrls": [service(self.issuer_url)],
            "rekorTlogUrls": [service(self.rekor_url)],
            "tsaUrls": [],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaConfig": {"selector": "ANY"},
        }

    def trust_config_json(self) -> dict[str, Any]:
        """ClientTrustConfig v0.1: trusted root plus signing config."""
        return {
            "mediaType": CLIENT_TRUST_CONFIG_MEDIA_TYPE,
            "trustedRoot": self.trusted_root_json(),
            "signingConfig": self.signing_config_json(),
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_instance(url: str, key: PublicKey, log_id: bytes, start: str) -> dict[str, Any]:
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": _b64(spki_der(key)),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": start},
        },
        "logId": {"keyId": _b64(log_id)},
    }


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
