"""The gateway's servers under abuse, on loopback with real sockets (no Docker): what
dnslib does not catch, idle connections, more clients than threads, unreadable proxy
requests. Each one ends in an event or an exact counter, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord

from sbx.sandbox.policy import Policy, parse_rule
from sbx.sandbox.runtime import heartbeat, limits
from sbx.sandbox.runtime.counters import COUNTERS, udp_drops
from sbx.sandbox.runtime.dns_server import Resolver, make_servers
from sbx.sandbox.runtime.gate import Gate
from sbx.sandbox.runtime.proxy import Proxy, ProxyHandler
from tests.sandbox.runtime.hellos import client_hello


class Lines:
    """Standard output shared by every thread, as the runtime's event stream."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def events(self) -> list[dict[str, Any]]:
        self.text += self.capsys.readouterr().out
        return [json.loads(x) for x in self.text.splitlines() if x.startswith("{")]


@pytest.fixture
def out(capsys: pytest.CaptureFixture[str]) -> Lines:
    return Lines(capsys)


def _gate() -> Gate:
    policy = Policy(rules=(parse_rule("allowed.test", "step.yaml:1"),))
    return Gate(step="build", policy=policy, refused=())


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The gateway's DNS servers on 127.0.0.1: 2 TCP slots, 1 s idle timeout."""
    monkeypatch.setattr(limits, "DNS_TCP_CONNECTIONS", 2)
    monkeypatch.setattr(limits, "DNS_IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(Gate, "resolve", lambda self, name, port, family=0: ["198.18.0.9"])
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    servers = make_servers(Resolver(_gate()), "127.0.0.1", port)
    for s in servers:
        s.start_thread()
    yield port
    for s in servers:
        s.stop()
        s.server.server_close()


def _pointer_chain(depth: int) -> bytes:
    """A query whose names are each a compression pointer to the one before."""
    msg = bytearray(struct.pack("!HHHHHH", 7, 0x0100, depth, 0, 0, 0))
    prev = len(msg)
    msg += b"\x01a\x00" + struct.pack("!HH", 1, 1)
    for _ in range(depth - 1):
        here = len(msg)
        msg += struct.pack("!H", 0xC000 | prev) + struct.pack("!HH", 1, 1)
        prev = here
    return bytes(msg)


def _tcp_query(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack("!H", len(payload)) + payload)
        head = s.recv(2)
        if len(head) < 2:
            return b""
        (length,) = struct.unpack("!H", head)
        data = b""
        while len(data) < length:
            chunk = s.recv(length - len(data))
            if not chunk:
                break
            data += chunk
        return data


def _wait_for(pred: Any, limit: float = 20.0) -> None:
    """Poll until `pred()` holds; the limit only bounds a broken run, it is not timing."""
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)


