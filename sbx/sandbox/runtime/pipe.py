"""Byte relaying between two sockets, shared by the gateway and the agent.

On Linux the bytes go socket -> pipe -> socket with splice(2), so they stay in the
kernel: no copy into Python and back. Where splice is missing or refuses a socket
(another kernel, a socket with a timeout), the same loop runs with recv_into and
sendall. Either way `counts` grows as bytes reach the far side.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import threading

_CHUNK = 256 * 1024
# A larger pipe moves more per splice call; 1 MiB is the unprivileged maximum by default.
_PIPE_SIZE = 1 << 20
_SPLICE = getattr(os, "splice", None)
# Not SPLICE_F_MORE: it corks the socket like MSG_MORE and would hold back the last small
# segment of an interactive exchange (a TLS handshake, a request).
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0)
# splice refusing this pair of files (not a broken connection): use the copy loop.
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                          errno.EAGAIN})


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset so the peer sees a refusal, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _copy(src: socket.socket, dst: socket.socket, counts: list[int], index: int) -> None:
    """The portable loop: through a buffer in this process."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = src.recv_into(buf)
        if n == 0:
            return
        dst.sendall(view[:n])
        counts[index] += n


def _splice(src: socket.socket, dst: socket.socket, counts: list[int], index: int) -> bool:
    """Relay through a pipe with splice(2) until EOF; False if splice cannot be used
    before anything moved (then the caller copies instead)."""
    if _SPLICE is None or src.gettimeout() is not None or dst.gettimeout() is not None:
        return False  # a socket with a timeout is non-blocking underneath: splice would spin
    splice = _SPLICE
    r, w = os.pipe()
    try:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB pipe still works, only in smaller steps
        moved = False
        src_fd, dst_fd = src.fileno(), dst.fileno()
        while True:
            try:
                n = splice(src_fd, w, _PIPE_SIZE, flags=_SPLICE_FLAGS)
            except OSError as exc:
                if not moved and exc.errno in _UNSUPPORTED:
                    return False
                raise
            if n == 0:
                return True
            left = n
            while left:
                try:
                    m = splice(r, dst_fd, left, flags=_SPLICE_FLAGS)
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    # splice cannot write to this socket: hand over what the pipe holds,
                    # then go on with the copy loop.
                    while left:
                        chunk = os.read(r, left)
                        dst.sendall(chunk)
                        left -= len(chunk)
                        counts[index] += len(chunk)
                    _copy(src, dst, counts, index)
                    return True
                left -= m
                counts[index] += m
                moved = True
    finally:
        os.close(r)
        os.close(w)


def pump(src: socket.socket, dst: socket.socket, counts: list[int], index: int) -> None:
    """Copy `src` to `dst` until `src` ends (then shut `dst`'s sending side)."""
    try:
        if not _splice(src, dst, counts, index):
            _copy(src, dst, counts, index)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(client: socket.socket, upstream: socket.socket, counts: list[int] | None = None) -> None:
    """Copy both ways until both directions end.

    `counts` ([out, in]) is updated live so a flow cut short by shutdown still
    reports its bytes; "out" is client to upstream, the way exfiltration goes.
    """
    counts = counts if counts is not None else [0, 0]
    for sock in (client, upstream):
        # Bytes are relayed as they come: coalescing gains nothing, and with Nagle a
        # second small write (a TLS flight after a ticket, a response after its head)
        # waits for the far side's delayed ACK, 40 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    t = threading.Thread(target=pump, args=(upstream, client, counts, 1), daemon=True)
    t.start()
    pump(client, upstream, counts, 0)
    t.join()
    client.close()
    upstream.close()


def read_head(sock: socket.socket, limit: int = 16 * 1024) -> tuple[bytes, bytes]:
    """Read an HTTP head; returns (head without the blank line, bytes after it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > limit:
            raise ValueError("request head too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("connection closed before the request head ended")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest
