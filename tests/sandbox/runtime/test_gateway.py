"""The gateway's decisions, DNS answers and proxy handling, with a fake resolver.

No Docker and no network: `Gate.resolve` is replaced by a table, and the proxy
handler talks over socket pairs with `socket.create_connection` replaced.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from sbx.sandbox.policy import Policy, parse_rule
from sbx.sandbox.runtime.dns_server import Resolver
from sbx.sandbox.runtime.gate import Gate, Network
from sbx.sandbox.runtime.proxy import ProxyHandler, _split_host_port
from tests.sandbox.runtime.hellos import client_hello

PUBLIC = "198.51.100.7"
PUBLIC6 = "2001:db8::7"
CLIENT_CHOSEN = "203.0.113.66"

ZONE: dict[str, list[str]] = {
    "example.com": [PUBLIC, PUBLIC6],
    "api.example.com": ["198.51.100.8"],
    "mixed.example.com": ["10.1.2.3", "198.51.100.9"],
    "internal.example.com": ["10.1.2.3", "127.0.0.1", "169.254.169.254"],
    "metadata.example.com": ["169.254.169.254"],
    "unlisted.example.org": ["198.51.100.50"],
    "private.example.com": ["10.0.0.9"],
    "gateway-self.example.com": ["10.0.0.2"],
}


@dataclass
class FakeDNS:
    """Stands in for `Gate.resolve`: a fixed zone, and a record of every lookup."""

    zone: dict[str, list[str]]
    calls: list[tuple[str, int | None, int]] = field(default_factory=list)

    def lookup(self, name: str, port: int | None, family: int = 0) -> list[str]:
        self.calls.append((name, port, family))
        if name not in self.zone:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found = self.zone[name]
        if family == socket.AF_INET:
            return [ip for ip in found if ipaddress.ip_address(ip).version == 4]
        if family == socket.AF_INET6:
            return [ip for ip in found if ipaddress.ip_address(ip).version == 6]
        return list(found)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(ZONE)

    def resolve(_gate: Gate, name: str, port: int | None, family: int = 0) -> list[str]:
        return fake.lookup(name, port, family)

    monkeypatch.setattr(Gate, "resolve", resolve)
    return fake


GateFactory = Callable[..., Gate]


@pytest.fixture
def make_gate(dns: FakeDNS) -> GateFactory:
    def make(*allow: str, mode: str = "enforce", refused: tuple[str, ...] = ()) -> Gate:
        rules = tuple(parse_rule(text, f"step.yaml:{i + 10}") for i, text in enumerate(allow))
        nets: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in refused)
        return Gate(step="build", policy=Policy(mode=mode, rules=rules), refused=nets,
                    relay_token="relay-secret")

    return make


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line]


# --------------------------------------------------------------------------- names


def test_allowed_name_connects_to_the_gateways_own_resolution(
    make_gate: GateFactory, dns: FakeDNS
) -> None:
    gate = make_gate("example.com:443")
    decision = gate.decide_name("example.com", 443)
    assert decision.verdict == "allowed" and decision.passes
    assert decision.addresses == (PUBLIC, PUBLIC6)
    assert decision.rule is not None and decision.rule.source == "step.yaml:10"
    assert dns.calls == [("example.com", 443, 0)]


def test_allowed_name_is_case_and_trailing_dot_insensitive(make_gate: GateFactory) -> None:
    gate = make_gate("example.com")
    assert gate.decide_name("EXAMPLE.com.", 443).addresses == (PUBLIC, PUBLIC6)


def test_allowed_name_on_another_port_is_denied(make_gate: GateFactory, dns: FakeDNS) -> None:
    gate = make_gate("example.com:443")
    decision = gate.decide_name("example.com", 22)
    assert decision.verdict == "denied" and not decision.passes
    assert dns.calls == []


def test_wildcard_rule_allows_subdomains_only(make_gate: GateFactory) -> None:
    gate = make_gate("*.example.com")
    assert gate.decide_name("api.example.com", 443).verdict == "allowed"
    assert gate.decide_name("example.com", 443).verdict == "denied"


def test_denied_name_is_not_even_resolved(make_gate: GateFactory, dns: FakeDNS) -> None:
    gate = make_gate("example.com")
    decision = gate.decide_name("unlisted.example.org", 443)
    assert decision.verdict == "denied"
    assert "no rule" in decision.reason and "unlisted.example.org" in decision.reason
    assert decision.addresses == ()
    assert dns.calls == [], "a denied name must cause no upstream lookup"


def test_internal_answers_are_dropped_from_an_allowed_name(make_gate: GateFactory) -> None:
    gate = make_gate("mixed.example.com")
    assert gate.decide_name("mixed.example.com", 443).addresses == ("198.51.100.9",)


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize(
    "name", ["internal.example.com", "metadata.example.com", "private.example.com"]
)
def test_name_resolving_only_to_internal_addresses_is_denied_in_every_mode(
    make_gate: GateFactory, name: str, mode: str
) -> None:
    gate = make_gate(name, mode=mode)
    decision = gate.decide_name(name, 443)
    assert decision.verdict == "denied" and not decision.passes
    assert "internal" in decision.reason
    assert decision.addresses == ()


def test_unlisted_name_in_audit_mode_passes_as_audit(make_gate: GateFactory) -> None:
    gate = make_gate("example.com", mode="audit")
    decision = gate.decide_name("unlisted.example.org", 443)
    assert decision.verdict == "audit" and decision.passes
    assert decision.rule is None
    assert decision.addresses == ("198.51.100.50",)


def test_allowed_name_that_does_not_resolve_fails(make_gate: GateFactory) -> None:
    gate = make_gate("nxdomain.example.com")
    decision = gate.decide_name("nxdomain.example.com", 443)
    assert decision.verdict == "failed" and not decision.passes


@pytest.mark.parametrize("mode", ["enforce", "audit"])
@pytest.mark.parametrize(
    "raw",
    [
        "exa mple.com",
        "example.com\r\nHost: evil.example",
        "example.com\n",
        "",
        "a..b",
        "-x.example.com",
        "x" * 64 + ".example.com",
    ],
)
def test_invalid_names_are_denied_without_lookup(
    make_gate: GateFactory, dns: FakeDNS, raw: str, mode: str
) -> None:
    gate = make_gate("example.com", "*.example.com", mode=mode)
    decision = gate.decide_name(raw, 443)
    assert decision.verdict == "denied"
    assert decision.reason.startswith("invalid name")
    assert dns.calls == []


# --------------------------------------------------------------------------- raw addresses


def test_raw_ip_without_rule_is_denied(make_gate: GateFactory) -> None:
    gate = make_gate("example.com")
    decision = gate.decide_name(PUBLIC, 443)
    assert decision.verdict == "denied" and "no rule" in decision.reason


def test_an_address_an_allowed_name_resolves_to_is_not_allowed_by_address(
    make_gate: GateFactory,
) -> None:
    """A shared address (a CDN) serves other tenants: only the name in the connection's
    first bytes can allow it, so the address alone leaves the decision to them."""
    gate = make_gate("example.com:443")
    assert gate.decide_address(PUBLIC, 443) is None
    decision = gate.decide_ip(PUBLIC, 443)
    assert decision.verdict == "denied" and not decision.internal


def test_a_port_no_name_rule_covers_is_refused_without_waiting_for_bytes(
    make_gate: GateFactory,
) -> None:
    decision = make_gate("example.com:443").decide_address(PUBLIC, 22)
    assert decision is not None and decision.verdict == "denied"


def test_a_nameless_rule_allows_the_addresses_its_host_resolves_to_now(
    make_gate: GateFactory,
) -> None:
    rules = (parse_rule("example.com:22", "step.yaml:3", nameless=True),)
    gate = Gate(step="build", policy=Policy(rules=rules), refused=())
    decision = gate.decide_address(PUBLIC, 22)
    assert decision is not None and decision.verdict == "allowed" and decision.nameless
    assert decision.addresses == (PUBLIC,)
    assert gate.decide_ip("198.51.100.99", 22).verdict == "denied"
    assert gate.decide_ip(PUBLIC, 2222).verdict == "denied"


def test_bracketed_ipv6_target_is_judged_as_an_address(make_gate: GateFactory) -> None:
    gate = make_gate("[2001:db8::/32]:443")
    assert gate.decide_name(f"[{PUBLIC6}]", 443).verdict == "allowed"
    assert gate.decide_name(f"[{PUBLIC6}]", 80).verdict == "denied"


def test_ip_rule_allows_public_address_on_its_port(make_gate: GateFactory) -> None:
    gate = make_gate("198.51.100.0/24:22")
    assert gate.decide_ip(PUBLIC, 22).verdict == "allowed"
    assert gate.decide_ip(PUBLIC, 23).verdict == "denied"


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "127.0.0.1",
        "169.254.169.254",
        "192.168.1.1",
        "172.17.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
    ],
)
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_internal_addresses_without_an_ip_rule_are_denied_in_every_mode(
    make_gate: GateFactory, ip: str, mode: str
) -> None:
    gate = make_gate("example.com", mode=mode)
    decision = gate.decide_ip(ip, 443)
    assert decision.verdict == "denied" and "internal" in decision.reason


def test_cidr_rule_allows_a_private_address_explicitly(make_gate: GateFactory) -> None:
    gate = make_gate("10.0.0.0/8:5432")
    assert gate.decide_ip("10.20.30.40", 5432).verdict == "allowed"
    assert gate.decide_ip("10.20.30.40", 5433).verdict == "denied"
    assert gate.decide_ip("192.168.0.1", 5432).verdict == "denied"


def test_cidr_rule_also_lets_an_allowed_name_use_its_private_address(
    make_gate: GateFactory,
) -> None:
    gate = make_gate("private.example.com", "10.0.0.0/8")
    assert gate.decide_name("private.example.com", 443).addresses == ("10.0.0.9",)


@pytest.mark.parametrize("ip", ["10.0.0.2", "10.0.0.1"])
def test_refused_addresses_stay_refused_under_a_covering_cidr_rule(
    make_gate: GateFactory, ip: str
) -> None:
    gate = make_gate(
        "10.0.0.0/8", "gateway-self.example.com", refused=("10.0.0.2/32", "10.0.0.1/32")
    )
    decision = gate.decide_ip(ip, 80)
    assert decision.verdict == "denied"
    assert gate.decide_ip("10.0.0.3", 80).verdict == "allowed"
    assert gate.decide_name("gateway-self.example.com", 80).verdict == "denied"


def test_refused_addresses_stay_refused_in_audit_mode(make_gate: GateFactory) -> None:
    gate = make_gate(mode="audit", refused=("198.51.100.0/24",))
    assert gate.decide_ip(PUBLIC, 443).verdict == "denied"


def test_refused_address_spelled_ipv4_mapped_is_still_refused(make_gate: GateFactory) -> None:
    gate = make_gate("10.0.0.0/8", refused=("10.0.0.2/32",))
    assert gate.decide_name("[::ffff:10.0.0.2]", 80).verdict == "denied"


def test_audit_mode_passes_unlisted_public_addresses_as_audit(make_gate: GateFactory) -> None:
    gate = make_gate("example.com", mode="audit")
    decision = gate.decide_ip(PUBLIC, 22)
    assert decision.verdict == "audit" and decision.passes
    assert decision.addresses == (PUBLIC,)


# --------------------------------------------------------------------------- host:port


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("example.com", ("example.com", 443)),
        ("example.com:8443", ("example.com", 8443)),
        ("example.com:", ("example.com", 443)),
        ("198.51.100.7:22", ("198.51.100.7", 22)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("[2001:db8::1]", ("2001:db8::1", 443)),
        ("2001:db8::1", ("2001:db8::1", 443)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_split_host_port(target: str, expected: tuple[str, int]) -> None:
    assert _split_host_port(target, 443) == expected


def test_split_host_port_refuses_a_non_numeric_port() -> None:
    with pytest.raises(ValueError):
        _split_host_port("example.com:https", 443)


# --------------------------------------------------------------------------- DNS


def ask(gate: Gate, name: str, qtype: str = "A") -> DNSRecord:
    handler = SimpleNamespace(client_address=("172.30.0.3", 40000))
    reply: DNSRecord = Resolver(gate).resolve(DNSRecord.question(name, qtype), handler)
    return reply


def answers(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


def test_dns_denied_name_gets_nxdomain_and_is_never_looked_up(
    make_gate: GateFactory, dns: FakeDNS, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com")
    reply = ask(gate, "unlisted.example.org")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert reply.rr == []
    assert dns.calls == [], "a denied name must never be forwarded upstream"
    [event] = events(capsys.readouterr().out)
    assert event["kind"] == "dns" and event["verdict"] == "denied"
    assert event["name"] == "unlisted.example.org" and event["violation"] is True
    assert event["step"] == "build" and event["src_ip"] == "172.30.0.3"
    assert event["qtype"] == "A" and "time" in event


def test_dns_allowed_name_gets_its_public_a_records(
    make_gate: GateFactory, dns: FakeDNS, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com:443")
    reply = ask(gate, "Example.COM.")
    assert reply.header.rcode == RCODE.NOERROR
    assert answers(reply) == [PUBLIC]
    assert all(rr.rtype == QTYPE.A for rr in reply.rr)
    assert dns.calls == [("example.com", None, socket.AF_INET)]
    [event] = events(capsys.readouterr().out)
    assert event["verdict"] == "allowed" and event["answers"] == [PUBLIC]
    assert event["rule"] == "example.com:443" and event["rule_source"] == "step.yaml:10"
    assert "violation" not in event


def test_dns_aaaa_gets_ipv6_records(make_gate: GateFactory) -> None:
    reply = ask(make_gate("example.com"), "example.com", "AAAA")
    assert answers(reply) == [PUBLIC6]


def test_dns_filters_internal_answers(
    make_gate: GateFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("mixed.example.com", "internal.example.com")
    assert answers(ask(gate, "mixed.example.com")) == ["198.51.100.9"]
    assert answers(ask(gate, "internal.example.com")) == []
    logged = events(capsys.readouterr().out)
    assert [e["answers"] for e in logged] == [["198.51.100.9"], []]


def test_a_dns_answer_never_allows_its_address_later(make_gate: GateFactory) -> None:
    """The old `answered` map let any connection to an answered address through, TTL
    ignored: CONNECT <ip>, a silent client, a hello the relay could not read."""
    gate = make_gate("api.example.com:443")
    ask(gate, "api.example.com")
    assert gate.decide_address("198.51.100.8", 443) is None
    assert gate.decide_ip("198.51.100.8", 443).verdict == "denied"


def test_dns_audit_mode_answers_but_records_a_violation_and_remembers_nothing(
    make_gate: GateFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com", mode="audit")
    reply = ask(gate, "unlisted.example.org")
    assert answers(reply) == ["198.51.100.50"]
    [event] = events(capsys.readouterr().out)
    assert event["verdict"] == "audit" and event["violation"] is True


def test_dns_invalid_name_is_nxdomain_without_lookup(
    make_gate: GateFactory, dns: FakeDNS, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("*.example.com", mode="audit")
    reply = ask(gate, "bad name.example.com")
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert dns.calls == []
    [event] = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and event["reason"].startswith("invalid name")


def test_dns_allowed_name_that_does_not_exist_is_nxdomain(make_gate: GateFactory) -> None:
    reply = ask(make_gate("nxdomain.example.com"), "nxdomain.example.com")
    assert reply.header.rcode == RCODE.NXDOMAIN


# --------------------------------------------------------------------------- proxy handler


@dataclass
class Upstream:
    """Replaces socket.create_connection: records where the gateway connected."""

    connected: list[tuple[str, int]] = field(default_factory=list)
    far: list[socket.socket] = field(default_factory=list)

    def __call__(self, address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        self.connected.append(address)
        near, far = socket.socketpair()
        self.far.append(far)
        return near


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    fake = Upstream()
    monkeypatch.setattr(socket, "create_connection", fake)
    yield fake
    for sock in fake.far:
        sock.close()


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def proxy(
    gate: Gate, request: bytes, upstream: Upstream
) -> tuple[bytes, bytes, list[BaseException]]:
    """Run one proxy connection; returns (what the client got, what upstream got, errors)."""
    client, served = socket.socketpair()
    server = SimpleNamespace(gate=gate, flows={}, flows_lock=threading.Lock(), inspection=None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ProxyHandler(served, ("172.30.0.3", 40000), server)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client.sendall(request)
    client.shutdown(socket.SHUT_WR)
    sent_up = b""
    # Upstream sees the forwarded bytes, then the client's end of stream.
    for _ in range(50):
        if upstream.far:
            sent_up = _read_all(upstream.far[0])
            upstream.far[0].sendall(b"pong")
            upstream.far[0].close()
            break
        thread.join(0.1)
        if not thread.is_alive():
            break
    thread.join(5)
    assert not thread.is_alive(), "the proxy handler did not finish"
    served.close()
    got = _read_all(client)
    client.close()
    return got, sent_up, errors


def relayed(dst: str, first: bytes, src_port: int = 51234) -> bytes:
    """What the agent sends for a connection to `dst`, then the client's first bytes."""
    return (f"CONNECT {dst} HTTP/1.1\r\nHost: {dst}\r\nX-Sbx-Orig-Src-Port: {src_port}\r\n"
            "X-Sbx-Relay: relay-secret\r\n\r\n").encode() + first