def test_compression_pointer_chain_is_a_recorded_denial(dns: int, out: Lines) -> None:
    """dnslib raises RecursionError (not its DNSError) on a deep pointer chain; without
    the handler's catch, socketserver prints a traceback and no event is written."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(_pointer_chain(1200), ("127.0.0.1", dns))
    _wait_for(lambda: any("compression" in e.get("reason", "") for e in out.events()))
    [event] = [e for e in out.events() if e["kind"] == "dns"]
    assert event["verdict"] == "denied" and event["violation"] is True
    # ... and the server still answers
    reply = DNSRecord.parse(_tcp_query(dns, DNSRecord.question("allowed.test").pack()))
    assert reply.header.rcode == RCODE.NOERROR and str(reply.rr[0].rdata) == "198.18.0.9"


def test_idle_tcp_clients_time_out_are_recorded_and_free_their_slots(
        dns: int, out: Lines) -> None:
    """More idle connections than slots: the extra ones are refused and counted, the
    idle ones time out with an event, and a real query is answered afterwards."""
    before = COUNTERS.snapshot().get("refused_dns_tcp", 0)
    idle = [socket.create_connection(("127.0.0.1", dns)) for _ in range(5)]
    try:
        _wait_for(lambda: COUNTERS.snapshot().get("refused_dns_tcp", 0) - before == 3)
        _wait_for(lambda: sum("no complete DNS message" in e.get("reason", "")
                              for e in out.events()) == 2)
        reply = DNSRecord.parse(_tcp_query(dns, DNSRecord.question("denied.test").pack()))
        assert reply.header.rcode == RCODE.NXDOMAIN
    finally:
        for s in idle:
            s.close()
    refusals = [e for e in out.events() if e.get("phase") == "refused"]
    assert refusals and refusals[0]["what"] == "dns_tcp"
    assert any(e.get("name") == "denied.test" for e in out.events())


def test_unreadable_proxy_requests_are_recorded(out: Lines) -> None:
    """A 400 is a denial like a 403: it leaves an event."""
    server = limits.bounded(Proxy, 4, "build", "gateway", "proxy")(("127.0.0.1", 0),
                                                                    ProxyHandler)
    server.gate, server.flows, server.flows_lock = _gate(), {}, threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for payload in (b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n", b"garbage\r\n\r\n"):
            with socket.create_connection(server.server_address, timeout=10) as s:
                s.sendall(payload)
                assert s.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        server.shutdown()
        server.server_close()
    denied = [e for e in out.events() if e["kind"] == "tcp"]
    assert len(denied) == 2 and all(e["verdict"] == "denied" for e in denied)
    assert all(e["reason"].startswith("bad request") for e in denied)


def test_refusals_are_counted_exactly_but_recorded_at_most_once_a_second(out: Lines) -> None:
    refusals = limits.Refusals("build", "agent", "unit_test", interval=3600)
    before = COUNTERS.snapshot().get("refused_unit_test", 0)
    for _ in range(1000):
        refusals.refuse("busy")
    assert COUNTERS.snapshot()["refused_unit_test"] - before == 1000
    [event] = out.events()
    assert event["phase"] == "refused" and event["refused_total"] == before + 1


def test_heartbeat_carries_the_counters(out: Lines) -> None:
    COUNTERS.add("unit_beat", 5)
    stop = heartbeat.start("gateway", "build", lambda: {"dns_socket_drops": 2},
                           interval=0.05)
    _wait_for(lambda: len(out.events()) >= 2)
    stop.set()
    beat = out.events()[0]
    assert beat["kind"] == "heartbeat" and beat["role"] == "gateway"
    assert beat["counters"]["unit_beat"] >= 5 and beat["counters"]["dns_socket_drops"] == 2


def test_udp_drops_reads_the_drops_column(tmp_path: Any) -> None:
    table = tmp_path / "udp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode ref pointer drops\n"
        "  1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2"
        " 0000000000000000 1234\n"
        "  2: 0100007F:3BC1 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2"
        " 0000000000000000 99\n")
    assert udp_drops((53,), (str(table),)) == 1234
    assert udp_drops((15297, 53), (str(table),)) == 1333


def test_a_flow_still_connecting_when_the_gateway_stops_is_recorded(
        out: Lines, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision of a flow is written when it opens; one whose upstream connect is
    still pending at SIGTERM used to leave nothing. The gateway's stop writes it."""
    from sbx.sandbox.runtime import proxy as proxy_module

    release = threading.Event()

    def slow_connect(*_args: Any, **_kwargs: Any) -> socket.socket:
        release.wait(20)
        raise OSError("gave up")

    monkeypatch.setattr(Gate, "resolve", lambda self, name, port, family=0: ["198.18.0.77"])
    policy = Policy(rules=(parse_rule("slow.test:443", "step.yaml:3"),))
    server = limits.bounded(Proxy, 4, "build", "gateway", "proxy")(("127.0.0.1", 0),
                                                                    ProxyHandler)
    server.gate = Gate(step="build", policy=policy, refused=())
    server.flows, server.flows_lock = {}, threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = socket.create_connection(server.server_address, timeout=10)
    # The module, not the test: the gateway's own upstream connect hangs from here on.
    monkeypatch.setattr(proxy_module.socket, "create_connection", slow_connect)
    try:
        # The hello follows at once: the name is decided, the upstream connect hangs.
        client.sendall(b"CONNECT slow.test:443 HTTP/1.1\r\nHost: slow.test:443\r\n\r\n"
                       + client_hello("slow.test"))
        _wait_for(lambda: any(f.waiting == "connecting upstream"
                              for f in list(server.flows.values())))
        with server.flows_lock:  # what the gateway's SIGTERM handler does
            for flow in list(server.flows.values()):
                proxy_module.emit_close(flow)
            server.flows.clear()
    finally:
        release.set()
        client.close()
        server.shutdown()
        server.server_close()
    [event] = [e for e in out.events() if e["kind"] == "tcp"]
    assert event["verdict"] == "allowed" and event["name"] == "slow.test"
    assert "stopped while it was connecting" in event["reason"] and "phase" not in event
