"""DNS from inside a step: the embedded resolver, direct resolvers, DNS over TCP, TLS
and HTTPS, exfiltration in long or encoded names, non-DNS traffic on port 53, and
name-matching tricks (`web.sbx.test.evil`, `evilweb.sbx.test`, case, trailing dots).

Denied names get NXDOMAIN (or nothing) and a `denied` event naming them; spellings
of the allowed name are that name, the same way for DNS, CONNECT, Host and SNI.
The unit tests at the end pin the gateway fixes these attacks led to.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from types import SimpleNamespace
from typing import Any

import docker
import pytest
from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord
from dnslib.server import DNSServer

from sbx.sandbox.policy import Policy, parse_rule
from sbx.sandbox.runtime.dns_server import QuietLogger, Resolver
from sbx.sandbox.runtime.gate import Gate
from tests.conftest import Internet
from tests.redteam import netattacks as na
from tests.redteam.batches import Batch, net_batch

NAMES = [n.name for n in na.dns("198.18.0.10", "198.18.0.20")]
COVERS = frozenset(NAMES)


@pytest.fixture
def batch(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return net_batch(internet, docker_client, sbx_images[1], tmp_path_factory)


@pytest.mark.docker
@pytest.mark.parametrize("name", NAMES)
def test_dns_attack_is_blocked_and_recorded(batch: Batch, name: str) -> None:
    assert batch.judge(name) == []


@pytest.mark.docker
def test_denied_names_are_decided_alike_by_dns_connect_and_host(batch: Batch) -> None:
    """The same spelling gets the same verdict whichever way the step asks."""
    for trick in ("name-suffix-appended", "name-prefix"):
        verdicts = {k: batch.results[k]["reached"] for k in batch.results if trick in k}
        assert len(verdicts) >= 2 and not any(verdicts.values()), verdicts
    allowed = {k: batch.results[k]["reached"] for k in batch.results if "name-case" in k
               or "trailing-dot" in k}
    assert len(allowed) == 5 and all(allowed.values()), allowed
    assert batch.sink_seen == [], "a DNS attack reached the sink"


# --------------------------------------------------------------------------- gateway unit tests


def _gate(*rules: str) -> Gate:
    policy = Policy(rules=tuple(parse_rule(r, "step.yaml:1") for r in rules))
    return Gate(step="build", policy=policy, refused=())


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_two_questions_get_formerr_and_a_denied_event(
        capsys: pytest.CaptureFixture[str]) -> None:
    gate = _gate("example.com")
    query = DNSRecord.question("example.com")
    query.add_question(DNSQuestion("secret.exfil.example.org", QTYPE.A))
    handler = SimpleNamespace(client_address=("10.222.0.3", 4000))
    reply = Resolver(gate).resolve(query, handler)
    assert reply.header.rcode == RCODE.FORMERR and reply.rr == []
    [event] = _events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and "2 questions" in event["reason"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("payload", [b"\x00", b"not dns at all, a tunnel" * 3,
                                     DNSRecord.question("example.com").pack()[:-3]],
                         ids=["one-byte", "text", "truncated-question"])
def test_a_message_that_is_not_dns_is_recorded(
        capsys: pytest.CaptureFixture[str], tcp: bool, payload: bytes) -> None:
    """Sent for real to the gateway's DNS servers (dnslib's, with the gateway's logger),
    as any datagram or stream to port 53 from a step ends up there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = DNSServer(Resolver(_gate("example.com")), address="127.0.0.1", port=port,
                       tcp=tcp, logger=QuietLogger("build"))
    server.start_thread()
    try:
        if tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(struct.pack("!H", len(payload)) + payload)
                s.shutdown(socket.SHUT_WR)
                s.recv(512)  # the server closes it: the message was read and refused
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(payload, ("127.0.0.1", port))
        deadline = time.monotonic() + 30  # a hang guard: returns on the first event
        out = ""
        while time.monotonic() < deadline and '"malformed' not in out:
            out += capsys.readouterr().out
            time.sleep(0.02)
    finally:
        server.stop()
    [event] = _events(out)
    assert event["kind"] == "dns" and event["verdict"] == "denied"
    assert "malformed" in event["reason"] and event["src_ip"] == "127.0.0.1"
    assert event["violation"] is True


def test_allowed_name_with_only_internal_addresses_is_a_denied_dns_event(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _gate("internal.example.com", "mixed.example.com")
    table = {"internal.example.com": ["10.1.2.3", "169.254.169.254"],
             "mixed.example.com": ["198.51.100.9", "127.0.0.1"]}
    monkeypatch.setattr(Gate, "resolve", lambda self, name, port, family=0: table[name])
    handler = SimpleNamespace(client_address=("10.222.0.3", 4000))
    for name in table:
        Resolver(gate).resolve(DNSRecord.question(name), handler)
    internal, mixed = _events(capsys.readouterr().out)
    assert internal["verdict"] == "denied" and "internal" in internal["reason"]
    assert internal["withheld"] == ["10.1.2.3", "169.254.169.254"] and internal["answers"] == []
    assert mixed["verdict"] == "allowed" and mixed["answers"] == ["198.51.100.9"]
    assert mixed["withheld"] == ["127.0.0.1"]
