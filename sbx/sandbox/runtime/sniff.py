"""What a connection's first bytes name: TLS SNI or HTTP Host, read once, or nothing usable.

Sans-IO: `read(data)` returns None while more bytes are needed, else a `Reading`.
A ClientHello is reassembled from its handshake records and every length in it is
honoured; anything a TLS server could read as another name than ours is refused
as ambiguous (several names, a duplicate extension, bytes after the hello or its
extensions, a record that is not a handshake, a hello beyond `MAX_HELLO`). An
HTTP head is read by `http_head` (bare LF, control characters, several Host
headers refused). The hypothesis test fuzzes this against Python's ssl server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sbx.sandbox.runtime import http_head

# TLS 1.3 hellos with post-quantum key shares are ~2 KiB; no client needs more than 16 KiB
# of hello (OpenSSL's own bound for a ClientHello is 128 KiB, ours is deliberately lower).
MAX_HELLO: Final = 16 * 1024
MAX_RECORD: Final = 1 << 14  # RFC 8446 5.1: a plaintext fragment never exceeds 2^14
# The most first bytes the gateway ever holds before deciding (records of 1-byte fragments
# carry 5 bytes of header each: still bounded by this).
MAX_FIRST: Final = 64 * 1024
_SNI_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


@dataclass(frozen=True)
class Reading:
    """What the first bytes said: the protocol, and a name or why there is none."""

    protocol: str  # tls | http | other
    name: str | None = None
    problem: str | None = None  # set when name is None: why nothing usable was named
    head: http_head.RequestHead | None = None


class _Refused(Exception):
    pass


def read(data: bytes) -> Reading | None:
    """The reading of a connection's first bytes, or None while they are incomplete."""
    if not data:
        return None
    if data[0] == 0x16:
        try:
            return _tls(data)
        except _Refused as exc:
            return Reading("tls", problem=str(exc))
    if http_head.looks_like_http(data):
        return _http(data)
    return Reading("other", problem="the first bytes are neither TLS nor HTTP")


def _http(data: bytes) -> Reading | None:
    try:
        end = http_head.head_end(data)
        if end is None:
            return None
        head = http_head.parse(data[:end])
        if head.version not in ("1.0", "1.1"):
            # h11 reads "PRI * HTTP/2.0" as a head; the request checker would refuse it too.
            what = "HTTP/2 prior knowledge" if head.method == "PRI" else "HTTP version"
            return Reading("http", problem=f"{what} {head.version} refused: only HTTP/1.x is "
                           "read", head=head)
        host = head.host
        if host is None:
            return Reading("http", problem="HTTP request without a Host header", head=head)
        return Reading("http", name=http_head.host_name(host), head=head)
    except http_head.HeadError as exc:
        return Reading("http", problem=f"refused HTTP head: {exc}")


def _u(data: bytes | bytearray, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise _Refused("a length runs past the end of the ClientHello")
    return int.from_bytes(data[pos : pos + size], "big")


def _tls(data: bytes) -> Reading | None:
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            if len(data) >= MAX_FIRST:
                raise _Refused(f"ClientHello records beyond {MAX_FIRST} bytes")
            return None
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = _u(data, pos + 3, 2)
        if ctype != 0x16:
            raise _Refused("a record that is not a handshake before the ClientHello ended")
        if major != 3 or minor > 4:
            raise _Refused("unknown TLS record version")
        if length == 0 or length > MAX_RECORD:
            raise _Refused(f"handshake record of {length} bytes")
        if len(data) < pos + 5 + length:
            if pos + 5 + length > MAX_FIRST:
                raise _Refused(f"ClientHello records beyond {MAX_FIRST} bytes")
            _check_header(handshake + data[pos + 5 :])  # refuse early, not at the bound
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) < 4:
            continue
        size = _check_header(handshake)
        if len(handshake) < 4 + size:
            continue
        if len(handshake) > 4 + size:
            raise _Refused("bytes after the ClientHello in its record")
        return _hello(bytes(handshake[4:]))


def _check_header(handshake: bytes | bytearray) -> int:
    """The ClientHello's length from its handshake header (0 while incomplete)."""
    if handshake[:1] not in (b"", b"\x01"):
        raise _Refused("the first handshake message is not a ClientHello")
    if len(handshake) < 4:
        return 0
    size = _u(handshake, 1, 3)
    if size > MAX_HELLO:
        raise _Refused(f"ClientHello of {size} bytes, beyond the {MAX_HELLO}-byte bound")
    return size


def _vector(data: bytes, pos: int, width: int) -> tuple[bytes, int]:
    size = _u(data, pos, width)
    end = pos + width + size
    if end > len(data):
        raise _Refused("a length runs past the end of the ClientHello")
    return data[pos + width : end], end


def _hello(body: bytes) -> Reading:
    pos = 2 + 32  # legacy_version, random
    if len(body) < pos:
        raise _Refused("truncated ClientHello")
    session, pos = _vector(body, pos, 1)
    suites, pos = _vector(body, pos, 2)
    compression, pos = _vector(body, pos, 1)
    if len(session) > 32 or not suites or len(suites) % 2 or not compression:
        raise _Refused("malformed ClientHello")
    if pos == len(body):
        return Reading("tls", problem="TLS without a server name (no extensions)")
    extensions, pos = _vector(body, pos, 2)
    if pos != len(body):
        raise _Refused("bytes after the ClientHello's extensions")
    seen: set[int] = set()
    name: str | None = None
    at = 0
    while at < len(extensions):
        kind = _u(extensions, at, 2)
        value, at = _vector(extensions, at + 2, 2)
        if kind in seen:
            raise _Refused(f"extension {kind} twice")
        seen.add(kind)
        if kind == 0:
            name = _server_name(value)
    if name is None:
        return Reading("tls", problem="TLS without a server name (no SNI)")
    return Reading("tls", name=name)


def _server_name(value: bytes) -> str:
    names, end = _vector(value, 0, 2)
    if end != len(value):
        raise _Refused("bytes after the server_name list")
    if not names:
        raise _Refused("empty server_name list")
    if names[0] != 0:
        raise _Refused("server_name entry of an unknown type")
    raw, end = _vector(names, 1, 2)
    if end != len(names):
        raise _Refused("several server names")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Refused("server name is not ASCII") from None
    if len(text) > 253 or not _SNI_NAME.fullmatch(text):
        raise _Refused("server name is not a host name")
    return text
