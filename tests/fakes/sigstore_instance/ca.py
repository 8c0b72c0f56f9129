"""The certificate authority (root and intermediate) and the CT log it submits to.

Leaf issuance follows RFC 6962 as Fulcio does it: a precertificate carrying the
critical poison extension is built and signed first; the CT log signs the
precertificate's TBSCertificate with the poison extension removed, bound to the
SHA-256 of the issuer's SubjectPublicKeyInfo; the final certificate is the same
TBSCertificate with the SCT list extension where the poison was. The verifier
(`cryptography`'s `tbs_precertificate_bytes`) strips the SCT list and must get
back exactly the bytes the log signed; `issue_leaf` checks that before returning.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from .keys import PublicKey, key_id

LEAF_LIFETIME = dt.timedelta(minutes=10)

_SCT_VERSION_V1 = 0
_SIGNATURE_TYPE_CERTIFICATE_TIMESTAMP = 0
_ENTRY_TYPE_PRECERT = 1
_HASH_SHA256 = 4
_SIGNATURE_ECDSA = 3


# --- a few DER primitives: enough to take one extension out of a TBSCertificate ---


def der_length(n: int) -> bytes:
    """The DER encoding of a length."""
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_tlv(tag: int, content: bytes) -> bytes:
    """A DER tag-length-value."""
    return bytes([tag]) + der_length(len(content)) + content


def der_utf8(text: str) -> bytes:
    """A DER UTF8String, the encoding Fulcio uses for its v2 extensions."""
    return der_tlv(0x0C, text.encode())


def _der_items(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """Split concatenated TLVs into (tag, whole TLV, content); single-byte tags only."""
    items = []
    off = 0
    while off < len(buf):
        tag, first = buf[off], buf[off + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            header, length = 2 + n, int.from_bytes(buf[off + 2 : off + 2 + n], "big")
        end = off + header + length
        if end > len(buf):
            raise ValueError("truncated DER")
        items.append((tag, buf[off:end], buf[off + header : end]))
        off = end
    return items


def strip_extension(tbs: bytes, oid: x509.ObjectIdentifier) -> bytes:
    """`tbs` (a DER TBSCertificate) without the extension `oid`."""
    ((tag, _, tbs_content),) = _der_items(tbs)
    if tag != 0x30:
        raise ValueError("TBSCertificate is not a SEQUENCE")
    oid_tlv = der_tlv(0x06, _oid_body(oid))
    fields = []
    for field_tag, field_tlv, field_content in _der_items(tbs_content):
        if field_tag == 0xA3:  # [3] EXPLICIT Extensions
            ((_, _, extensions),) = _der_items(field_content)
            kept = [
                tlv for _, tlv, content in _der_items(extensions) if not content.startswith(oid_tlv)
            ]
            field_tlv = der_tlv(0xA3, der_tlv(0x30, b"".join(kept)))
        fields.append(field_tlv)
    return der_tlv(0x30, b"".join(fields))


def _oid_body(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


# --- the CT log ---


class CTLog:
    """A certificate transparency log that only signs SCTs for precertificates."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key()
        self.log_id = key_id(self.public_key)

    def sct_for_precert(
        self, tbs_without_poison: bytes, issuer_key_hash: bytes, when: dt.datetime
    ) -> bytes:
        """A TLS-encoded v1 SCT over a precertificate entry (RFC 6962 section 3.2)."""
        timestamp = int(when.timestamp() * 1000)
        extensions = b""
        signed = (
            struct.pack(
                "!BBQH32s",
                _SCT_VERSION_V1,
                _SIGNATURE_TYPE_CERTIFICATE_TIMESTAMP,
                timestamp,
                _ENTRY_TYPE_PRECERT,
                issuer_key_hash,
            )
            + len(tbs_without_poison).to_bytes(3, "big")
            + tbs_without_poison
            + struct.pack("!H", len(extensions))
            + extensions
        )
        signature = self._key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return (
            struct.pack("!B32sQH", _SCT_VERSION_V1, self.log_id, timestamp, len(extensions))
            + extensions
            + struct.pack("!BBH", _HASH_SHA256, _SIGNATURE_ECDSA, len(signature))
            + signature
        )


def sct_list_extension(scts: Sequence[bytes]) -> x509.UnrecognizedExtension:
    """The X.509 SCT list extension: OCTET STRING around a TLS SignedCertificateTimestampList."""
    body = b"".join(struct.pack("!H", len(sct)) + sct for sct in scts)
    tls_list = struct.pack("!H", len(body)) + body
    return x509.UnrecognizedExtension(
        ExtensionOID.PRECERT_SIGNED_CERTIFICATE_TIMESTAMPS, der_tlv(0x04, tls_list)
    )


# --- the CA ---


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate and its chain up to (and including) the root."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def pem_chain(self) -> list[str]:
        """Leaf, intermediate, root as PEM strings (Fulcio's response order)."""
        return [
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.leaf, *self.chain)
        ]


class CertificateAuthority:
    """A root, an intermediate that issues short-lived code-signing leaves, and its CT log."""

    def __init__(self, name: str, ct_log: CTLog, now: dt.datetime) -> None:
        self.ct_log = ct_log
        self.not_before = now.replace(microsecond=0) - dt.timedelta(hours=1)
        not_after = self.not_before + dt.timedelta(days=365)
        self._root_key = ec.generate_private_key(ec.SECP384R1())
        self._inter_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(name, f"{name}-root")
        self.root = _ca_cert(
            subject=root_name,
            issuer=root_name,
            key=self._root_key.public_key(),
            signer=self._root_key,
            path_length=1,
            not_before=self.not_before,
            not_after=not_after,
            code_signing=False,
        )
        self.intermediate = _ca_cert(
            subject=_name(name, f"{name}-intermediate"),
            issuer=root_name,
            key=self._inter_key.public_key(),
            signer=self._root_key,
            path_length=0,
            not_before=self.not_before,
            not_after=not_after,
            code_signing=True,
        )
        self._issuer_key_hash = key_id(self._inter_key.public_key())

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        """Intermediate then root: the trusted root's `certChain` order."""
        return (self.intermediate, self.root)

    def issue_leaf(
        self,
        public_key: PublicKey,
        san: x509.GeneralName,
        extensions: Sequence[x509.UnrecognizedExtension],
        now: dt.datetime,
    ) -> IssuedCertificate:
        """A 10-minute code-signing leaf for `public_key` with an embedded SCT."""
        not_before = now.replace(microsecond=0)
        inter_ski = self.intermediate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + LEAF_LIFETIME)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(inter_ski), False
            )
            # Fulcio leaves have an empty subject, so the SAN is critical (RFC 5280 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)

        precert = builder.add_extension(x509.PrecertPoison(), critical=True).sign(
            self._inter_key, hashes.SHA384()
        )
        tbs = strip_extension(precert.tbs_certificate_bytes, ExtensionOID.PRECERT_POISON)
        sct = self.ct_log.sct_for_precert(tbs, self._issuer_key_hash, now)
        leaf = builder.add_extension(sct_list_extension([sct]), critical=False).sign(
            self._inter_key, hashes.SHA384()
        )
        if leaf.tbs_precertificate_bytes != tbs:
            raise RuntimeError("final certificate does not match the precertificate the log signed")
        return IssuedCertificate(leaf, self.chain)


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_cert(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    path_length: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    code_signing: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    )
    if code_signing:  # as Fulcio's intermediate
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(signer, hashes.SHA384())
