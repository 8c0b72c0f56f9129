"""Refuse request heads that parsers could read two ways, before h11 reads them.

h11 is lenient where a server behind the gateway may not be: it accepts bare LF line
ends and obs-fold, merges identical duplicate Content-Length headers and lets
Transfer-Encoding win over Content-Length. Each of these is how requests get smuggled
past a checker that reads them one way to a server that reads them another. This
module only refuses; what a request *is* (method, target, headers) is h11's answer.
"""

from __future__ import annotations

from typing import Final

MAX_HEAD: Final = 32 * 1024


class Refused(ValueError):
    """A request the gateway will not forward, with the reason recorded."""


def head_length(buf: bytes | bytearray) -> int | None:
    """Bytes up to and including the blank line ending the first request head, or None
    while it has not arrived. `Refused` for a head that is ambiguous or too large."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        raise Refused("bare LF line end in the request head")
    if crlf < 0:
        if len(buf) > MAX_HEAD:
            raise Refused(f"request head longer than {MAX_HEAD} bytes")
        _check_lines(bytes(buf).split(b"\r\n")[:-1])
        return None
    end = crlf + 4
    if end > MAX_HEAD:
        raise Refused(f"request head longer than {MAX_HEAD} bytes")
    _check_head(bytes(buf[:crlf]))
    return end


def _check_lines(lines: list[bytes]) -> None:
    for i, line in enumerate(lines):
        if b"\n" in line or b"\r" in line:
            raise Refused("bare LF or CR line end in the request head")
        if b"\x00" in line:
            raise Refused("NUL byte in the request head")
        if i > 0 and line[:1] in (b" ", b"\t"):
            raise Refused("obs-fold (a header line continued on the next line)")


def _check_head(head: bytes) -> None:
    lines = head.split(b"\r\n")
    _check_lines(lines)
    names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
    lengths = names.count(b"content-length")
    if lengths > 1:
        raise Refused("duplicate Content-Length headers")
    if lengths and b"transfer-encoding" in names:
        raise Refused("both Content-Length and Transfer-Encoding")
