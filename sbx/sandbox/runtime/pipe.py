"""Byte relaying between two sockets, shared by the gateway and the agent."""

from __future__ import annotations

import socket
import struct
import threading

_CHUNK = 256 * 1024


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset so the peer sees a refusal, not a clean end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _pump(src: socket.socket, dst: socket.socket, counts: list[int], index: int) -> None:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if n == 0:
                break
            dst.sendall(view[:n])
            counts[index] += n
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
    t = threading.Thread(target=_pump, args=(upstream, client, counts, 1), daemon=True)
    t.start()
    _pump(client, upstream, counts, 0)
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