def test_a_relayed_connection_goes_to_the_resolution_of_the_name_its_hello_carries(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com:443")
    hello = client_hello("example.com")
    got, sent_up, errors = proxy(gate, relayed(f"{CLIENT_CHOSEN}:443", hello), upstream)
    assert errors == []
    assert upstream.connected == [(PUBLIC, 443)]
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"pong")
    assert sent_up == hello
    opened, closed = events(capsys.readouterr().out)
    assert opened["phase"] == "open" and opened["connected_ip"] == PUBLIC
    assert opened["dst_ip"] == CLIENT_CHOSEN and opened["via"] == "relay"
    assert (opened["name"], opened["name_from"], opened["src_port"]) == (
        "example.com", "sni", 51234)
    assert closed["phase"] == "close"
    assert (closed["bytes_out"], closed["bytes_in"]) == (len(hello), 4)


@pytest.mark.parametrize("via", ["relay", "connect-ip"])
@pytest.mark.parametrize("first", [
    client_hello("denied.example"), client_hello(None),
    b"GET / HTTP/1.1\r\nHost: denied.example\r\n\r\n",
    b"GET / HTTP/1.1\nHost: example.com\nHost: denied.example\n\n",
    b"FOO / HTTP/1.1\r\nHost: denied.example\r\n\r\n",
    b"SSH-2.0-x\r\n", b""],
    ids=["sni-denied", "no-sni", "host-denied", "bare-lf", "unknown-method", "ssh", "silent"])
