"""The socket side of request checking: a loop that feeds each side's bytes to an Exchange.

One thread per connection, `select` over both sockets. TLS (when inspecting) runs
through memory BIOs, so both directions of a TLS connection are handled by this one
thread: OpenSSL objects are not safe to read and write from two threads at once.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import ssl
from collections.abc import Callable

from sbx.sandbox.runtime.http.exchange import Exchange, Out, Record

CHUNK = 256 * 1024
HANDSHAKE_TIMEOUT = 30.0
# A send to a peer that stopped reading gives up after this long (the connection ends).
SEND_TIMEOUT = 300.0


class Side:
    """One end of the relayed connection: a socket, with TLS over memory BIOs or not."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLObject | None = None,
                 incoming: ssl.MemoryBIO | None = None,
                 outgoing: ssl.MemoryBIO | None = None) -> None:
        # Each write here is a whole message (a handshake flight, a response part): sent at
        # once. With Nagle, a flight written in two parts waited for the peer's delayed ACK
        # (+40 ms per inspected connection in the bench).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sock = sock
        self.tls = tls
        self.incoming = incoming
        self.outgoing = outgoing
        self.eof = False

    @classmethod
    def wrap(cls, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool,
             server_hostname: str | None = None, first: bytes = b"") -> Side:
        """TLS over `sock`, handshake done; `first` is what was already read of it."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=server_side,
                           server_hostname=server_hostname)
        side = cls(sock, tls, incoming, outgoing)
        if first:
            incoming.write(first)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                side._flush()
                data = sock.recv(CHUNK)
                if not data:
                    raise ConnectionError("the peer closed during the TLS handshake") from None
                incoming.write(data)
        side._flush()
        sock.settimeout(SEND_TIMEOUT)
        return side

    def _flush(self) -> None:
        if self.outgoing is not None and self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def recv(self) -> bytes | None:
        """Plain bytes read (b"" at the end), or None when only part of a TLS record came."""
        data = self.sock.recv(CHUNK)
        if self.tls is None:
            self.eof = not data
            return data
        assert self.incoming is not None
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return self._decrypted(ended=not data)

    def buffered(self) -> bytes:
        """Plain bytes that arrived with the end of the handshake (a TLS 1.3 client sends
        its first request right behind its Finished): the socket will not signal them."""
        if self.tls is None:
            return b""
        return self._decrypted(ended=False) or b""

    def _decrypted(self, ended: bool) -> bytes | None:
        assert self.tls is not None
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        self._flush()
        self.eof = self.eof or ended
        if chunks:
            return b"".join(chunks)
        return b"" if self.eof else None

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        view = memoryview(data)
        while view:
            n = self.tls.write(view[:CHUNK])
            view = view[n:]
            self._flush()

    def end(self) -> None:
        """No more bytes to this side (TLS close_notify, then a TCP half-close)."""
        try:
            if self.tls is not None:
                try:
                    self.tls.unwrap()
                except ssl.SSLError:
                    pass
                self._flush()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _BodySplice:
    """A response body whose end the head settled, moved socket -> pipe -> socket in the
    kernel, never past that end (the next response's head is read here).

    Only for plain HTTP on both sides: h11 read the response head and its length (or that
    it runs until upstream closes), the exchange counts the body, and its bytes never need
    to enter this process.
    """

    def __init__(self) -> None:
        self.fds: tuple[int, int] | None = None

    def move(self, src: socket.socket, dst: socket.socket, limit: int) -> int | None:
        """Bytes moved (0: src ended); None when splice cannot be used here."""
        splice = getattr(os, "splice", None)
        if splice is None or src.gettimeout() is not None or dst.gettimeout() is not None:
            return None
        if self.fds is None:
            self.fds = os.pipe()
            try:
                fcntl.fcntl(self.fds[1], fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        r, w = self.fds
        try:
            n: int = splice(src.fileno(), w, min(limit, 1 << 20))
        except OSError:
            return None
        left = n
        while left:
            left -= splice(r, dst.fileno(), left)
        return n

    def close(self) -> None:
        if self.fds is not None:
            for fd in self.fds:
                os.close(fd)
            self.fds = None


def run(client: Side, upstream: Side, exchange: Exchange, on_record: Callable[[Record], None],
        counts: list[int], first: bytes = b"") -> None:
    """Relay until both sides end or the exchange closes the connection.

    `counts` ([out, in]) grows as bytes reach the far side, as in `pipe.relay`.
    """
    raw = False
    ended = {id(client): False, id(upstream): False}
    body = _BodySplice() if client.tls is None and upstream.tls is None else None

    def apply(out: Out) -> bool:
        nonlocal raw
        if out.to_upstream:
            upstream.send(out.to_upstream)
            counts[0] += len(out.to_upstream)
        if out.to_client:
            client.send(out.to_client)
            counts[1] += len(out.to_client)
        for record in out.records:
            on_record(record)
        if out.end_upstream:
            upstream.end()
        raw = raw or out.raw
        return out.close

    try:
        first += client.buffered()
        if first and apply(exchange.client_bytes(first)):
            return
        early = upstream.buffered()
        if early and apply(exchange.upstream_bytes(early)):
            return
        while not all(ended.values()):
            live = [s for s in (client, upstream) if not ended[id(s)]]
            readable, _, _ = select.select([s.sock for s in live], [], [])
            for side in live:
                if side.sock not in readable:
                    continue
                if side is upstream and body is not None and exchange.passing and not raw:
                    moved = body.move(upstream.sock, client.sock, exchange.passing)
                    if moved:
                        counts[1] += moved
                        if apply(exchange.body_passed(moved)):
                            return
                        continue
                    if moved is None:
                        body = None  # this pair cannot splice: the copy path from here on
                data = side.recv()
                if data is None:
                    continue
                if not data:
                    ended[id(side)] = True
                if raw:
                    other = upstream if side is client else client
                    if data:
                        other.send(data)
                        counts[0 if side is client else 1] += len(data)
                    else:
                        other.end()
                    continue
                out = (exchange.client_bytes(data) if side is client
                       else exchange.upstream_bytes(data))
                if apply(out):
                    return
                if not data and side is upstream:
                    return
    except (OSError, ssl.SSLError):
        pass
    finally:
        if body is not None:
            body.close()
        upstream.sock.close()
        _linger(client)


def _linger(client: Side) -> None:
    """End towards the client, then read what it still sends for a moment before closing:
    closing with unread bytes sends a reset, and a reset can destroy the 403 in flight."""
    client.end()
    try:
        client.sock.settimeout(2.0)
        left = 1 << 20
        while left > 0:
            data = client.sock.recv(65536)
            if not data:
                break
            left -= len(data)
    except OSError:
        pass
    finally:
        client.sock.close()
