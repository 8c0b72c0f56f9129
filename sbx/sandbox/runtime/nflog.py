"""Read packets the agent's firewall drops, through an NFLOG netlink group.

The socket is bound while the agent still holds NET_ADMIN; the kernel checks
that capability only when the group is configured, so after every capability
is dropped the agent can still read what its rules log. No pure-Python library
speaks nfnetlink_log, so the few messages needed are packed here.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
from typing import NamedTuple

NETLINK_NETFILTER = 12
_ULOG = 4 << 8  # NFNL_SUBSYS_ULOG
_MSG_PACKET = _ULOG | 0
_MSG_CONFIG = _ULOG | 1
_NLMSG_ERROR = 2
_F_REQUEST, _F_ACK = 0x1, 0x4
_CFG_CMD, _CFG_MODE, _CFG_TIMEOUT, _CFG_QTHRESH = 1, 2, 4, 5
_CMD_BIND, _CMD_PF_BIND, _CMD_PF_UNBIND = 1, 3, 4
_COPY_PACKET = 2
_ATTR_PAYLOAD, _ATTR_PREFIX = 9, 10
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


# A NamedTuple, not a dataclass: dataclasses imports inspect, a sixth of the agent's start-up.
class DroppedPacket(NamedTuple):
    """What a logged packet shows: where it was going and how."""

    prefix: str
    family: int
    protocol: str
    src_ip: str
    dst_ip: str
    dst_port: int | None
    length: int


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


class NflogReader:
    """A netlink socket bound to one NFLOG group."""

    def __init__(self, group: int, copy_range: int = 96) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            # Older kernels need a per-family handler; newer ones answer harmlessly.
            self._config(family, 0, _attr(_CFG_CMD, bytes([_CMD_PF_UNBIND])), check=False)
            self._config(family, 0, _attr(_CFG_CMD, bytes([_CMD_PF_BIND])), check=False)
        self._config(0, group, _attr(_CFG_CMD, bytes([_CMD_BIND])))
        self._config(0, group, _attr(_CFG_MODE, struct.pack("!IBB", copy_range, _COPY_PACKET, 0)))
        # iptables-nft's NFLOG carries no per-rule threshold, so the kernel would batch up
        # to 100 packets or 1 s; an event must carry the time of the attempt, so flush each.
        self._config(0, group, _attr(_CFG_QTHRESH, struct.pack("!I", 1)))
        self._config(0, group, _attr(_CFG_TIMEOUT, struct.pack("!I", 0)))

    def _config(self, family: int, group: int, attrs: bytes, check: bool = True) -> None:
        self._seq += 1
        body = struct.pack("!BBH", family, 0, group) + attrs
        header = struct.pack("=IHHII", 16 + len(body), _MSG_CONFIG, _F_REQUEST | _F_ACK,
                             self._seq, 0)
        self.sock.send(header + body)
        reply = self.sock.recv(65536)
        _len, kind, _flags, _seq, _pid = struct.unpack("=IHHII", reply[:16])
        if kind == _NLMSG_ERROR:
            (error,) = struct.unpack("=i", reply[16:20])
            if error and check:
                raise OSError(-error, f"NFLOG configuration failed for group {group}")

    def read(self) -> list[DroppedPacket]:
        """Block until the kernel delivers logged packets; returns them parsed."""
        return _parse_batch(self.sock.recv(1 << 20))

    def wait(self) -> None:
        """Block until a batch (or an error such as an overrun) is there to read."""
        select.select([self.sock], [], [])

    def read_queued(self) -> list[DroppedPacket] | None:
        """The next batch already queued, without blocking; None once the queue is empty.

        The kernel queues a packet's record as the packet is dropped (one per batch, no
        delay: see the threshold above), so what a process sent before it exited is
        here once it has exited."""
        try:
            data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        return _parse_batch(data)


def _parse_batch(data: bytes) -> list[DroppedPacket]:
    """The packets of one netlink read (several messages)."""
    packets: list[DroppedPacket] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack("=IH", data[offset : offset + 6])
        if length < 16:
            break
        if kind == _MSG_PACKET:
            packet = _parse_packet(data[offset + 16 : offset + length])
            if packet is not None:
                packets.append(packet)
        offset += (length + 3) & ~3
    return packets


def _parse_packet(msg: bytes) -> DroppedPacket | None:
    family = msg[0]
    prefix, payload = "", b""
    pos = 4
    while pos + 4 <= len(msg):
        alen, atype = struct.unpack("=HH", msg[pos : pos + 4])
        if alen < 4:
            break
        value = msg[pos + 4 : pos + alen]
        atype &= 0x3FFF
        if atype == _ATTR_PAYLOAD:
            payload = value
        elif atype == _ATTR_PREFIX:
            prefix = value.rstrip(b"\0").decode("ascii", "replace")
        pos += (alen + 3) & ~3
    return parse_ip(prefix, family, payload)


def parse_ip(prefix: str, family: int, payload: bytes) -> DroppedPacket | None:
    """Protocol, addresses and destination port of a raw IPv4 or IPv6 packet."""
    try:
        if family == socket.AF_INET and len(payload) >= 20 and payload[0] >> 4 == 4:
            ihl = (payload[0] & 0x0F) * 4
            proto = payload[9]
            src, dst = payload[12:16], payload[16:20]
            l4 = payload[ihl:]
        elif family == socket.AF_INET6 and len(payload) >= 40 and payload[0] >> 4 == 6:
            proto = payload[6]
            src, dst = payload[8:24], payload[24:40]
            l4 = payload[40:]
        else:
            return None
    except IndexError:
        return None
    port = struct.unpack("!H", l4[2:4])[0] if proto in (6, 17, 132) and len(l4) >= 4 else None
    return DroppedPacket(
        prefix=prefix, family=family, protocol=_PROTOCOLS.get(proto, str(proto)),
        src_ip=str(ipaddress.ip_address(src)), dst_ip=str(ipaddress.ip_address(dst)),
        dst_port=port, length=len(payload))
