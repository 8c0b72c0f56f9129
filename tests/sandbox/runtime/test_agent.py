"""The agent's interception rules and SO_ORIGINAL_DST parsing (no iptables, no network).

The rules are checked as text and by walking a packet through them with a tiny
evaluator for the subset of iptables syntax the agent writes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

import pytest

from sbx.sandbox.runtime.agent import SO_ORIGINAL_DST, original_dst
from sbx.sandbox.runtime.firewall import rules_v4, rules_v6

CFG: dict[str, Any] = {
    "step": "build",
    "gateway_ip": "172.30.0.2",
    "own_ip": "172.30.0.3",
    "bridge_ip": "172.30.0.1",
    "nflog_group": 7,
    "relay_port": 15001,
    "dns_udp_port": 15053,
    "dns_tcp_port": 15054,
    "proxy_port": 3128,
}


def tables(text: str) -> dict[str, tuple[dict[str, str], list[str]]]:
    """iptables-restore input as {table: ({chain: policy}, [rule lines])}."""
    out: dict[str, tuple[dict[str, str], list[str]]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            out[current] = ({}, [])
        elif line.startswith(":"):
            chain, policy, _ = line[1:].split(" ", 2)
            out[current][0][chain] = policy
        elif line.startswith(("-A", "-I")):
            out[current][1].append(line)
        elif line not in ("COMMIT", ""):
            raise AssertionError(f"unexpected line {line!r}")
    return out


@dataclass(frozen=True)
class Packet:
    proto: str
    dst: str
    dport: int | None = None
    out_iface: str = "eth0"
    ctstate: str = "NEW"


def _matches(rule: list[str], p: Packet) -> bool:
    i = 0
    while i < len(rule):
        opt = rule[i]
        if opt == "-j":
            return True
        value = rule[i + 1]
        if opt == "-d" and ipaddress.ip_address(p.dst) not in ipaddress.ip_network(value):
            return False
        if opt == "-p" and value != p.proto:
            return False
        if opt == "--dport" and str(p.dport) != value:
            return False
        if opt == "-o" and value != p.out_iface:
            return False
        if opt == "--ctstate" and p.ctstate not in value.split(","):
            return False
        if opt == "-m":
            i += 2
            continue
        i += 2
    return True


def walk(rules: list[str], chain: str, p: Packet) -> tuple[str, str]:
    """(target, jump arguments) of the first matching rule in `chain`, or ("", "")."""
    for line in rules:
        words = line.split()
        if words[0] == "-I":
            name, body = words[1], words[3:] if words[2].isdigit() else words[2:]
        else:
            name, body = words[1], words[2:]
        if name != chain or not _matches(body, p):
            continue
        j = body.index("-j")
        target, args = body[j + 1], " ".join(body[j + 2 :])
        if target not in ("ACCEPT", "DROP", "REDIRECT", "RETURN", "NFLOG"):
            sub = walk(rules, target, p)
            if sub[0] and sub[0] != "RETURN":
                return sub
            continue
        return target, args
    return "", ""


def nat_action(p: Packet) -> str:
    """Where the nat table sends a packet: 'redirect:<port>' or 'untouched'."""
    target, args = walk(tables(rules_v4(CFG))["nat"][1], "OUTPUT", p)
    if target == "REDIRECT":
        return "redirect:" + args.split("--to-ports ")[1]
    return "untouched"


def filter_verdict(p: Packet) -> str:
    """ACCEPT, or 'logged+DROP' when only the NFLOG rule and the policy apply."""
    policies, rules = tables(rules_v4(CFG))["filter"]
    target, _ = walk(rules, "OUTPUT", p)
    if target == "NFLOG":
        return "logged+" + policies["OUTPUT"]
    return target or policies["OUTPUT"]


# --------------------------------------------------------------------------- IPv4 text


def test_interception_chain_is_inserted_first_in_nat_output() -> None:
    """Before Docker's DNAT rules for 127.0.0.11, which --noflush leaves in place."""
    _, nat_rules = tables(rules_v4(CFG))["nat"]
    assert nat_rules[0] == "-I OUTPUT 1 -j SBX_OUT"
    assert not any(r.startswith("-A OUTPUT") for r in nat_rules)


def test_filter_policies_drop_everything_not_accepted() -> None:
    policies, _ = tables(rules_v4(CFG))["filter"]
    assert policies == {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "DROP",
                        "SBX_DROPPED": "-"}


@pytest.mark.parametrize("rules", [rules_v4(CFG), rules_v6(CFG)])
def test_every_packet_the_log_rule_sees_is_counted_first(rules: str) -> None:
    """The NFLOG rules are rate-limited; the jump to the counting chain just before
    each of them is not, so its counter holds every packet dropped (a flood too)."""
    lines = rules.splitlines()
    logs = [i for i, line in enumerate(lines) if "-j NFLOG" in line]
    assert logs
    for i in logs:
        assert lines[i - 1].endswith("-j SBX_DROPPED") and "limit" not in lines[i - 1]
    assert "-A SBX_DROPPED -j RETURN" in lines


def test_nflog_rule_logs_to_the_configured_group_last() -> None:
    _, rules = tables(rules_v4(CFG))["filter"]
    assert "-j NFLOG --nflog-group 7 --nflog-prefix out" in rules[-1]
    assert rules[-1].startswith("-A OUTPUT")


# --------------------------------------------------------------------------- IPv4 behaviour


