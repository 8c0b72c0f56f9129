"""TLS inspection: a CA made per gateway, a leaf per name minted on demand, both contexts.

The CA's private key exists only in this process's memory: it is generated here,
never serialized, and signs leaves in-process. Python's ssl module loads a leaf only
from a file, so each leaf's key goes through an anonymous memory file (memfd), never
a path on disk. The CA certificate carries name constraints for the inspected hosts:
a leaked CA certificate vouches for nothing else.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ALPN = ["http/1.1"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (bookworm's 3.11 has UTC too)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _subtree(host: str) -> x509.GeneralName:
    """A name constraint: a DNS name covers itself and every name below it."""
    try:
        return x509.IPAddress(ipaddress.ip_network(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass
class RunCA:
    """The gateway's CA for one step; `issue` mints a leaf for a name."""

    certificate: x509.Certificate
    _key: ec.EllipticCurvePrivateKey = field(repr=False)
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, step: str, names: tuple[str, ...]) -> RunCA:
        """A fresh CA, constrained to `names` (exact hosts and wildcard suffixes)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                f"sbx run CA for step {step}"[:64])])
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False))
        if names:
            builder = builder.add_extension(x509.NameConstraints(
                permitted_subtrees=[_subtree(n) for n in names], excluded_subtrees=None),
                critical=True)
        return cls(builder.sign(key, hashes.SHA256()), key)

    def pem(self) -> str:
        """The CA certificate (public) in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the CA certificate's DER."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server context presenting a leaf for `host`, made once per name."""
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is None:
                ctx = self._contexts[host] = self._server_context(host)
            return ctx

    def _server_context(self, host: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
                .issuer_name(self.certificate.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        blob = (cert.public_bytes(serialization.Encoding.PEM)
                + key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # Only HTTP/1.1 is offered: h2 is not checked, so it is never negotiated.
        ctx.set_alpn_protocols(ALPN)
        # TLS 1.3 session tickets stay on, though resumption is not used: their write right
        # after the handshake also acknowledges the client's Finished at once. Without
        # them, a client whose request waited behind its Finished (Nagle) waited for
        # the delayed ACK: 52 ms instead of 7 ms a connection on loopback.
        fd = os.memfd_create("sbx-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, blob)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx


def upstream_context(extra_ca_pem: str = "") -> ssl.SSLContext:
    """The context for connections to upstream: system store plus `extra_ca_pem`, verified."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_ca_pem:
        ctx.load_verify_locations(cadata=extra_ca_pem)
    ctx.set_alpn_protocols(ALPN)
    return ctx
