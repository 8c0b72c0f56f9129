"""Parsing what the agent's firewall drops, from hand-built packets (no netlink, no network)."""

from __future__ import annotations

import socket
import struct

import pytest

from sbx.sandbox.runtime import nflog
from sbx.sandbox.runtime.nflog import DroppedPacket, NflogReader, _parse_packet, parse_ip

SRC4, DST4 = "172.30.0.3", "203.0.113.9"
SRC6, DST6 = "fd00::3", "2001:db8::9"


def ipv4(proto: int, l4: bytes, src: str = SRC4, dst: str = DST4, options: bytes = b"") -> bytes:
    """An IPv4 packet; `options` must be a multiple of 4 bytes."""
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        20 + len(options) + len(l4),
        1,
        0,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + options + l4


def ipv6(next_header: int, l4: bytes, src: str = SRC6, dst: str = DST6) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(l4),
        next_header,
        64,
        socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst),
    )
    return header + l4


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo() -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (as the kernel sends it)."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nflog_packet(family: int, prefix: bytes, payload: bytes, group: int = 7) -> bytes:
    """The body of an NFULNL_MSG_PACKET: nfgenmsg, then attributes."""
    nfgenmsg = struct.pack("!BBH", family, 0, group)
    packet_hdr = attr(1, struct.pack("!HBB", 0x0800 if family == socket.AF_INET else 0x86DD, 3, 0))
    return (
        nfgenmsg
        + packet_hdr
        + attr(10, prefix + b"\0")
        + attr(9 | 0x4000, payload)
        + attr(11, struct.pack("!I", 0))
    )


def netlink(body: bytes, kind: int = (4 << 8) | 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


# --------------------------------------------------------------------------- parse_ip


def test_ipv4_tcp_gives_addresses_protocol_and_port() -> None:
    packet = ipv4(6, tcp(40000, 443))
    assert parse_ip("out", socket.AF_INET, packet) == DroppedPacket(
        prefix="out",
        family=socket.AF_INET,
        protocol="tcp",
        src_ip=SRC4,
        dst_ip=DST4,
        dst_port=443,
        length=len(packet),
    )


def test_ipv4_udp_port_is_the_destination_port() -> None:
    found = parse_ip("out", socket.AF_INET, ipv4(17, udp(5353, 123, b"ntp")))
    assert found is not None
    assert (found.protocol, found.dst_ip, found.dst_port) == ("udp", DST4, 123)


def test_ipv4_with_options_reads_the_port_after_them() -> None:
    found = parse_ip("out", socket.AF_INET, ipv4(17, udp(1, 9999), options=b"\x01\x01\x01\x00"))
    assert found is not None and found.dst_port == 9999


def test_ipv4_icmp_has_no_port() -> None:
    found = parse_ip("out", socket.AF_INET, ipv4(1, icmp_echo(), dst="8.8.8.8"))
    assert found is not None
    assert (found.protocol, found.dst_ip, found.dst_port) == ("icmp", "8.8.8.8", None)


def test_unknown_protocol_is_named_by_number() -> None:
    found = parse_ip("out", socket.AF_INET, ipv4(47, b"\0" * 8))
    assert found is not None and (found.protocol, found.dst_port) == ("47", None)


def test_ipv6_tcp_and_udp() -> None:
    t = parse_ip("out6", socket.AF_INET6, ipv6(6, tcp(1234, 22)))
    u = parse_ip("out6", socket.AF_INET6, ipv6(17, udp(1234, 53)))
    assert t is not None and u is not None
    assert (t.protocol, t.src_ip, t.dst_ip, t.dst_port) == ("tcp", SRC6, DST6, 22)
    assert (u.protocol, u.dst_port, u.prefix, u.family) == ("udp", 53, "out6", socket.AF_INET6)


def test_ipv6_icmp_has_no_port() -> None:
    found = parse_ip("out6", socket.AF_INET6, ipv6(58, b"\x80\0\0\0\0\1\0\1"))
    assert found is not None and (found.protocol, found.dst_port) == ("icmpv6", None)


def test_family_and_version_must_agree() -> None:
    assert parse_ip("out", socket.AF_INET, ipv6(6, tcp(1, 2))) is None
    assert parse_ip("out", socket.AF_INET6, ipv4(6, tcp(1, 2))) is None
    assert parse_ip("out", socket.AF_INET, b"") is None


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def test_transport_header_cut_short_gives_no_port(family: int) -> None:
    build = ipv4 if family == socket.AF_INET else ipv6
    header_only = len(build(6, b""))
    found = parse_ip("out", family, build(6, tcp(1, 443))[: header_only + 3])
    assert found is not None and found.dst_port is None


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def test_truncated_packets_with_full_ip_header_never_raise(family: int) -> None:
    packet = ipv4(6, tcp(1, 443)) if family == socket.AF_INET else ipv6(6, tcp(1, 443))
    header = 20 if family == socket.AF_INET else 40
    for n in range(header, len(packet) + 1):
        found = parse_ip("out", family, packet[:n])
        assert found is not None and found.length == n


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def test_payload_shorter_than_the_ip_header_gives_none(family: int) -> None:
    packet = ipv4(6, tcp(1, 443)) if family == socket.AF_INET else ipv6(6, tcp(1, 443))
    header = 20 if family == socket.AF_INET else 40
    for n in range(header):
        assert parse_ip("out", family, packet[:n]) is None, n


# --------------------------------------------------------------------------- netlink messages


def test_parse_packet_reads_prefix_and_payload_attributes() -> None:
    payload = ipv4(17, udp(4000, 53, b"q"), dst="1.1.1.1")
    found = _parse_packet(nflog_packet(socket.AF_INET, b"out", payload))
    assert found == DroppedPacket(
        prefix="out",
        family=socket.AF_INET,
        protocol="udp",
        src_ip=SRC4,
        dst_ip="1.1.1.1",
        dst_port=53,
        length=len(payload),
    )


def test_parse_packet_ipv6_with_odd_length_payload_is_padded_correctly() -> None:
    payload = ipv6(6, tcp(1, 8443)) + b"x"  # forces padding after the payload attribute
    found = _parse_packet(nflog_packet(socket.AF_INET6, b"out6", payload))
    assert found is not None
    assert (found.prefix, found.protocol, found.dst_ip, found.dst_port) == (
        "out6",
        "tcp",
        DST6,
        8443,
    )
    assert found.length == len(payload)


def test_parse_packet_without_payload_is_none() -> None:
    body = struct.pack("!BBH", socket.AF_INET, 0, 7) + attr(10, b"out\0")
    assert _parse_packet(body) is None


def test_parse_packet_stops_at_a_broken_attribute_length() -> None:
    body = struct.pack("!BBH", socket.AF_INET, 0, 7) + struct.pack("=HH", 2, 9) + b"\0" * 40
    assert _parse_packet(body) is None


class _FakeNetlink:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, _size: int) -> bytes:
        return self.data


def test_reader_splits_several_messages_and_skips_other_kinds() -> None:
    first = ipv4(6, tcp(1, 443), dst="198.51.100.1")
    second = ipv6(17, udp(1, 53))
    data = (
        netlink(nflog_packet(socket.AF_INET, b"out", first))
        + netlink(b"\0" * 4, kind=3)  # NLMSG_DONE: not a packet
        + netlink(nflog_packet(socket.AF_INET6, b"out6", second))
    )
    reader = NflogReader.__new__(NflogReader)
    reader.sock = _FakeNetlink(data)  # type: ignore[assignment]
    found = reader.read()
    assert [(p.prefix, p.dst_ip, p.dst_port) for p in found] == [
        ("out", "198.51.100.1", 443),
        ("out6", DST6, 53),
    ]


def test_reader_stops_at_a_message_shorter_than_its_header() -> None:
    data = struct.pack("=IHHII", 8, nflog._MSG_PACKET, 0, 0, 0) + b"\0" * 64
    reader = NflogReader.__new__(NflogReader)
    reader.sock = _FakeNetlink(data)  # type: ignore[assignment]
    assert reader.read() == []