@pytest.mark.parametrize("server", ["127.0.0.11", "8.8.8.8", "172.30.0.1", "10.9.9.9"])
def test_dns_to_any_server_is_redirected_to_the_dns_relay(server: str) -> None:
    assert nat_action(Packet("udp", server, 53)) == "redirect:15053"
    assert nat_action(Packet("tcp", server, 53)) == "redirect:15054"
    assert filter_verdict(Packet("udp", "127.0.0.1", 15053, "lo", "DNAT")) == "ACCEPT"


@pytest.mark.parametrize("dst", ["198.51.100.7", "10.9.9.9", "169.254.169.254", "172.30.0.4"])
@pytest.mark.parametrize("port", [80, 443, 22])
def test_all_other_tcp_is_redirected_to_the_relay(dst: str, port: int) -> None:
    assert nat_action(Packet("tcp", dst, port)) == "redirect:15001"
    # The redirected packet is DNAT'ed: filter OUTPUT accepts it by conntrack state.
    assert filter_verdict(Packet("tcp", "127.0.0.1", 15001, "eth0", "DNAT")) == "ACCEPT"


def test_bridge_address_is_not_redirected_so_it_is_logged_and_dropped() -> None:
    bridge = Packet("tcp", CFG["bridge_ip"], 80)
    assert nat_action(bridge) == "untouched"
    assert filter_verdict(bridge) == "logged+DROP"


@pytest.mark.parametrize(("proto", "port"), [("tcp", 3128), ("tcp", 53), ("udp", 53)])
def test_gateway_is_reached_directly_on_its_service_ports(proto: str, port: int) -> None:
    packet = Packet(proto, CFG["gateway_ip"], port)
    assert nat_action(packet) == "untouched"
    assert filter_verdict(packet) == "ACCEPT"


@pytest.mark.parametrize(("proto", "port"), [("tcp", 22), ("tcp", 80), ("tcp", 15001),
                                             ("udp", 3128), ("udp", 123)])
def test_gateway_is_reached_on_no_other_port(proto: str, port: int) -> None:
    packet = Packet(proto, CFG["gateway_ip"], port)
    assert nat_action(packet) == "untouched"
    assert filter_verdict(packet) == "logged+DROP"


@pytest.mark.parametrize(
    "packet",
    [
        Packet("udp", "198.51.100.7", 123),
        Packet("udp", "172.30.0.1", 5353),
        Packet("icmp", "8.8.8.8"),
        Packet("icmp", "172.30.0.1"),
        Packet("udp", "172.30.0.2", 123),
    ],
    ids=lambda p: f"{p.proto}-{p.dst}-{p.dport}",
)
def test_other_udp_and_icmp_are_logged_and_dropped(packet: Packet) -> None:
    assert nat_action(packet) == "untouched"
    assert filter_verdict(packet) == "logged+DROP"


def test_loopback_traffic_is_allowed() -> None:
    assert nat_action(Packet("tcp", "127.0.0.1", 8080)) == "untouched"
    assert filter_verdict(Packet("tcp", "127.0.0.1", 8080, "lo")) == "ACCEPT"


# --------------------------------------------------------------------------- IPv6


def test_ipv6_allows_only_loopback_and_logs_the_rest() -> None:
    parsed = tables(rules_v6(CFG))
    assert set(parsed) == {"filter"}
    policies, rules = parsed["filter"]
    assert policies == {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "DROP",
                        "SBX_DROPPED": "-"}
    accepts = [r for r in rules if r.endswith("-j ACCEPT")]
    assert accepts, "loopback must keep working"
    for rule in accepts:
        assert "-s ::1/128" in rule and "-d ::1/128" in rule
        assert "-i lo" in rule or "-o lo" in rule
    assert "-j NFLOG --nflog-group 7 --nflog-prefix out6" in rules[-1]


# --------------------------------------------------------------------------- SO_ORIGINAL_DST


class _FakeConn:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.asked: tuple[int, int, int] | None = None

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked = (level, option, size)
        return self.raw


@pytest.mark.parametrize(
    ("ip", "port"), [("93.184.216.34", 443), ("10.0.0.1", 1), ("255.255.255.254", 65535)]
)
def test_original_dst_reads_a_sockaddr_in(ip: str, port: int) -> None:
    sockaddr = (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(ip)
        + b"\0" * 8
    )
    conn = _FakeConn(sockaddr)
    assert original_dst(conn) == (ip, port)  # type: ignore[arg-type]
    assert conn.asked == (socket.SOL_IP, SO_ORIGINAL_DST, 16)


# --------------------------------------------------------------------------- loopback


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize(("dst", "port"), [("127.0.0.11", 35000), ("127.0.0.11", 44221),
                                           ("127.0.0.2", 8080), ("127.255.255.254", 53000)])
def test_loopback_beyond_the_agents_own_address_is_logged_and_dropped(
        proto: str, dst: str, port: int) -> None:
    """Docker's embedded DNS listens on 127.0.0.11 at high ports; a query sent there
    directly (not to port 53) would be answered by dockerd, unrecorded."""
    packet = Packet(proto, dst, port, "lo")
    assert nat_action(packet) == "untouched"
    assert filter_verdict(packet) == "logged+DROP"


@pytest.mark.parametrize("dst", ["127.0.0.1", CFG["own_ip"]])
def test_the_agents_own_addresses_stay_open_on_loopback(dst: str) -> None:
    """The step's own local servers, and the relays' answers to the step."""
    assert filter_verdict(Packet("tcp", dst, 8000, "lo")) == "ACCEPT"
