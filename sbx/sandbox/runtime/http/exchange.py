"""One HTTP/1.x connection through the gateway, sans-IO: bytes in, bytes out, records.

Every request the client sends is read by h11 (a fresh server-side parser per request,
so keep-alive and pipelined requests are each read whole), judged, and, when allowed,
written again by h11 towards upstream: upstream only ever gets requests the gateway
read and framed itself. A request that fails its check gets a 403 from the gateway
once the responses to the requests before it are through, and nothing after it on the
connection reaches upstream. Responses are relayed as they come and read by h11 only
to record each request's status and size: h11 reads each head; a body whose end the head
settles (a Content-Length, or the close of a response without one) is counted, not
parsed, and the relay may move it in the kernel (`passing`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

import h11

from sbx.sandbox.runtime.http.framing import Refused, head_length
from sbx.sandbox.runtime.http.judge import Judge, Verdict


@dataclass
class Record:
    """One request as recorded: its verdict, then the response status and bytes."""

    verdict: Verdict
    status: int | None = None
    bytes_out: int = 0  # request body bytes sent upstream
    bytes_in: int = 0  # response bytes relayed to the client


@dataclass
class Out:
    """What the caller must do after feeding bytes in."""

    to_upstream: bytes = b""
    to_client: bytes = b""
    records: list[Record] = field(default_factory=list)
    close: bool = False  # send what is here, then close both sides
    end_upstream: bool = False  # the client finished sending: half-close towards upstream
    raw: bool = False  # switched protocols (WebSocket): relay bytes as they are from now on


_FORBIDDEN: Final = 403
# `Exchange.passing` for a body that ends when upstream closes: any amount may pass.
UNTIL_CLOSE: Final = 1 << 62


def refusal(reason: str, status: int = _FORBIDDEN) -> bytes:
    """The gateway's own response to a refused request (h11 writes it)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    # Printable ASCII only: the reason can quote what the client sent.
    text = bytes(c for c in reason.encode("ascii", "replace") if 0x20 <= c < 0x7f)[:300]
    body = b"sbx gateway: " + text + b"\n"
    phrase = b"Forbidden" if status == _FORBIDDEN else b"Bad Request"
    head = conn.send(h11.Response(status_code=status, reason=phrase, headers=[
        (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), (b"x-sbx-reason", text)]))
    return (head or b"") + body


def _known_length(response: h11.Response, method: str) -> int | None:
    """The body length h11 will read for `response`, when it is one Content-Length.

    h11 has already refused conflicting Content-Length values; a response to HEAD, a
    204 or 304 has no body whatever it says, and chunked bodies stay with h11.
    """
    if method == "HEAD" or response.status_code in (204, 304):
        return 0
    lengths = [v for k, v in response.headers if k == b"content-length"]
    if len(lengths) != 1 or any(k == b"transfer-encoding" for k, _ in response.headers):
        return None
    try:
        return int(lengths[0])
    except ValueError:
        return None


def _until_close(response: h11.Response, method: str) -> bool:
    """True when h11 would read `response`'s body until upstream closes (HTTP/1.0 style):
    no Content-Length, not chunked, and a body at all. Nothing after such a body can be
    a response, so it is counted to the end instead of parsed."""
    if method in ("HEAD", "CONNECT") or response.status_code in (204, 304):
        return False
    return not any(k in (b"content-length", b"transfer-encoding") for k, _ in response.headers)


@dataclass
class _Sent:
    record: Record
    upstream: h11.Connection  # wrote the request; reads its response


