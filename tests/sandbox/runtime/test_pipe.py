"""pipe.relay: splice(2) relaying and its copy-loop fallback, on socketpairs and TCP.

No Docker: the relay is plain sockets. Each test checks what the gateway and the
agent rely on: every byte arrives unchanged, `counts` grows as bytes flow, a
half-close travels through, and the fallback gives the same result.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sbx.sandbox.runtime import pipe

Pair = tuple[socket.socket, socket.socket]


def _tcp_pair() -> Pair:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    return a, b


def _unix_pair() -> Pair:
    return socket.socketpair()


KINDS: dict[str, Callable[[], Pair]] = {"tcp": _tcp_pair, "socketpair": _unix_pair}


class Relayed:
    """app_client <-> [relay: client | upstream] <-> app_upstream, relay in a thread."""

    def __init__(self, make: Callable[[], Pair]) -> None:
        self.app_client, client = make()
        upstream, self.app_upstream = make()
        self.counts = [0, 0]
        self.thread = threading.Thread(target=pipe.relay, args=(client, upstream, self.counts),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.app_client.close()
        self.app_upstream.close()
        self.thread.join(timeout=10)


@pytest.fixture(params=sorted(KINDS))
def relayed(request: pytest.FixtureRequest) -> Iterator[Relayed]:
    r = Relayed(KINDS[request.param])
    yield r
    r.close()


def _payload(size: int) -> bytes:
    # Not all zeros, so a reordered or dropped block changes the digest.
    block = hashlib.sha256(b"sbx").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _send(sock: socket.socket, data: bytes, half_close: bool = True) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _read_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        chunk = sock.recv(min(1 << 20, size - got))
        assert chunk, f"closed after {got} of {size} bytes"
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def test_large_payloads_both_ways_arrive_intact_and_are_counted(relayed: Relayed) -> None:
    out, back = _payload(24 << 20), _payload(9 << 20 | 12345)[::-1]
    senders = [_send(relayed.app_client, out), _send(relayed.app_upstream, back)]
    got_up = _read_all(relayed.app_upstream)
    got_down = _read_all(relayed.app_client)
    for s in senders:
        s.join(timeout=10)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(out).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(back).digest()
    relayed.thread.join(timeout=10)
    assert not relayed.thread.is_alive()
    assert relayed.counts == [len(out), len(back)]


def test_counts_grow_while_the_flow_is_open(relayed: Relayed) -> None:
    data = _payload(3 << 20)
    sender = _send(relayed.app_client, data, half_close=False)
    assert _read_exactly(relayed.app_upstream, len(data)) == data
    sender.join(timeout=10)
    deadline = time.monotonic() + 5
    while relayed.counts[0] < len(data) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Still open both ways, and the bytes are already reported: a flow cut short by the
    # gateway's shutdown reports what went through.
    assert relayed.thread.is_alive()
    assert relayed.counts == [len(data), 0]


def test_half_close_travels_and_the_answer_still_comes_back(relayed: Relayed) -> None:
    relayed.app_client.sendall(b"request")
    relayed.app_client.shutdown(socket.SHUT_WR)
    assert _read_all(relayed.app_upstream) == b"request"  # EOF reached upstream
    relayed.app_upstream.sendall(b"answer after the client's EOF")
    relayed.app_upstream.shutdown(socket.SHUT_WR)
    assert _read_all(relayed.app_client) == b"answer after the client's EOF"
    relayed.thread.join(timeout=10)
    assert not relayed.thread.is_alive()
    assert relayed.counts == [7, len(b"answer after the client's EOF")]


def test_a_reset_ends_the_relay(relayed: Relayed) -> None:
    relayed.app_client.sendall(b"x" * 1000)
    assert _read_exactly(relayed.app_upstream, 1000) == b"x" * 1000
    pipe.reset(relayed.app_upstream)
    relayed.app_client.close()
    relayed.thread.join(timeout=10)
    assert not relayed.thread.is_alive()


def _relay_once(kind: str, size: int = 5 << 20) -> list[int]:
    r = Relayed(KINDS[kind])
    try:
        data = _payload(size)
        _send(r.app_client, data)
        _send(r.app_upstream, data[:size // 2])
        assert _read_all(r.app_upstream) == data
        assert _read_all(r.app_client) == data[:size // 2]
        r.thread.join(timeout=10)
        return r.counts
    finally:
        r.close()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_without_splice_the_copy_loop_gives_the_same_result(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipe, "_SPLICE", None)
    assert _relay_once(kind) == [5 << 20, 5 << 19]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_splice_refused_at_once_falls_back(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def refuse(*args: Any, **kwargs: Any) -> int:
        calls.append(args)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(pipe, "_SPLICE", refuse)
    assert _relay_once(kind) == [5 << 20, 5 << 19]
    assert calls, "splice was not tried"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_splice_refused_mid_stream_loses_nothing(kind: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading into the pipe works, writing out of it is refused after some blocks: what
    the pipe holds is handed over by hand, then the copy loop carries on."""
    real = os.splice
    writes = [0]

    def flaky(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if _is_socket(dst):
            writes[0] += 1
            if writes[0] > 3:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(pipe, "_SPLICE", flaky)
    assert _relay_once(kind) == [5 << 20, 5 << 19]


def _is_socket(fd: int) -> bool:
    import stat

    return stat.S_ISSOCK(os.fstat(fd).st_mode)


def test_sockets_with_a_timeout_use_the_copy_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(pipe, "_SPLICE", lambda *a, **k: calls.append(a) or 0)
    app_client, client = _tcp_pair()
    upstream, app_upstream = _tcp_pair()
    client.settimeout(5)
    upstream.settimeout(5)
    counts = [0, 0]
    t = threading.Thread(target=pipe.relay, args=(client, upstream, counts), daemon=True)
    t.start()
    try:
        app_client.sendall(b"hello")
        app_client.shutdown(socket.SHUT_WR)
        assert _read_all(app_upstream) == b"hello"
        app_upstream.close()
        t.join(timeout=10)
        assert counts == [5, 0]
        assert not calls
    finally:
        app_client.close()
        app_upstream.close()


@pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice needs Linux and Python 3.10")
def test_splice_is_really_used_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.splice
    calls = [0]

    def spy(*args: Any, **kwargs: Any) -> int:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, "_SPLICE", spy)
    assert _relay_once("tcp") == [5 << 20, 5 << 19]
    assert calls[0] > 0
