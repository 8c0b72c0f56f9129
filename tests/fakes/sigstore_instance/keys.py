"""Key helpers shared by the CA, the CT log and the transparency log."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def spki_der(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> bytes:
    """RFC 6962 key id: SHA-256 of the DER SubjectPublicKeyInfo (also Rekor's log id)."""
    return hashlib.sha256(spki_der(key)).digest()


def supported_key(key: object) -> PublicKey:
    """`key` if Fulcio would certify it (P-256/384/521, RSA >= 2048, Ed25519), else ValueError."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1):
            raise ValueError(f"unsupported curve {key.curve.name}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError("RSA key too small")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ValueError(f"unsupported key type {type(key).__name__}")


def verify(key: PublicKey, signature: bytes, data: bytes, *, prehashed: str | None = None) -> bool:
    """Whether `signature` is valid over `data` (or over the digest `data`, if `prehashed`)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if prehashed:
                return False
            key.verify(signature, data)
            return True
        algorithm: hashes.HashAlgorithm | Prehashed
        if prehashed:
            if prehashed not in _HASHES:
                return False
            algorithm = Prehashed(_HASHES[prehashed]())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = {256: hashes.SHA256, 384: hashes.SHA384}.get(
                key.curve.key_size, hashes.SHA512
            )()
        else:
            algorithm = hashes.SHA256()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        return True
    except (InvalidSignature, ValueError):
        return False
