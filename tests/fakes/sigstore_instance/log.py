"""The Rekor-like transparency log (Rekor v1 REST API, `hashedrekord` and `dsse` 0.0.1).

What sigstore-python checks for a Rekor v1 entry in a v0.3 bundle, and what this
log therefore produces:

* inclusion proof (required): RFC 6962 audit path for `logIndex` in a tree of
  `treeSize` leaves, leaf = SHA-256(0x00 || body), node = SHA-256(0x01 || l || r),
  hashes ordered leaf to root (`sigstore._internal.merkle`);
* checkpoint (required): a signed note `"<origin>\\n<size>\\n<b64 root>\\n"` +
  `"\\n— <name> <b64(key hint || ECDSA sig)>\\n"`, where the key hint is the first
  4 bytes of the log id and the root equals the proof's root
  (`sigstore._internal.rekor.checkpoint`);
* signed entry timestamp: ECDSA over the RFC 8785 canonical JSON of
  `{body, integratedTime, logID, logIndex}` (`TransparencyLogEntry._verify_set`);
  with `integratedTime` it is the verifier's only source of signing time when no
  timestamp authority is configured, and it must fall in the leaf's validity;
* log id: SHA-256 of the log key's DER SubjectPublicKeyInfo;
* body: Rekor's canonicalized entry (for `dsse`: envelope hash, payload hash and
  the signatures with their verifiers, without the proposed content), which the
  verifier compares with the bundle's envelope/signature and certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .keys import PublicKey, key_id, supported_key, verify
from .server import HTTPError, Request, Response, error_response, json_response

# --- RFC 6962 Merkle tree ---


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 6962 Merkle tree over leaf hashes."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []

    def __len__(self) -> int:
        return len(self._leaves)

    def append(self, data: bytes) -> int:
        """Add a leaf (its data, not its hash); returns its index."""
        self._leaves.append(leaf_hash(data))
        return len(self._leaves) - 1

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]) (the empty tree's root is SHA-256 of nothing)."""
        size = len(self._leaves) if size is None else size
        if size == 0:
            return hashlib.sha256(b"").digest()
        return self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]), leaf to root (RFC 6962 section 2.1.1)."""
        size = len(self._leaves) if size is None else size
        if not 0 <= index < size <= len(self._leaves):
            raise ValueError(f"no leaf {index} in a tree of size {size}")
        return self._path(index, 0, size)

    def _mth(self, start: int, end: int) -> bytes:
        if end - start == 1:
            return self._leaves[start]
        k = _split(end - start)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end))

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, start, start + k), self._mth(start + k, end)]
        return [*self._path(m - k, start + k, end), self._mth(start, start + k)]


# --- entries ---


@dataclass(frozen=True)
class Entry:
    """One integrated entry."""

    index: int
    uuid: str
    body: bytes
    integrated_time: int
    signed_entry_timestamp: bytes


def _b64decode(value: Any, what: str) -> bytes:
    try:
        text = str(value)
        return base64.b64decode(
            text + "=" * (-len(text) % 4),
            altchars=b"-_" if ("-" in text or "_" in text) else None,
            validate=True,
        )
    except (binascii.Error, ValueError) as exc:
        raise HTTPError(400, f"{what} is not base64: {exc}") from exc


def _load_verifier(b64_pem: Any) -> PublicKey:
    pem = _b64decode(b64_pem, "verifier")
    try:
        try:
            key: object = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            key = serialization.load_pem_public_key(pem)
        return supported_key(key)
    except ValueError as exc:
        raise HTTPError(400, f"unusable verifier: {exc}") from exc


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def canonicalize(proposed: Any) -> bytes:
    """Rekor's stored body for a proposed entry; raises `HTTPError` 400 if it won't verify."""
    if not isinstance(proposed, dict):
        raise HTTPError(400, "entry must be a JSON object")
    kind, version = proposed.get("kind"), proposed.get("apiVersion")
    spec = proposed.get("spec")
    if version != "0.0.1" or not isinstance(spec, dict):
        raise HTTPError(400, f"unsupported entry {kind}/{version}")
    try:
        if kind == "hashedrekord":
            return _canonical_hashedrekord(spec)
        if kind == "dsse":
            return _canonical_dsse(spec)
    except (KeyError, TypeError, AttributeError) as exc:
        raise HTTPError(400, f"malformed {kind} entry: missing or bad {exc}") from exc
    raise HTTPError(400, f"unsupported entry kind {kind!r}")


def _canonical_hashedrekord(spec: Mapping[str, Any]) -> bytes:
    algorithm = spec["data"]["hash"]["algorithm"]
    digest_hex = spec["data"]["hash"]["value"]
    signature_b64 = spec["signature"]["content"]
    verifier_b64 = spec["signature"]["publicKey"]["content"]
    try:
        digest = bytes.fromhex(digest_hex)
    except ValueError as exc:
        raise HTTPError(400, "hash value is not hex") from exc
    key = _load_verifier(verifier_b64)
    if not verify(key, _b64decode(signature_b64, "signature"), digest, prehashed=algorithm):
        raise HTTPError(400, "signature does not verify against the artifact digest")
    return rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": algorithm, "value": digest_hex}},
                "signature": {"content": signature_b64, "publicKey": {"content": verifier_b64}},
            },
        }
    )


def _canonical_dsse(spec: Mapping[str, Any]) -> bytes:
    content = spec["proposedContent"]
    envelope_text = str(content["envelope"])
    verifiers = [(v, _load_verifier(v)) for v in content["verifiers"]]
    try:
        envelope = json.loads(envelope_text)
    except ValueError as exc:
        raise HTTPError(400, "envelope is not JSON") from exc
    payload = _b64decode(envelope["payload"], "payload")
    pae = _pae(str(envelope["payloadType"]), payload)
    signatures = []
    for signature in envelope["signatures"]:
        sig = _b64decode(signature["sig"], "signature")
        matching = [b64 for b64, key in verifiers if verify(key, sig, pae)]
        if not matching:
            raise HTTPError(400, "an envelope signature verifies against no verifier")
        signatures.append({"signature": base64.b64encode(sig).decode(), "verifier": matching[0]})
    if not signatures:
        raise HTTPError(400, "envelope has no signatures")
    signatures.sort(key=lambda s: s["signature"])
    return rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(envelope_text.encode()).hexdigest(),
                },
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload).hexdigest(),
                },
                "signatures": signatures,
            },
        }
    )


# --- the log ---


class TransparencyLog:
    """A single-shard Rekor v1 log: Merkle tree, checkpoints, SETs and the REST API."""

    def __init__(self, origin_name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key()
        self.log_id = key_id(self.public_key)
        self.tree_id = secrets.randbelow(2**63 - 1) + 1
        self.name = origin_name
        self.origin = f"{origin_name} - {self.tree_id}"
        self._tree = MerkleTree()
        self._entries: list[Entry] = []
        self._by_uuid: dict[str, Entry] = {}
        self._by_body: dict[bytes, Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tree)

    def _sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def add(self, body: bytes) -> tuple[Entry, bool]:
        """Integrate a canonical body; returns (entry, created) (an existing entry if a dup)."""
        with self._lock:
            existing = self._by_body.get(body)
            if existing is not None:
                return existing, False
            index = self._tree.append(body)
            integrated_time = int(time.time())
            uuid = f"{self.tree_id:016x}{leaf_hash(body).hex()}"
            set_payload = rfc8785.dumps(
                {
                    "body": base64.b64encode(body).decode(),
                    "integratedTime": integrated_time,
                    "logID": self.log_id.hex(),
                    "logIndex": index,
                }
            )
            entry = Entry(index, uuid, body, integrated_time, self._sign(set_payload))
            self._entries.append(entry)
            self._by_uuid[uuid] = entry
            self._by_uuid[uuid[16:]] = entry
            self._by_body[body] = entry
            return entry, True

    def checkpoint(self, size: int) -> str:
        """The signed note for the tree head at `size`."""
        note = f"{self.origin}\n{size}\n{base64.b64encode(self._tree.root(size)).decode()}\n"
        signature = base64.b64encode(self.log_id[:4] + self._sign(note.encode())).decode()
        return f"{note}\n\u2014 {self.name} {signature}\n"

    def render(self, entry: Entry) -> dict[str, Any]:
        """The API's `{uuid: LogEntry}` object, with a proof against the current tree."""
        with self._lock:
            size = len(self._tree)
            proof = self._tree.inclusion_proof(entry.index, size)
            root = self._tree.root(size)
            checkpoint = self.checkpoint(size)
        return {
            entry.uuid: {
                "body": base64.b64encode(entry.body).decode(),
                "integratedTime": entry.integrated_time,
                "logID": self.log_id.hex(),
                "logIndex": entry.index,
                "verification": {
                    "inclusionProof": {
                        "logIndex": entry.index,
                        "treeSize": size,
                        "rootHash": root.hex(),
                        "hashes": [h.hex() for h in proof],
                        "checkpoint": checkpoint,
                    },
                    "signedEntryTimestamp": base64.b64encode(entry.signed_entry_timestamp).decode(),
                },
            }
        }

    # --- HTTP ---

    def handle(self, request: Request) -> Response:
        """Routes of the Rekor v1 REST API."""
        path, method = request.path.rstrip("/"), request.method
        if path == "/api/v1/log" and method == "GET":
            with self._lock:
                size = len(self._tree)
                root, checkpoint = self._tree.root(size), self.checkpoint(size)
            return json_response(
                200,
                {
                    "rootHash": root.hex(),
                    "treeSize": size,
                    "signedTreeHead": checkpoint,
                    "treeID": str(self.tree_id),
                    "inactiveShards": [],
                },
            )
        if path == "/api/v1/log/publicKey" and method == "GET":
            pem = self.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return Response(200, pem, "application/x-pem-file")
        if path == "/api/v1/log/entries" and method == "POST":
            entry, created = self.add(canonicalize(request.json()))
            if not created:
                return error_response(
                    409, f"an equivalent entry already exists in the log with UUID {entry.uuid}"
                )
            return json_response(
                201, self.render(entry), {"Location": f"/api/v1/log/entries/{entry.uuid}"}
            )
        if path == "/api/v1/log/entries" and method == "GET":
            return self._get_by_index(request.query.get("logIndex", [""])[0])
        if path == "/api/v1/log/entries/retrieve" and method == "POST":
            return json_response(200, [self.render(e) for e in self._search(request.json())])
        if path.startswith("/api/v1/log/entries/") and method == "GET":
            found = self._by_uuid.get(path.rsplit("/", 1)[1])
            if found is None:
                return error_response(404, "no such entry")
            return json_response(200, self.render(found))
        return error_response(404, f"no route {method} {request.path}")

    def _get_by_index(self, raw: str) -> Response:
        try:
            index = int(raw)
        except ValueError:
            return error_response(400, "logIndex must be an integer")
        if not 0 <= index < len(self._entries):
            return error_response(404, "no such entry")
        return json_response(200, self.render(self._entries[index]))

    def _search(self, query: Any) -> Sequence[Entry]:
        if not isinstance(query, dict):
            raise HTTPError(400, "search must be a JSON object")
        found: list[Entry] = []
        for proposed in query.get("entries") or []:
            entry = self._by_body.get(canonicalize(proposed))
            if entry is not None:
                found.append(entry)
        for uuid in query.get("entryUUIDs") or []:
            if str(uuid) in self._by_uuid:
                found.append(self._by_uuid[str(uuid)])
        for index in query.get("logIndexes") or []:
            if isinstance(index, int) and 0 <= index < len(self._entries):
                found.append(self._entries[index])
        return found
