"""Addresses: the ranges a step never reaches and how an address is matched against them.

STANDARD LIBRARY ONLY: copied into the gateway image (see the package docstring).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, TypeAlias

from .errors import PolicyError

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


INTERNAL_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    _net(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "::ffff:0:0/96",
        "::/96",
    )
)
"""Ranges the gateway refuses unless an IP/CIDR rule names them explicitly.

198.18.0.0/15 (benchmark) and the documentation ranges are deliberately absent:
the test suite's simulated internet lives on 198.18.0.0/24.
"""

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible ::a.b.c.d
# IPv6 ranges that carry an IPv4 address: (range, bit offset of the IPv4 address, inverted).
_WRAPPERS: Final[tuple[tuple[ipaddress.IPv6Network, int, bool], ...]] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96, False),
    (_COMPATIBLE, 96, False),
    (_NAT64, 96, False),
    (ipaddress.IPv6Network("2002::/16"), 16, False),  # 6to4
    (ipaddress.IPv6Network("2001::/32"), 96, True),  # Teredo client, bits inverted
)

# Addresses no rule may name, even explicitly: (network, what it is). The most
# specific entry comes first so the refusal names the real reason.
_FORBIDDEN_NETWORKS: Final[tuple[tuple[IPNetwork, str], ...]] = tuple(
    (_net(n), why)
    for n, why in (
        ("169.254.169.254/32", "the cloud metadata service"),
        ("100.100.100.200/32", "the cloud metadata service"),
        ("fd00:ec2::254/128", "the cloud metadata service"),
        ("0.0.0.0/32", "the unspecified address"),
        ("::/128", "the unspecified address"),
        ("0.0.0.0/8", "the reserved 'this network' range"),
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("fe80::/10", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "reserved"),
        # RFC 8215 lets an operator embed IPv4 anywhere in it (RFC 6052 prefix lengths):
        # no rule could tell which IPv4 address a spelling carries, so none reaches it.
        ("64:ff9b:1::/48", "a local-use NAT64 prefix, which can carry any IPv4 address"),
    )
)


def _parse_address(ip: str) -> IPAddress:
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:
        # ipaddress keeps any text after '%' as a scope: it would reach records verbatim.
        raise PolicyError(f"{ip[:64]!r} has an IPv6 zone index; remove the '%...' part")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(
            f"{ip!r} is not an IP address; pass a dotted-decimal or IPv6 address"
        ) from None


def _unwrap(addr: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 address, else `addr`."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _embedded_v4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address can route to: mapped, compatible, NAT64, 6to4, Teredo."""
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr in _NAT64 or addr in _COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.append(addr.teredo[1])
    return found


def is_forbidden(addr: IPAddress) -> bool:
    """True when `addr`, or an IPv4 address it carries, is one no rule may ever reach.

    A rule's network is checked when it is parsed, but a wide IPv6 rule (``64::/16``,
    ``2002::/16``) still holds the NAT64 or 6to4 spelling of 169.254.169.254: the
    address is checked too, whenever a rule is matched.
    """
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        candidates.extend(_embedded_v4(addr))
    return any(_in(a, bad) for a in candidates for bad, _ in _FORBIDDEN_NETWORKS)


def _in(addr: IPAddress, net: IPNetwork) -> bool:
    # ipaddress does not compare versions in `in`; an IPv4 address can spuriously
    # "belong" to an IPv6 network, so check the version first.
    return addr.version == net.version and addr in net


def in_networks(ip: str, nets: Iterable[IPNetwork]) -> bool:
    """True when `ip`, or an IPv4 address it carries, is in one of `nets`.

    IPv6 addresses that carry an IPv4 address (IPv4-mapped, NAT64, 6to4, Teredo)
    are also checked by that IPv4 address. Raises `PolicyError` for a string that
    is not an IP address.
    """
    addr = _parse_address(ip)
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        candidates.extend(_embedded_v4(addr))
    return any(_in(a, n) for a in candidates for n in nets)


def is_internal(ip: str, extra: Iterable[IPNetwork] = ()) -> bool:
    """True when `ip` is in `INTERNAL_NETWORKS` or `extra` (see `in_networks`)."""
    return in_networks(ip, (*INTERNAL_NETWORKS, *extra))


def _check_network(net: IPNetwork, text: str) -> None:
    """Refuse a rule network that is too wide or reaches a forbidden range."""
    if net.prefixlen == 0:
        raise PolicyError(
            f"allow entry {text!r} allows the whole internet; "
            "name the hosts or networks the step needs"
        )
    minimum = 8 if net.version == 4 else 16
    if net.prefixlen < minimum:
        raise PolicyError(
            f"allow entry {text!r} is wider than /{minimum}; allow a narrower network "
            f"(IPv{net.version} prefixes must be /{minimum} or longer)"
        )
    checks: list[IPNetwork] = [net]
    if isinstance(net, ipaddress.IPv6Network):
        checks.extend(_wrapped_v4(net))
    # Name the most specific reason: "is link-local" beats "includes the metadata address".
    for candidate in checks:
        for bad, why in _FORBIDDEN_NETWORKS:
            if _net_within(candidate, bad):
                raise PolicyError(
                    f"allow entry {text!r} is {why} and sbx never lets a step reach it; "
                    "remove the entry"
                )
    for candidate in checks:
        for bad, why in _FORBIDDEN_NETWORKS:
            if _net_overlaps(candidate, bad):
                raise PolicyError(
                    f"allow entry {text!r} includes {bad} ({why}), which a step never reaches; "
                    "allow a narrower network"
                )


def _wrapped_v4(net: ipaddress.IPv6Network) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks an IPv6 network can carry, one per wrapping range it overlaps.

    ``2002:a9fe:a9fe::/48`` carries 169.254.169.254/32 (6to4); ``2002::/16`` carries every
    IPv4 address, so it reaches the metadata address as surely as that /48 does.
    """
    found: list[ipaddress.IPv4Network] = []
    for wrapper, offset, inverted in _WRAPPERS:
        if not net.overlaps(wrapper):
            continue
        inner = net if net.subnet_of(wrapper) else wrapper
        length = min(max(inner.prefixlen - offset, 0), 32)
        bits = (int(inner.network_address) >> (96 - offset)) & 0xFFFFFFFF
        if inverted:
            bits ^= 0xFFFFFFFF
        mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
        found.append(ipaddress.IPv4Network((bits & mask, length)))
    return found


def _net_overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.overlaps(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.overlaps(b)
    return False


def _net_within(a: IPNetwork, b: IPNetwork) -> bool:
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False

