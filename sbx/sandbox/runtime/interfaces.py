"""This network namespace's own addresses and route gateways, asked of the kernel directly.

What `ip -j addr` and `ip -j route` print, read over one rtnetlink socket instead: the
gateway refuses these as destinations, and three `ip` processes (and the subprocess
module) were a tenth of its start-up. Where the two could differ this errs on the side
of more: gateways of every routing table and of every multipath next hop.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NETLINK_ROUTE = 0
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_DUMP = 0x1, 0x300
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_GATEWAY, _RTA_MULTIPATH, _RTA_VIA = 5, 9, 18
_IFADDRMSG, _RTMSG, _RTNEXTHOP = 8, 12, 8


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            return
        yield kind & 0x3FFF, data[pos + 4 : pos + length]
        pos += (length + 3) & ~3


def _dump(sock: socket.socket, kind: int, family: int, header: int, seq: int) -> Iterator[
        tuple[int, bytes]]:
    """(message type, body) of every message the kernel answers a dump request with."""
    body = struct.pack("=B", family) + b"\0" * (header - 1)
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, _F_REQUEST | _F_DUMP, seq, 0) + body)
    while True:
        data = sock.recv(1 << 16)
        pos = 0
        while pos + 16 <= len(data):
            length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, pos)
            if length < 16:
                raise OSError("malformed rtnetlink message")
            if mseq == seq:
                if mtype == _NLMSG_DONE:
                    return
                if mtype == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, pos + 16)
                    raise OSError(-error, "rtnetlink dump refused")
                yield mtype, data[pos + 16 : pos + length]
            pos += (length + 3) & ~3


def _address(family: int, raw: bytes) -> str | None:
    if family == socket.AF_INET and len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if family == socket.AF_INET6 and len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return None


def _gateways(family: int, attrs: bytes) -> Iterator[str | None]:
    for kind, value in _attrs(attrs):
        if kind == _RTA_GATEWAY:
            yield _address(family, value)
        elif kind == _RTA_VIA and len(value) >= 2:  # an IPv4 route via an IPv6 next hop
            (via_family,) = struct.unpack_from("=H", value)
            yield _address(via_family, value[2:])
        elif kind == _RTA_MULTIPATH:
            pos = 0
            while pos + _RTNEXTHOP <= len(value):
                (length,) = struct.unpack_from("=H", value, pos)
                if length < _RTNEXTHOP:
                    break
                yield from _gateways(family, value[pos + _RTNEXTHOP : pos + length])
                pos += (length + 3) & ~3


def own_addresses() -> tuple[list[str], list[str]]:
    """(every address on every interface, every route's gateway), IPv4 and IPv6."""
    addresses: list[str] = []
    gateways: list[str] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for mtype, body in _dump(sock, _RTM_GETADDR, socket.AF_UNSPEC, _IFADDRMSG, 1):
            if mtype != _RTM_NEWADDR or len(body) < _IFADDRMSG:
                continue
            attrs = dict(_attrs(body[_IFADDRMSG:]))
            # As `ip`: the local address where the kernel gives one (a peer address
            # is IFA_ADDRESS then), else IFA_ADDRESS.
            raw = attrs.get(_IFA_LOCAL, attrs.get(_IFA_ADDRESS))
            found = _address(body[0], raw) if raw is not None else None
            if found is not None:
                addresses.append(found)
        for seq, family in ((2, socket.AF_INET), (3, socket.AF_INET6)):
            for mtype, body in _dump(sock, _RTM_GETROUTE, family, _RTMSG, seq):
                if mtype == _RTM_NEWROUTE and len(body) >= _RTMSG:
                    gateways += [g for g in _gateways(body[0], body[_RTMSG:]) if g]
    return addresses, list(dict.fromkeys(gateways))
