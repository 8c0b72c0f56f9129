"""The probes' own side, on loopback: what they send and what they count as reached."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from dnslib import RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from sbx.sandbox.runtime import probe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on loopback that records what it is sent and answers nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            seen.append(conn.recv(4096))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    thread.join(5)
    server.close()


def test_an_address_probe_sends_no_name(listener: tuple[int, list[bytes]]) -> None:
    """No Host header: the relay must ask the gateway for the address itself."""
    port, seen = listener
    result = probe.tcp("egress-raw-ip", "127.0.0.1", port, 2.0, relayed=True)
    assert seen and b"host:" not in seen[0].lower() and seen[0].startswith(b"GET / ")
    assert result["blocked"] and result["detail"] == "closed without data"
    assert result["check"]["dst_ip"] == "127.0.0.1" and result["check"]["dst_port"] == port
    assert isinstance(result["check"]["src_port"], int)


@pytest.mark.parametrize("relayed", [True, False])
def test_a_refusal_counts_as_reached(relayed: bool) -> None:
    """The relay accepts every connection: a refusal came from a real far side."""
    result = probe.tcp("x", "127.0.0.1", _free_port(), 2.0, relayed=relayed)
    assert result["blocked"] is False and result["detail"] == "connection refused"
    assert "refused" in result["reached_if"]


class _Answers(BaseResolver):  # type: ignore[misc]
    def __init__(self, address: str | None) -> None:
        self.address = address

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        if self.address is None:
            reply.header.rcode = 3
        else:
            reply.add_answer(RR(request.q.qname, rdata=A(self.address)))
        return reply


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("address", ["10.222.0.3", None], ids=["answered", "nxdomain"])
def test_the_dns_canary_is_reached_only_by_an_address(tcp: bool, address: str | None) -> None:
    port = _free_port()
    server = DNSServer(_Answers(address), address="127.0.0.1", port=port, tcp=tcp)
    server.start_thread()
    try:
        original = DNSRecord.send

        def send(self: DNSRecord, dest: str, _port: int = 53, **kw: object) -> bytes:
            return original(self, dest, port, **kw)  # the canary asks port 53; this is port
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DNSRecord, "send", send)
            result = probe.dns_canary("dns-canary", "127.0.0.1", "Canary.Example.", tcp, 2.0)
    finally:
        server.stop()
    assert result["blocked"] is (address is None)
    assert result["check"] == {"dns_name": "canary.example"}


def test_a_canary_without_any_answer_is_left_to_the_gateways_record() -> None:
    result = probe.dns_canary("dns-canary", "127.0.0.1", "c.example", False, 0.2)
    assert result["blocked"] and result["check"] == {"dns_name": "c.example"}


def test_every_probe_says_what_counted_as_reached() -> None:
    cfg = {"egress_ips": ["198.18.0.1"], "host_ips": ["10.222.0.1"], "peer_ips": ["10.222.1.2"],
           "ipv6_ips": ["fd00::1"], "proxy": "10.222.0.2:3128",
           "dns_canaries": {"udp": "a", "tcp": "b"}}
    names = [p.args[0] if p.func is not probe.proxy_internal else "proxy-internal"
             for p in probe.plan(cfg)]  # type: ignore[attr-defined]
    assert {"dns-canary-udp", "dns-canary-tcp", "egress-raw-ip", "peer-step", "peer-step-proxy",
            "proxy-internal"} <= set(names)
    assert set(probe.REACHED_IF) == {"relayed", "direct", "udp", "icmp", "proxy", "dns", "error"}


def test_no_two_probes_share_a_source_port() -> None:
    """The gateway's record is matched to a probe by source port: a port freed by the
    relay's reset and handed out again would clash in conntrack's NAT table, and the
    kernel would rewrite it (the load test saw a record with a port the probe never had)."""
    server = socket.create_server(("127.0.0.1", 0))
    ports = probe.SourcePorts()
    seen: list[int] = []
    try:
        for _ in range(600):
            with ports.socket(socket.AF_INET) as s:
                seen.append(s.getsockname()[1])
                s.connect(server.getsockname())
                conn, _ = server.accept()
                # Reset, as the relay does: the client's port is free again at once.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
    finally:
        ports.close()
        server.close()
    assert len(set(seen)) == len(seen)


def _probe_process(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sbx.sandbox.runtime.probe", "--stdin"],
                          input=stdin, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SBX_CONFIG": '{"host_ips": ["127.0.0.1"]}'})


def test_a_probe_process_started_ahead_takes_its_description_from_stdin_only() -> None:
    """Started before the runtime is ready (issue 18), the process waits for the line sbx
    sends once it is: that line, not the environment, says what to probe."""
    done = _probe_process(json.dumps({"timeout": 0.1}) + "\n")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["probes"] == [] and report["identity"]["uid"] == os.getuid()


def test_a_probe_process_whose_description_never_comes_probes_nothing() -> None:
    """sbx closes a process it will not use (a step that never got to its probes)."""
    done = _probe_process("")
    assert done.returncode == 2 and done.stdout == ""
