"""Deciding probes on the gateway's own record (sbx.sandbox.probe_verdicts), with bytes alone."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sbx.sandbox.probe_verdicts import GatewayRecord, identity_problem, judge, pending

RELAYED: dict[str, Any] = {
    "name": "egress-raw-ip", "kind": "tcp", "target": "198.18.0.1:80", "blocked": True,
    "detail": "reset or silent: [Errno 104] Connection reset by peer", "reached_if": "...",
    "check": {"src_port": 40001, "dst_ip": "198.18.0.1", "dst_port": 80}}
CANARY: dict[str, Any] = {
    "name": "dns-canary-udp", "kind": "dns", "target": "sbx-r-s-agent via 127.0.0.11/udp",
    "blocked": True, "detail": "no address (rcode 3)", "reached_if": "...",
    "check": {"dns_name": "sbx-r-s-agent"}}
PLAIN: dict[str, Any] = {"name": "egress-udp", "kind": "udp", "target": "198.18.0.1:33434",
                         "blocked": True, "detail": "no answer", "reached_if": "..."}


def refusal(**over: Any) -> dict[str, Any]:
    event = {"kind": "tcp", "verdict": "denied", "internal": True, "src_port": 40001,
             "dst_ip": "198.18.0.1", "dst_port": 80, "via": "relay",
             "reason": "198.18.0.1 is an internal or host address"}
    event.update(over)
    return event


def dns_event(**over: Any) -> dict[str, Any]:
    event = {"kind": "dns", "name": "sbx-r-s-agent", "verdict": "denied"}
    event.update(over)
    return event


def test_a_relayed_probe_is_blocked_only_on_the_gateways_refusal_of_the_address() -> None:
    (result,) = judge([RELAYED], [refusal()])
    assert result.blocked and "refused the address as internal" in result.detail
    assert result.reached_if == "..."


@pytest.mark.parametrize("event", [
    refusal(internal=None, reason="no rule allows 198.18.0.1:80"),  # no internal-address check
    refusal(verdict="audit", internal=None),
    refusal(verdict="allowed", internal=None),
    refusal(verdict="failed", internal=None, reason="no answer from 198.18.0.1:80"),
], ids=["denied-by-policy-only", "audit", "allowed", "tried-to-connect"])
def test_a_relayed_probe_is_reached_on_anything_but_an_internal_refusal(
        event: dict[str, Any]) -> None:
    (result,) = judge([RELAYED], [event])
    assert not result.blocked and "not a refusal of an internal address" in result.detail


@pytest.mark.parametrize("event", [
    refusal(src_port=40002), refusal(dst_port=443), refusal(dst_ip="198.18.0.2"),
    refusal(kind="dns"),
], ids=["other-source-port", "other-port", "other-address", "other-kind"])
def test_another_connections_refusal_does_not_count(event: dict[str, Any]) -> None:
    """Matched on the connection's own fields: a refusal of a different connection (or a
    time window alone) proves nothing about this one."""
    (result,) = judge([RELAYED], [event])
    assert not result.blocked and "no record of this connection" in result.detail


def test_a_probe_that_saw_bytes_stays_reached_whatever_the_gateway_says() -> None:
    raw = dict(RELAYED, blocked=False, detail="answered b'HTTP/1.0 200'")
    (result,) = judge([raw], [refusal()])
    assert not result.blocked


def test_a_dns_canary_needs_the_gateways_record_of_the_query() -> None:
    assert judge([CANARY], [dns_event()])[0].blocked
    (missing,) = judge([CANARY], [])
    assert not missing.blocked and "not intercepted" in missing.detail


@pytest.mark.parametrize("verdict", ["allowed", "audit"])
def test_a_dns_canary_the_gateway_let_through_is_reached(verdict: str) -> None:
    (result,) = judge([CANARY], [dns_event(), dns_event(verdict=verdict)])
    assert not result.blocked


def test_dns_names_match_whatever_their_case_and_trailing_dot() -> None:
    assert judge([CANARY], [dns_event(name="SBX-R-S-Agent.")])[0].blocked


def test_probes_without_a_check_keep_their_own_verdict() -> None:
    assert judge([PLAIN], [])[0].blocked
    assert not judge([dict(PLAIN, blocked=False)], [refusal()])[0].blocked


def test_pending_lists_the_checks_still_without_a_record() -> None:
    assert pending([RELAYED, CANARY, PLAIN], [refusal()]) == [CANARY["check"]]
    assert pending([RELAYED, CANARY], [refusal(), dns_event()]) == []


def test_the_record_wait_returns_when_the_last_record_arrives() -> None:
    record = GatewayRecord()
    record.add(refusal())
    arrived = threading.Event()

    def late() -> None:
        arrived.wait()
        record.add(dns_event())

    thread = threading.Thread(target=late)
    thread.start()
    arrived.set()
    record.wait_for([RELAYED, CANARY], timeout=60)
    thread.join()
    assert pending([RELAYED, CANARY], record.events()) == []


def test_the_record_wait_gives_up_and_the_probe_counts_as_reached() -> None:
    record = GatewayRecord()
    record.wait_for([CANARY], timeout=0.01)
    assert not judge([CANARY], record.events())[0].blocked


# -- probes whose packet the namespace's own firewall must drop ----------------------------
DIRECT: dict[str, Any] = {
    "name": "host-bridge-udp", "kind": "udp", "target": "10.222.0.1:33434", "blocked": True,
    "detail": "no answer: [Errno 1] Operation not permitted", "reached_if": "...",
    "check": {"drop": {"protocol": "udp", "dst_ip": "10.222.0.1", "dst_port": 33434}}}


def firewall_drop(**over: Any) -> dict[str, Any]:
    event = {"kind": "udp", "protocol": "udp", "dst_ip": "10.222.0.1", "dst_port": 33434,
             "verdict": "denied", "layer": "firewall", "_role": "agent"}
    event.update(over)
    return event


def test_a_silent_probe_is_blocked_only_on_the_firewalls_record_of_the_drop() -> None:
    (result,) = judge([DIRECT], [firewall_drop()])
    assert result.blocked and "the sandbox firewall dropped it" in result.detail
    (result,) = judge([DIRECT], [])
    assert not result.blocked and "no record of dropping it" in result.detail


@pytest.mark.parametrize("event", [
    firewall_drop(_role="gateway"),  # the gateway's stream cannot vouch for the firewall
    firewall_drop(layer=None), firewall_drop(verdict="allowed"), firewall_drop(dst_port=33435),
    firewall_drop(dst_ip="10.222.0.2"), firewall_drop(protocol="tcp"),
], ids=["gateway-stream", "not-the-firewall", "not-a-denial", "other-port", "other-address",
        "other-protocol"])
def test_another_packets_drop_does_not_count(event: dict[str, Any]) -> None:
    (result,) = judge([DIRECT], [event])
    assert not result.blocked


def test_an_agent_event_never_stands_for_the_gateways_record() -> None:
    record = GatewayRecord()
    record.add(refusal(), "agent")
    (result,) = judge([RELAYED], record.events())
    assert not result.blocked
    record.add(refusal(), "gateway")
    (result,) = judge([RELAYED], record.events())
    assert result.blocked


def test_an_ipv6_drop_matches_in_any_spelling() -> None:
    probe = dict(DIRECT, check={"drop": {"protocol": "tcp", "dst_ip": "fd00:5b:0::1",
                                         "dst_port": 80}})
    (result,) = judge([probe], [firewall_drop(protocol="tcp", dst_ip="fd00:5b::1",
                                              dst_port=80, kind="ipv6")])
    assert result.blocked


def test_the_fence_waits_for_its_own_record() -> None:
    record = GatewayRecord()
    fence = {"protocol": "udp", "dst_ip": "10.222.0.1", "dst_port": 41234}
    record.add(firewall_drop(dst_port=41233), "agent")
    assert not record.wait_for_fence(fence, timeout=0.05)
    threading.Timer(0.05, record.add, (firewall_drop(dst_port=41234), "agent")).start()
    assert record.wait_for_fence(fence, timeout=5)


NOBODY_ID = {"uid": 65534, "gid": 65534, "CapInh": "0000000000000000",
             "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
             "CapBnd": "00000000000011c0", "CapAmb": "0000000000000000", "NoNewPrivs": "1"}


def test_probes_run_unprivileged_or_the_sandbox_fails_closed() -> None:
    assert identity_problem(NOBODY_ID) is None
    assert "ran as 0" in str(identity_problem(dict(NOBODY_ID, uid=0)))
    assert "CapEff" in str(identity_problem(dict(NOBODY_ID, CapEff="0000000000001000")))
    assert "CapAmb" in str(identity_problem(dict(NOBODY_ID, CapAmb="0000000000001000")))
    assert "no_new_privs" in str(identity_problem(dict(NOBODY_ID, NoNewPrivs="0")))
    assert identity_problem(None) is not None
    assert identity_problem(dict(NOBODY_ID, CapPrm="zz")) is not None
