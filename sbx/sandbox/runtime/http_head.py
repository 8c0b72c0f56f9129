"""HTTP/1 request heads from a sandbox: one strict reading of the head that decides.

Sans-IO: bytes in, a `RequestHead` or a `HeadError` out. h11 parses; before it,
this module refuses what h11 tolerates but an upstream server may read
differently (bare LF line ends, control characters, obs-fold, several Host headers), so
the Host the gateway judges is the only Host the upstream can see. Requests the
explicit proxy forwards are read again and rebuilt by the request checker
(sbx.sandbox.runtime.http.exchange), never copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import h11

MAX_HEAD: Final = 16 * 1024
_END: Final = b"\r\n\r\n"
# Anything but TAB in C0, and DEL: no legitimate head carries them, and servers
# disagree on what they mean (a header split, a truncated value).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# LF without CR before it, or CR followed by anything but LF (a CR at the very end may
# still get its LF).
_BARE: Final = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")
# A request line's method: an HTTP token of letters (every registered method).
_METHOD_PREFIX: Final = re.compile(rb"^[A-Z]{1,20}( |$)")
_REQUEST_LINE: Final = re.compile(rb"[A-Z]{1,20} [^ ]+ HTTP/[0-9]\.[0-9]")


class HeadError(ValueError):
    """The head is refused; the message says why (for the event, not for the step)."""


@dataclass(frozen=True)
class RequestHead:
    """One parsed request head (no body)."""

    method: str
    target: str
    version: str  # "1.0" or "1.1", as h11 read it
    headers: tuple[tuple[str, str], ...]  # names and values as sent (h11 strips whitespace)

    def get(self, name: str) -> list[str]:
        """Every value of header `name` (any case)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def host(self) -> str | None:
        """The one Host header, or None (several are refused at parse time)."""
        found = self.get("host")
        return found[0] if found else None


def head_end(data: bytes) -> int | None:
    """Length of the head (through its blank line) in `data`, or None while incomplete.

    Raises `HeadError` when no head ends within MAX_HEAD bytes, or at once for a bare
    LF or CR before its end (a head of bare LFs would otherwise never end).
    """
    index = data.find(_END)
    scan = data[:index] if index >= 0 else data[:MAX_HEAD]
    if _BARE.search(scan):
        raise HeadError("bare LF or CR line end in the request head")
    if index >= 0 and index + len(_END) <= MAX_HEAD:
        return index + len(_END)
    if len(data) >= MAX_HEAD:
        raise HeadError(f"request head longer than {MAX_HEAD} bytes")
    return None


def looks_like_http(data: bytes) -> bool:
    """True when `data` starts like a request line (a method and a space), or could still;
    once the first line is whole, it must read ``METHOD target HTTP/x.y``."""
    line, sep, _ = data.partition(b"\r\n")
    if sep:
        return bool(_REQUEST_LINE.fullmatch(line))
    return bool(_METHOD_PREFIX.match(data[:21]))


def check_lines(lines: bytes) -> None:
    """Refuse what no server may read two ways in head lines (CRLF-separated, the blank
    line excluded; a head still arriving is fine): bare CR or LF, control characters,
    obs-fold. The one set of checks for the head that decides a destination and for
    every request the checker (`sbx.sandbox.runtime.http`) reads after it."""
    joined = lines.replace(b"\r\n", b"")
    if b"\n" in joined or b"\r" in joined:
        raise HeadError("bare LF or CR line end in the request head")
    if _CONTROL.search(joined):
        raise HeadError("control character in the request head")
    if any(line[:1] in (b" ", b"\t") for line in lines.split(b"\r\n")[1:]):
        raise HeadError("obs-fold (a header line continued on the next line)")


def parse(head: bytes) -> RequestHead:
    """Parse one complete head (ending in its blank line); `HeadError` when refused."""
    if not head.endswith(_END) or head.find(_END) != len(head) - len(_END):
        raise HeadError("not exactly one request head")
    check_lines(head[: -len(_END)])
    head = _with_host(head)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(f"malformed request head: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HeadError("incomplete request head")
    headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in event.headers.raw_items())
    if sum(1 for k, _ in headers if k.lower() == "host") > 1:
        raise HeadError("several Host headers")  # h11 refuses this too; kept explicit
    return RequestHead(method=event.method.decode("ascii"), target=event.target.decode("latin-1"),
                       version=event.http_version.decode("ascii"), headers=headers)


def _with_host(head: bytes) -> bytes:
    """A proxy request without Host gets the one its target names (RFC 9112 3.2.2: a proxy
    goes by the absolute-form or authority-form target, whatever Host says)."""
    line, _, rest = head.partition(b"\r\n")
    if re.search(rb"(?im)^host[ \t]*:", rest):
        return head
    parts = line.split(b" ")
    if len(parts) != 3:
        return head
    method, target = parts[0], parts[1]
    if method == b"CONNECT":
        authority = target
    elif target[:7].lower() == b"http://":
        authority = re.split(rb"[/?#]", target[7:], maxsplit=1)[0]
    else:
        return head
    return line + b"\r\nHost: " + authority + b"\r\n" + rest


def host_name(value: str) -> str:
    """The host of a Host header or authority, without port or IPv6 brackets.

    Raises `HeadError` for an authority with user info or a malformed port.
    """
    if "@" in value:
        raise HeadError("user info in an authority")
    if not value:
        raise HeadError("empty host")
    if value.startswith("["):
        inner, sep, rest = value[1:].partition("]")
        if not sep or not inner or (rest and not _port_ok(rest)):
            raise HeadError("malformed bracketed authority")
        return inner
    host, sep, port = value.rpartition(":")
    if not sep:
        return value
    if not host or not _port_ok(":" + port):
        raise HeadError("malformed port in an authority")
    return host


def _port_ok(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and 1 <= int(text[1:]) <= 65535