def test_an_address_of_an_allowed_name_with_first_bytes_naming_nothing_allowed_is_refused(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str],
    first: bytes, via: str,
) -> None:
    """The issue's nameless paths: the address is example.com's, the bytes name another
    tenant or nothing. Nothing reaches upstream and the refusal is on record."""
    gate = make_gate("example.com:443")
    if via == "relay":
        request = relayed(f"{PUBLIC}:443", first)
    else:
        request = f"CONNECT {PUBLIC}:443 HTTP/1.1\r\nHost: {PUBLIC}:443\r\n\r\n".encode() + first
    got, _, errors = proxy(gate, request, upstream)
    assert errors == []
    assert upstream.connected == []
    assert b"pong" not in got
    (event,) = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and event["violation"] is True
    assert event["dst_ip"] == PUBLIC and event.get("rule") is None


def test_connect_to_an_allowed_name_with_another_name_inside_is_refused(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com:443", "api.example.com:443")
    got, _, _ = proxy(gate, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                      b"\r\n" + client_hello("api.example.com"), upstream)
    assert got.startswith(b"HTTP/1.1 200") and upstream.connected == []
    (event,) = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and "inside CONNECT" in event["reason"]


def test_connect_to_an_allowed_name_carrying_a_protocol_without_names_goes_to_its_resolution(
    make_gate: GateFactory, upstream: Upstream
) -> None:
    gate = make_gate("example.com:22")
    _, sent_up, _ = proxy(gate, b"CONNECT example.com:22 HTTP/1.1\r\nHost: example.com:22"
                            b"\r\n\r\nSSH-2.0-x\r\n", upstream)
    assert upstream.connected == [(PUBLIC, 22)] and sent_up == b"SSH-2.0-x\r\n"


def test_a_relayed_internal_address_is_refused_before_any_byte(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probes' peer check: the record must come at once, the client sends nothing."""
    client, served = socket.socketpair()
    server = SimpleNamespace(gate=make_gate("example.com:80"), flows={},
                             flows_lock=threading.Lock(), inspection=None)
    client.sendall(relayed("10.9.9.9:80", b""))  # and nothing more, connection kept open
    thread = threading.Thread(target=ProxyHandler, args=(served, ("172.30.0.3", 40000), server),
                              daemon=True)
    thread.start()
    client.settimeout(5)
    assert client.recv(64).startswith(b"HTTP/1.1 403")
    (event,) = events(capsys.readouterr().out)
    assert event["internal"] is True and event["src_port"] == 51234
    client.close()
    thread.join(5)


def test_refusals_tell_the_step_only_denied_by_policy(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 403 once said "resolves only to internal addresses [10.1.2.3, ...]"."""
    got, _, _ = proxy(make_gate("internal.example.com:80"),
                      b"GET http://internal.example.com/ HTTP/1.1\r\n"
                      b"Host: internal.example.com\r\n\r\n", upstream)
    assert got.startswith(b"HTTP/1.1 403")
    assert got.endswith(b"\r\n\r\nsbx gateway: denied by policy\n")
    assert b"10.1.2.3" not in got and b"127.0.0.1" not in got
    (event,) = events(capsys.readouterr().out)
    assert "10.1.2.3" in event["reason"] and event["internal"] is True


@pytest.mark.parametrize("request_head", [
    b"GET http://example.com/ HTTP/1.1\nHost: evil.test\n\n",
    b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nHost: evil.test\r\n\r\n",
    b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX: \x01\r\n\r\n",
    b"CONNECT [fe80::1%eth0\x1b[31m]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://user@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
], ids=["bare-lf", "duplicate-host", "control-char", "zone-index", "userinfo"])
def test_explicit_requests_that_could_be_read_two_ways_are_refused(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str],
    request_head: bytes,
) -> None:
    got, _, _ = proxy(make_gate("example.com:80", "example.com:443"), request_head, upstream)
    assert got.startswith(b"HTTP/1.1 400") and upstream.connected == []
    (event,) = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and "dst_ip" not in event


def test_an_absolute_request_is_rebuilt_not_copied(
    make_gate: GateFactory, upstream: Upstream
) -> None:
    _, sent_up, _ = proxy(make_gate("example.com:80"),
                          b"GET http://example.com/a HTTP/1.1\r\nHost:  example.com \r\n"
                          b"X-A:\tb\r\n\r\n", upstream)
    assert sent_up == b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-A: b\r\n\r\n"


@pytest.mark.parametrize("second", [
    b"GET http://evil.test/b HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    b"GET http://example.com/b HTTP/1.1\r\nHost: example.com\r\nX: a\r\n b\r\n\r\n",
    b"GET http://example.com/b HTTP/1.1\r\nHost: example.com\r\nX: \x01\r\n\r\n",
], ids=["other-host", "obs-fold", "control-char"])
def test_every_request_on_an_explicit_proxy_connection_is_checked(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str],
    second: bytes,
) -> None:
    """The first request picks the destination; one pipelined behind it is read by the
    request checker with the same strictness, and never reaches upstream when refused."""
    client, served = socket.socketpair()
    server = SimpleNamespace(gate=make_gate("example.com:80"), flows={},
                             flows_lock=threading.Lock(), inspection=None)
    thread = threading.Thread(target=ProxyHandler, args=(served, ("172.30.0.3", 40000), server),
                              daemon=True)
    thread.start()
    client.sendall(b"GET http://example.com/a HTTP/1.1\r\nHost: example.com\r\n\r\n" + second)
    while not upstream.far and thread.is_alive():
        thread.join(0.05)
    far = upstream.far[0]
    far.settimeout(5)
    sent_up = b""
    while b"\r\n\r\n" not in sent_up:
        sent_up += far.recv(65536)
    far.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sent_up += _read_all(far)  # the gateway closes upstream after its 403
    got = _read_all(client)
    thread.join(5)
    client.close()
    assert sent_up == b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert got.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert b"HTTP/1.1 403 " in got or b"HTTP/1.1 400 " in got
    http = [e for e in events(capsys.readouterr().out) if e["kind"] == "http"]
    assert [e["verdict"] for e in http] == ["allowed", "denied"]


def test_denied_connect_answers_403_and_never_connects(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = make_gate("example.com:443")
    got, _, errors = proxy(gate, b"CONNECT unlisted.example.org:443 HTTP/1.1\r\n"
                           b"Host: unlisted.example.org:443\r\n\r\n", upstream)
    assert errors == []
    assert got.startswith(b"HTTP/1.1 403")
    assert upstream.connected == []
    [event] = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and event["violation"] is True
    assert event["name"] == "unlisted.example.org" and event["via"] == "proxy"


def test_plain_http_is_forwarded_in_origin_form_without_proxy_headers(
    make_gate: GateFactory, upstream: Upstream
) -> None:
    gate = make_gate("api.example.com:80")
    got, sent_up, errors = proxy(
        gate,
        (
            b"GET http://api.example.com/v1/x?y=1 HTTP/1.1\r\nHost: api.example.com\r\n"
            b"Proxy-Authorization: Basic c2VjcmV0\r\nX-Sbx-Orig-Dst: 1.2.3.4:80\r\n"
            b"Accept: */*\r\n\r\n"
        ),
        upstream,
    )
    assert errors == []
    assert upstream.connected == [("198.51.100.8", 80)]
    assert sent_up == (b"GET /v1/x?y=1 HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n\r\n")
    assert got == b"pong"


@pytest.mark.parametrize(
    "request_head",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"garbage\r\n\r\n", b"CONNECT example.com:443",
     b"CONNECT example.com:https HTTP/1.1\r\n\r\n"],
    ids=["origin-form", "garbage", "unfinished-head", "non-numeric-port"],
)
def test_requests_that_are_not_proxy_requests_get_400_and_are_recorded(
    make_gate: GateFactory, upstream: Upstream, request_head: bytes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refusal without a record would hide the attempt from the evidence."""
    got, _, errors = proxy(make_gate("example.com"), request_head, upstream)
    assert errors == []
    assert got.startswith(b"HTTP/1.1 400")
    assert upstream.connected == []
    (event,) = events(capsys.readouterr().out)
    assert event["kind"] == "tcp" and event["verdict"] == "denied"
    assert event["violation"] is True and event["reason"].startswith("bad request")
    assert event["src_port"] == 40000 and event["via"] == "proxy"


def test_a_relayed_refusal_of_an_internal_address_names_its_source_port(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probes find their connection in the gateway's record by the source port, and
    need the record to say the address was refused as internal, not for want of a rule."""
    gate = make_gate("example.com", refused=("10.0.0.2/32",))
    got, _, _ = proxy(gate, b"CONNECT 10.0.0.2:80 HTTP/1.1\r\nHost: 10.0.0.2:80\r\n"
                      b"X-Sbx-Orig-Src-Port: 51234\r\nX-Sbx-Relay: relay-secret\r\n\r\n",
                      upstream)
    assert got.startswith(b"HTTP/1.1 403") and upstream.connected == []
    (event,) = events(capsys.readouterr().out)
    assert event["internal"] is True and event["src_port"] == 51234
    assert (event["dst_ip"], event["dst_port"], event["via"]) == ("10.0.0.2", 80, "relay")


def test_a_denial_for_want_of_a_rule_is_not_marked_internal(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy(make_gate("example.com:80"), b"CONNECT 198.51.100.50:80 HTTP/1.1\r\n"
          b"Host: 198.51.100.50:80\r\n\r\n", upstream)
    (event,) = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and "internal" not in event
    assert event["src_port"] == 40000  # the proxy client's own port


def test_a_step_cannot_claim_a_source_port_without_the_relay_token(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy(make_gate("example.com"), b"CONNECT 10.1.1.1:80 HTTP/1.1\r\nHost: 10.1.1.1:80\r\n"
          b"X-Sbx-Orig-Src-Port: 51234\r\nX-Sbx-Relay: guessed\r\n\r\n", upstream)
    (event,) = events(capsys.readouterr().out)
    assert event["src_port"] == 40000 and event["internal"] is True


def test_a_step_cannot_pose_as_the_relay_without_its_token(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forged original destination must not reach the evidence."""
    gate = make_gate("example.com:443")
    proxy(
        gate,
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
            b"X-Sbx-Orig-Dst: 203.0.113.66:443\r\nX-Sbx-Relay: guessed\r\n\r\nhello"
        ),
        upstream,
    )
    opened, _ = events(capsys.readouterr().out)
    assert opened["via"] == "proxy" and opened.get("dst_ip") != "203.0.113.66"


def test_plain_http_with_a_host_header_for_another_host_is_refused(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fronting in the clear: the URL names an allowed host, the Host header another."""
    gate = make_gate("example.com:80")
    got, _, _ = proxy(
        gate,
        b"GET http://example.com/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        upstream,
    )
    assert got.startswith(b"HTTP/1.1 400")
    assert upstream.connected == []
    (event,) = events(capsys.readouterr().out)
    assert event["verdict"] == "denied" and "differs" in event["reason"]


def test_names_are_resolved_as_absolute_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the trailing dot a failed lookup is retried under the host's search
    domains (`evil` becomes `evil.corp.internal`): not the name decided."""
    asked: list[str] = []

    def getaddrinfo(host: str, *_: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, 443))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    gate = Gate(step="s", policy=Policy(), refused=())
    assert gate.resolve("example.com", 443) == [PUBLIC]
    assert gate.resolve("example.com.", 443) == [PUBLIC]
    assert asked == ["example.com.", "example.com."]


@pytest.mark.parametrize(("mode", "verdict"), [("enforce", "denied"), ("audit", "audit")])
def test_a_silent_client_is_denied_in_enforce_and_let_through_by_address_in_audit(
    make_gate: GateFactory, upstream: Upstream, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, mode: str, verdict: str,
) -> None:
    """No fallback to the address in enforce mode, however long the silence; audit mode
    lets everything through anyway, so it waits only briefly (ssh speaks second)."""
    from sbx.sandbox.runtime import limits
    monkeypatch.setattr(limits, "FIRST_BYTES_WAIT", 0.3)
    monkeypatch.setattr(limits, "FIRST_BYTES_WAIT_AUDIT", 0.3)
    gate = make_gate("example.com:443", mode=mode)
    client, served = socket.socketpair()
    server = SimpleNamespace(gate=gate, flows={}, flows_lock=threading.Lock(), inspection=None)
    client.sendall(relayed(f"{PUBLIC}:443", b""))
    thread = threading.Thread(target=ProxyHandler, args=(served, ("172.30.0.3", 40000), server),
                              daemon=True)
    thread.start()
    for _ in range(100):
        if upstream.connected or not thread.is_alive():
            break
        thread.join(0.1)
    client.close()
    for far in upstream.far:
        far.close()
    thread.join(10)
    assert not thread.is_alive()
    (event, *_) = events(capsys.readouterr().out)
    assert event["verdict"] == verdict and "no first bytes" in event["reason"]
    assert upstream.connected == ([] if mode == "enforce" else [(PUBLIC, 443)])


_START_IMPORTS = """
import sys
import sbx.sandbox.runtime.agent
print("inspect" in sys.modules)
import sbx.sandbox.runtime.gateway
from sbx.sandbox.policy import Policy, parse_rule, with_actions
from sbx.sandbox.runtime.http.tunnel import Inspection

plain = Policy(rules=(parse_rule("pypi.org:443", "step.yaml:1"),))
assert Inspection.for_policy("s", plain) is None
print("cryptography" in sys.modules)
inspected = with_actions(parse_rule("pypi.org:443", "step.yaml:2"), ["GET"], ["/simple/**"])
inspection = Inspection.for_policy("s", Policy(rules=(inspected,)))
print(inspection is not None and "BEGIN CERTIFICATE" in inspection.ca.pem())
"""


def test_runtime_starts_without_cryptography_until_a_host_is_inspected() -> None:
    """cryptography (the largest import on the gateway's start) is loaded only when a rule
    needs the run CA; the agent's start path stays off dataclasses/inspect. A fresh
    interpreter, since this one has imported everything."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _START_IMPORTS], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]  # agent: inspect; gateway: before, after
