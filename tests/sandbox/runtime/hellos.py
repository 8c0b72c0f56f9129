"""Real ClientHellos (from Python's TLS client over memory BIOs), re-framed and rebuilt,
and what a real TLS server (Python's ssl, OpenSSL) reads from the same bytes."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

NO_CALLBACK = "<no sni callback>"


@functools.cache
def client_hello(name: str | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a TLS client connecting to `name` (None: no SNI)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    assert data[:1] == b"\x16", "not a TLS handshake record"
    return data


@dataclass(frozen=True)
class Hello:
    """A ClientHello taken apart: the body before the extensions, and the extensions."""

    before: bytes  # version, random, session id, suites, compression
    extensions: tuple[tuple[int, bytes], ...]

    @classmethod
    def parse(cls, framed: bytes) -> Hello:
        hs = framed[5:5 + int.from_bytes(framed[3:5], "big")]
        body = hs[4:]
        pos = 2 + 32
        pos += 1 + body[pos]
        pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        pos += 1 + body[pos]
        total = int.from_bytes(body[pos:pos + 2], "big")
        exts, at = [], pos + 2
        while at < pos + 2 + total:
            kind = int.from_bytes(body[at:at + 2], "big")
            size = int.from_bytes(body[at + 2:at + 4], "big")
            exts.append((kind, body[at + 4:at + 4 + size]))
            at += 4 + size
        return cls(body[:pos], tuple(exts))

    def message(self, trailing: bytes = b"") -> bytes:
        exts = b"".join(k.to_bytes(2, "big") + len(v).to_bytes(2, "big") + v
                        for k, v in self.extensions)
        body = self.before + len(exts).to_bytes(2, "big") + exts + trailing
        return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_value(*names: bytes, extra: bytes = b"") -> bytes:
    """A server_name extension's data listing `names` (host_name entries)."""
    entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n for n in names) + extra
    return len(entries).to_bytes(2, "big") + entries


def records(message: bytes, cuts: Sequence[int] = (), after: bytes = b"") -> bytes:
    """A handshake `message` framed as TLS records cut at `cuts` (and at 16 KiB), plus
    `after` inside the last record (bytes following the hello in its record)."""
    body = message + after
    edges = sorted({c for c in [*cuts, *range(16384, len(body), 16384)] if 0 < c < len(body)})
    out = b""
    for start, end in zip([0, *edges], [*edges, len(body)], strict=True):
        out += b"\x16\x03\x01" + (end - start).to_bytes(2, "big") + body[start:end]
    return out


def server_reads(data: bytes) -> str | None:
    """The name OpenSSL (through Python's ssl server) reads from `data`: the SNI its
    callback got (None: no SNI), or NO_CALLBACK when it never got that far."""
    seen: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(data)
    try:
        tls.do_handshake()
    except (ssl.SSLError, ValueError, UnicodeError):
        pass
    return seen[0] if seen else NO_CALLBACK
