"""Find the destination name in a connection's first bytes: TLS SNI or HTTP Host.

A bounded parser: it reads at most one TLS record or one HTTP request head and
never trusts a length field beyond the bytes it has.
"""

from __future__ import annotations

import struct

MAX_HEAD = 16 * 1024
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                 b"CONNECT ", b"TRACE ")


def needs_more(data: bytes) -> bool:
    """True while `data` is a plausible but incomplete ClientHello or HTTP head."""
    if len(data) >= MAX_HEAD:
        return False
    if data[:1] == b"\x16":
        if len(data) < 5:
            return True
        length: int = struct.unpack("!H", data[3:5])[0]
        return len(data) < 5 + length
    if any(m.startswith(bytes(data[: len(m)])) or data.startswith(m) for m in _HTTP_METHODS):
        return b"\r\n\r\n" not in data
    return False


def tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello in its first record, or None.

    Only the first record is read: a hello split over records has another record's
    header inside it, which read as hello bytes gave a wrong name (found by the
    split-hello property test). A name that is not whole in the first record is None.
    """
    try:
        if data[0] != 0x16 or data[5] != 0x01:
            return None
        data = data[: 5 + struct.unpack("!H", data[3:5])[0]]
        pos = 9 + 2 + 32  # record header, handshake header, client version, random
        pos += 1 + data[pos]  # session id
        (n,) = struct.unpack("!H", data[pos : pos + 2])
        pos += 2 + n  # cipher suites
        pos += 1 + data[pos]  # compression methods
        (ext_total,) = struct.unpack("!H", data[pos : pos + 2])
        pos += 2
        end = min(pos + ext_total, len(data))
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack("!HH", data[pos : pos + 4])
            pos += 4
            if ext_type == 0:
                list_pos = pos + 2
                while list_pos + 3 <= pos + ext_len:
                    name_type, name_len = struct.unpack("!BH", data[list_pos : list_pos + 3])
                    if name_type == 0:
                        raw = data[list_pos + 3 : list_pos + 3 + name_len]
                        return raw.decode("ascii") if len(raw) == name_len else None
                    list_pos += 3 + name_len
                return None
            pos += ext_len
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


def http_host(data: bytes) -> str | None:
    """The Host header of an HTTP/1 request head (port stripped), or None."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    for line in head.split(b"\r\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else None
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


def destination_name(data: bytes) -> tuple[str | None, str]:
    """(name, how) from a connection's first bytes; how is 'sni', 'host' or 'none'."""
    name = tls_sni(data)
    if name:
        return name, "sni"
    name = http_host(data)
    if name:
        return name, "host"
    return None, "none"
