"""Refuse request heads that parsers could read two ways, before h11 reads them.

h11 is lenient where a server behind the gateway may not be: it accepts bare LF line
ends and obs-fold, merges identical duplicate Content-Length headers and lets
Transfer-Encoding win over Content-Length. Each of these is how requests get smuggled
past a checker that reads them one way to a server that reads them another. This
module only refuses; what a request *is* (method, target, headers) is h11's answer. The
line checks are `http_head.check_lines`, the same the head that picks the destination
passes, so the first request and every one after it are held to one standard.
"""

from __future__ import annotations

from typing import Final

from sbx.sandbox.runtime import http_head
from sbx.sandbox.runtime.http_head import HeadError, check_lines

MAX_HEAD: Final = http_head.MAX_HEAD  # one bound for every head (16 KiB)


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
    try:
        check_lines(b"\r\n".join(lines))
    except HeadError as exc:
        raise Refused(str(exc)) from None


def _check_head(head: bytes) -> None:
    lines = head.split(b"\r\n")
    _check_lines(lines)
    names = [line.split(b":", 1)[0].strip().lower() for line in lines[1:]]
    lengths = names.count(b"content-length")
    if lengths > 1:
        raise Refused("duplicate Content-Length headers")
    if lengths and b"transfer-encoding" in names:
        raise Refused("both Content-Length and Transfer-Encoding")
