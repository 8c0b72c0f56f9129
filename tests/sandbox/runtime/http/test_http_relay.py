"""The request checker's socket loop on real TCP sockets: response bodies spliced in the
kernel for exactly their length, every request still judged and recorded exactly.

No Docker: client <-> [relay.run in a thread] <-> a scripted upstream, on loopback.
`os.splice` is wrapped to see that the bulk of a body really took the kernel path.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sbx.sandbox.policy import Policy, parse_rule
from sbx.sandbox.runtime.http.exchange import Exchange, Record
from sbx.sandbox.runtime.http.judge import Judge
from sbx.sandbox.runtime.http.relay import Side, run

HOST = "files.example"
BIG = 3 * 1024 * 1024 + 17  # far more than one read or one pipe: most of it is spliced

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux-only")


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    a.settimeout(None)
    b.settimeout(None)
    return a, b


def get(path: str, host: str = HOST) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def body(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


class Relayed:
    """The app's client and upstream sockets around `relay.run` running in a thread."""

    def __init__(self) -> None:
        self.client, gw_client = _pair()
        gw_upstream, self.upstream = _pair()
        self.records: list[Record] = []
        self.counts = [0, 0]
        policy = Policy(mode="enforce", rules=(parse_rule(f"{HOST}:80", "step.yaml:3"),))
        self.thread = threading.Thread(target=run, args=(
            Side(gw_client), Side(gw_upstream), Exchange(Judge(policy, HOST, 80)),
            self.records.append, self.counts), daemon=True)
        self.thread.start()

    def upstream_reads(self, until: bytes) -> bytes:
        """What upstream receives, up to and including `until`."""
        got = b""
        while until not in got:
            chunk = self.upstream.recv(65536)
            assert chunk, f"upstream saw the end after {got!r}"
            got += chunk
        return got

    def client_reads_all(self) -> bytes:
        chunks = []
        while chunk := self.client.recv(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.client.close()
        self.upstream.close()
        self.thread.join(timeout=10)


@pytest.fixture
def relayed() -> Iterator[Relayed]:
    r = Relayed()
    yield r
    r.close()


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes os.splice moved out of sockets into pipes (the bodies' kernel path)."""
    moved: list[int] = []
    real: Callable[..., int] = os.splice

    def counting(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        n = real(src, dst, count, *args, **kwargs)
        if not _is_pipe(src):
            moved.append(n)
        return n

    monkeypatch.setattr(os, "splice", counting)
    return moved


def _is_pipe(fd: int) -> bool:
    import stat
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def test_a_spliced_body_stops_at_its_length_and_the_next_pipelined_response_is_read(
        relayed: Relayed, spliced: list[int]) -> None:
    relayed.client.sendall(get("/a") + get("/b"))
    assert relayed.upstream_reads(b"GET /b").count(b"GET ") == 2
    first = f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode() + body(BIG)
    # The second head follows the body's last byte in the same write: a splice past the
    # length would carry it to the client unread, and /b would never be recorded.
    second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing"
    relayed.upstream.sendall(first + second)
    relayed.upstream.shutdown(socket.SHUT_WR)
    assert relayed.client_reads_all() == first + second
    relayed.client.close()
    relayed.thread.join(timeout=10)
    assert [(r.verdict.path, r.status, r.bytes_in) for r in relayed.records] == [
        ("/a", 200, BIG), ("/b", 404, 7)]
    assert sum(spliced) > BIG // 2, "the body did not take the kernel path"
    assert relayed.counts[1] == len(first + second)


def test_a_request_refused_behind_a_spliced_body_gets_its_403_after_it(
        relayed: Relayed, spliced: list[int]) -> None:
    relayed.client.sendall(get("/a") + get("/", "denied.example") + get("/c"))
    got = relayed.upstream_reads(b"GET /a")
    first = f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode() + body(BIG)
    relayed.upstream.sendall(first)
    answer = relayed.client_reads_all()
    assert answer.startswith(first)
    assert answer[len(first):].startswith(b"HTTP/1.1 403 ")
    relayed.client.close()
    relayed.thread.join(timeout=10)
    relayed.upstream.settimeout(5)
    got += relayed.upstream.recv(65536)  # the end: nothing of the refused ones arrived
    assert b"denied.example" not in got and b"GET /c" not in got
    assert [(r.verdict.verdict, r.bytes_in) for r in relayed.records] == [
        ("allowed", BIG), ("denied", 0)]
    assert sum(spliced) > BIG // 2


def test_a_body_until_close_is_spliced_and_recorded_exactly_at_the_end(
        relayed: Relayed, spliced: list[int]) -> None:
    relayed.client.sendall(b"GET /a HTTP/1.0\r\nHost: files.example\r\n\r\n")
    relayed.upstream_reads(b"GET /a")
    # HTTP/1.0 without Content-Length: the body is what comes before upstream closes,
    # including bytes that look like another response.
    response = (b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
                + body(BIG) + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    relayed.upstream.sendall(response)
    relayed.upstream.close()
    assert relayed.client_reads_all() == response
    relayed.client.close()
    relayed.thread.join(timeout=10)
    [record] = relayed.records
    assert (record.status, record.bytes_in) == (200, BIG + len(b"HTTP/1.1 200 OK\r\n"
                                                              b"Content-Length: 2\r\n\r\nok"))
    assert sum(spliced) > BIG // 2, "the body did not take the kernel path"