class Exchange:
    """The request checker of one connection (see the module docstring)."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self._buf = bytearray()
        self._parser: h11.Connection | None = None
        self._current: _Sent | None = None
        self._sent: deque[_Sent] = deque()
        self._refused: tuple[Record, int] | None = None  # answered once _sent is empty
        self._waiting_switch = False
        self.closed = False
        # Bytes left of a response body of known length: counted as they pass, not parsed
        # (`upstream_bytes`, and `body_passed` when the caller moved them itself).
        self.body_left = 0
        # The current response's body runs until upstream closes: counted the same way.
        self.until_close = False

    @property
    def passing(self) -> int:
        """How many upstream bytes the caller may move to the client without showing them
        here (then it reports them with `body_passed`): the rest of a body being counted,
        `UNTIL_CLOSE` for one that ends with the connection, 0 while a head is read."""
        if self.body_left:
            return self.body_left
        return UNTIL_CLOSE if self.until_close else 0

    # ------------------------------------------------------------------ client side

    def client_bytes(self, data: bytes) -> Out:
        """Bytes from the client (empty: the client closed its side)."""
        out = Out()
        if self.closed or self._refused is not None:
            return out  # nothing after a refused request goes anywhere
        if not data:
            # Responses to what was sent still come back; a request cut short is recorded
            # as it is (upstream sees it end early, as it would without the gateway).
            if self._current is not None:
                out.records.append(self._current.record)
                self._current = None
            self._buf.clear()
            self._parser = None
            out.end_upstream = True
            return out
        self._buf += data
        if not self._waiting_switch:
            self._read_requests(out)
        self._settle(out)
        return out

    def _read_requests(self, out: Out) -> None:
        while self._refused is None and not self.closed:
            if self._parser is None:
                if not self._buf:
                    return
                try:
                    if head_length(self._buf) is None:
                        return
                except Refused as exc:
                    self._refuse_unread(out, str(exc))
                    return
                self._parser = h11.Connection(h11.SERVER)
                self._parser.receive_data(bytes(self._buf))
                self._buf.clear()
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse_unread(out, f"malformed request: {exc}")
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                if not self._on_request(out, event):
                    return
            elif isinstance(event, h11.Data):
                assert self._current is not None
                self._current.record.bytes_out += len(event.data)
                out.to_upstream += self._current.upstream.send(event) or b""
            elif isinstance(event, h11.EndOfMessage):
                assert self._current is not None
                out.to_upstream += self._current.upstream.send(event) or b""
                self._sent.append(self._current)
                websocket = self._current.record.verdict.websocket
                self._current = None
                rest, _ = self._parser.trailing_data
                self._parser = None
                self._buf[:0] = rest
                if websocket:
                    # Nothing more is read until upstream agrees to switch (or refuses).
                    self._waiting_switch = True
                    return
            else:  # ConnectionClosed or PAUSED: nothing to forward
                return

    def _on_request(self, out: Out, request: h11.Request) -> bool:
        verdict = self.judge.judge(request)
        record = Record(verdict)
        if not verdict.passes:
            self._refuse(out, verdict, verdict.reason)
            return False
        upstream = h11.Connection(h11.CLIENT)
        try:
            out.to_upstream += upstream.send(h11.Request(
                method=request.method, target=verdict.target, headers=list(verdict.headers))) or b""
        except h11.LocalProtocolError as exc:
            self._refuse(out, verdict, f"request cannot be relayed: {exc}", 400)
            return False
        self._current = _Sent(record, upstream)
        return True

    def _refuse_unread(self, out: Out, reason: str) -> None:
        """A request h11 or the framing check would not read: nothing of it is known."""
        verdict = Verdict("denied", reason, "", self.judge.host, "")
        self._refuse(out, verdict, reason, 400)

    def _refuse(self, out: Out, verdict: Verdict, reason: str, status: int = _FORBIDDEN) -> None:
        if verdict.verdict != "denied" or verdict.reason != reason:
            verdict = Verdict("denied", reason, verdict.method, verdict.host, verdict.path,
                              verdict.rule)
        self._refused = (Record(verdict, status=status), status)
        self._buf.clear()
        self._parser = None
        self._current = None

    # ------------------------------------------------------------------ upstream side

    def upstream_bytes(self, data: bytes) -> Out:
        """Bytes from upstream (empty: upstream closed); relayed to the client unchanged."""
        out = Out()
        if self.closed:
            return out
        out.to_client += data
        ended = not data
        if data and self.until_close:
            if self._sent:
                self._sent[0].record.bytes_in += len(data)
            data = b""  # all of it is that body: nothing more to parse
        if data and self.body_left:
            data = self._count_body(out, data)
        if ended and (self.body_left or self.until_close):
            # Upstream ended inside a body of known length (that response is cut short), or
            # ended the body that runs until it closes.
            self.body_left = 0
            self.until_close = False
            if self._sent:
                out.records.append(self._sent.popleft().record)
        if ended:
            while self._sent:
                self._response(out, b"", eof=True)
                if self._sent and not self.closed:
                    self._sent.popleft()
            self.closed = True
            out.close = True
            self._settle(out, upstream_gone=True)
            return out
        if self._sent and data:
            self._response(out, data)
        self._settle(out)
        return out

    def body_passed(self, n: int) -> Out:
        """`n` body bytes (at most `passing`) went from upstream to the client without
        passing through here (the relay spliced them)."""
        out = Out()
        if self.until_close:
            if self._sent:
                self._sent[0].record.bytes_in += n
        else:
            self._count_body(out, b"", n)
        self._settle(out)
        return out

    def _count_body(self, out: Out, data: bytes, passed: int = 0) -> bytes:
        """Count body bytes of the current response; what follows the body is returned."""
        n = passed or min(len(data), self.body_left)
        self.body_left -= n
        if self._sent:
            self._sent[0].record.bytes_in += n
            if self.body_left == 0:
                out.records.append(self._sent.popleft().record)
        return data[n:] if not passed else b""

    def _response(self, out: Out, data: bytes, eof: bool = False) -> None:
        while self._sent and not out.raw and not self.body_left and not self.until_close:
            sent = self._sent[0]
            conn = sent.upstream
            if data or eof:
                conn.receive_data(data)  # b"" tells h11 that upstream closed
            else:
                return
            data = b""
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA or event is h11.PAUSED:
                        return
                    if isinstance(event, h11.InformationalResponse):
                        if event.status_code == 101 and sent.record.verdict.websocket:
                            sent.record.status = 101
                            out.records.append(sent.record)
                            self._sent.popleft()
                            self._switch(out, conn)
                            return
                    elif isinstance(event, h11.Response):
                        sent.record.status = event.status_code
                        length = _known_length(event, sent.record.verdict.method)
                        if length is not None:
                            # The body is counted, not parsed: h11 has read the head and
                            # the length it names; the bytes go to the client as they are.
                            buffered, _ = conn.trailing_data
                            taken = min(len(buffered), length)
                            sent.record.bytes_in += taken
                            self.body_left = length - taken
                            data = buffered[taken:]
                            if self.body_left == 0:
                                out.records.append(sent.record)
                                self._sent.popleft()
                            break
                        if (not sent.record.verdict.websocket
                                and _until_close(event, sent.record.verdict.method)):
                            # The body is everything up to upstream's close: counted too.
                            buffered, _ = conn.trailing_data
                            sent.record.bytes_in += len(buffered)
                            self.until_close = True
                            data = b""
                            break
                    elif isinstance(event, h11.Data):
                        sent.record.bytes_in += len(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        out.records.append(sent.record)
                        self._sent.popleft()
                        data, _ = conn.trailing_data
                        if sent.record.verdict.websocket:
                            self._waiting_switch = False  # refused upgrade: go on reading
                            self._read_requests(out)
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        out.records.append(sent.record)
                        self._sent.popleft()
                        return
            except h11.RemoteProtocolError as exc:
                sent.record.status = sent.record.status or 502
                out.records.append(sent.record)
                self._sent.clear()
                self.closed = True
                out.close = True
                out.records.append(Record(Verdict("denied", f"unreadable response from upstream: "
                                                  f"{exc}", "", self.judge.host, "")))
                return
        # Bytes past the last expected response are relayed but not read.

    def _switch(self, out: Out, conn: h11.Connection) -> None:
        # The 101 and what followed it were relayed as they came; what the client sent
        # after its upgrade request goes on as WebSocket bytes.
        del conn
        out.raw = True
        out.to_upstream += bytes(self._buf)
        self._buf.clear()

    def _settle(self, out: Out, upstream_gone: bool = False) -> None:
        """Answer a refused request once every response before it has been relayed."""
        if self._refused is not None and (not self._sent or upstream_gone):
            record, status = self._refused
            out.records.append(record)
            out.to_client += refusal(record.verdict.reason, status)
            out.close = True
            self.closed = True
            self._refused = None
