"""Egress policy: allow rules, name normalisation and the address ranges a step never reaches.

STANDARD LIBRARY ONLY. This module is copied into the gateway image and imported
there, where neither pydantic nor any other third-party package exists. The host
side (``sbx.pipelines.spec``) adds checks that need third-party data, such as the
public-suffix refusal for wildcards.

An allow entry is one of::

    host              host:port
    *.suffix          *.suffix:port
    1.2.3.4           1.2.3.4:443
    10.0.0.0/8        10.0.0.0/8:443
    2001:db8::1       [2001:db8::1]:443
    2001:db8::/32     [2001:db8::/32]:443

Names are case-folded, trailing dots removed and non-ASCII labels IDNA-encoded,
so a verdict never depends on how a name was spelled.
"""

from __future__ import annotations

import encodings.idna
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MODES: Final = ("enforce", "audit")


class PolicyError(ValueError):
    """An allow entry or policy is invalid; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------- names

# Underscore is allowed because real DNS names (service records, some internal hosts)
# use it; everything else outside LDH is refused so no resolver parses a name differently.
_LABEL_RE: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# A label that inet_aton() would read as a number: decimal, octal (leading 0) or 0x-hex.
_NUMERIC_LABEL_RE: Final = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_IDNA_DOTS: Final = ("\u3002", "\uff0e", "\uff61")


def normalize_name(name: str) -> str:
    """Return the canonical spelling of a DNS name.

    Case-folds, strips trailing dots and IDNA-encodes non-ASCII labels to punycode.
    Raises `PolicyError` for an empty name, an empty label, a label longer than 63
    characters, a name longer than 253 characters, or a character outside
    letters, digits, '-' and '_'. Idempotent: ``normalize_name(normalize_name(x)) ==
    normalize_name(x)``.
    """
    if not isinstance(name, str):
        raise PolicyError(f"host name must be a string, not {type(name).__name__}; quote it")
    # IDNA treats these full-width and ideographic full stops as label separators.
    for dot in _IDNA_DOTS:
        name = name.replace(dot, ".")
    folded = name.casefold().rstrip(".")
    if not folded:
        raise PolicyError(f"host name {name!r} is empty; write a name such as example.com")
    labels = folded.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise PolicyError(
                f"host name {name!r} has an empty label (two dots in a row or a leading dot); "
                "remove the extra dot"
            )
        if not label.isascii():
            try:
                # encodings.idna implements IDNA 2003 ToASCII (nameprep + punycode) per label.
                label = encodings.idna.ToASCII(label).decode("ascii")
            except UnicodeError as exc:
                raise PolicyError(
                    f"host name {name!r} has a label that cannot be IDNA-encoded ({exc}); "
                    "write the name in punycode (xn--...)"
                ) from None
            label = label.casefold()
        if not _LABEL_RE.fullmatch(label):
            raise PolicyError(
                f"host name {name!r} has an invalid label {label!r}; labels are 1-63 letters, "
                "digits, '-' or '_' and do not start or end with '-'"
            )
        out.append(label)
    result = ".".join(out)
    if len(result) > 253:
        raise PolicyError(f"host name {name[:40]!r}... is longer than 253 characters; shorten it")
    return result


def _looks_numeric(name: str) -> bool:
    """True when a resolver could read `name` as an IP address (e.g. '2852039166', '127.1').

    Checking the last label is enough: no top-level domain is numeric, and every
    inet_aton() spelling ends in a numeric or 0x label.
    """
    return bool(_NUMERIC_LABEL_RE.fullmatch(name.rsplit(".", 1)[-1]))


# --------------------------------------------------------------------------- addresses


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
        "::ffff:0:0/96",
    )
)
"""Ranges the gateway refuses unless an IP/CIDR rule names them explicitly.

198.18.0.0/15 (benchmark) and the documentation ranges are deliberately absent:
the test suite's simulated internet lives on 198.18.0.0/24.
"""

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")

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
    )
)

_FORBIDDEN_NAMES: Final[Mapping[str, str]] = {
    "localhost": "loopback",
    "ip6-localhost": "loopback",
    "ip6-loopback": "loopback",
    "metadata": "the cloud metadata service",
    "metadata.google.internal": "the cloud metadata service",
    "instance-data": "the cloud metadata service",
    "instance-data.ec2.internal": "the cloud metadata service",
    "host.docker.internal": "the Docker host",
    "gateway.docker.internal": "the Docker host",
}
# Whole subtrees that resolve to loopback (RFC 6761).
_FORBIDDEN_SUFFIXES: Final[Mapping[str, str]] = {"localhost": "loopback"}


def _parse_address(ip: str) -> IPAddress:
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
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
    """IPv4 addresses an IPv6 address can route to: mapped, NAT64, 6to4, Teredo client."""
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr in _NAT64:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.append(addr.teredo[1])
    return found


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
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        for wrapper in (_NAT64, ipaddress.IPv6Network("::ffff:0:0/96")):
            if net.subnet_of(wrapper):
                low = int(net.network_address) & 0xFFFFFFFF
                checks.append(ipaddress.IPv4Network((low, net.prefixlen - 96)))
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


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One allow entry.

    Exactly one of `host` (exact normalised name), `suffix` (``*.suffix``: any name
    strictly below it, on label boundaries) or `network` (IP/CIDR) is set. `port`
    None means any port.

    Extension point: action-level rules (HTTP method and path, enforced with TLS
    inspection) will be added as further optional fields defaulting to None
    (e.g. ``methods: tuple[str, ...] | None``, ``path_prefix: str | None``).
    `to_dict` omits None fields, so existing policies keep their digest, and
    `from_dict` refuses keys it does not know, so an older gateway fails closed
    on a policy whose restrictions it could not enforce instead of ignoring them.
    """

    text: str
    source: str = ""
    host: str | None = None
    suffix: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        kinds = sum(x is not None for x in (self.host, self.suffix, self.network))
        if kinds != 1:
            raise PolicyError(
                f"rule {self.text!r} must set exactly one of host, suffix or network; "
                "build rules with parse_rule()"
            )
        if self.port is not None and not 1 <= self.port <= 65535:
            raise PolicyError(f"rule {self.text!r} has port {self.port}; use a port in 1..65535")

    def _port_ok(self, port: int | None) -> bool:
        return self.port is None or port is None or self.port == port

    def matches_name(self, name: str, port: int | None) -> bool:
        """True when this host/suffix rule allows `name` on `port` (None: any port, for DNS)."""
        if self.network is not None or not self._port_ok(port):
            return False
        try:
            canonical = normalize_name(name)
        except PolicyError:
            return False
        if self.host is not None:
            return canonical == self.host
        assert self.suffix is not None
        return canonical.endswith("." + self.suffix)

    def matches_ip(self, ip: str, port: int | None) -> bool:
        """True when this IP/CIDR rule allows `ip` on `port` (IPv4-mapped IPv6 unwrapped)."""
        if self.network is None or not self._port_ok(port):
            return False
        try:
            addr = _unwrap(_parse_address(ip))
        except PolicyError:
            return False
        return _in(addr, self.network)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; None fields are omitted so new optional fields keep old digests."""
        out: dict[str, Any] = {"text": self.text, "source": self.source}
        if self.host is not None:
            out["host"] = self.host
        if self.suffix is not None:
            out["suffix"] = self.suffix
        if self.network is not None:
            out["network"] = str(self.network)
        if self.port is not None:
            out["port"] = self.port
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Rebuild a rule by re-parsing its text; refuses unknown keys or fields that disagree.

        Re-parsing means the gateway re-validates every rule it receives rather
        than trusting the host side.
        """
        known = {"text", "source", "host", "suffix", "network", "port"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(
                f"rule has unknown field(s) {', '.join(unknown)}; upgrade sbx on this side "
                "(a rule is never applied without all of its restrictions)"
            )
        text = data.get("text")
        source = data.get("source", "")
        if not isinstance(text, str) or not isinstance(source, str):
            raise PolicyError("rule 'text' and 'source' must be strings; regenerate the policy")
        rule = parse_rule(text, source)
        if rule.to_dict() != dict(data):
            raise PolicyError(
                f"rule {text!r} does not match its stored fields; regenerate the policy with sbx"
            )
        return rule


_PORT_RE: Final = re.compile(r"^[0-9]{1,5}$")


def _parse_port(text: str, entry: str) -> int:
    if not _PORT_RE.fullmatch(text):
        raise PolicyError(
            f"allow entry {entry!r} has port {text!r}; write a decimal port in 1..65535"
        )
    port = int(text)
    if not 1 <= port <= 65535:
        raise PolicyError(f"allow entry {entry!r} has port {port}; use a port in 1..65535")
    return port


def _split(text: str) -> tuple[str, int | None]:
    """Split an entry into (host part, port)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PolicyError(f"allow entry {text!r} has '[' without ']'; write [2001:db8::1]:443")
        inner, rest = text[1:close], text[close + 1 :]
        if ":" not in inner:
            raise PolicyError(
                f"allow entry {text!r} uses brackets, which are only for IPv6 addresses; "
                "write host:port without them"
            )
        if not rest:
            return inner, None
        if not rest.startswith(":"):
            raise PolicyError(f"allow entry {text!r} has text after ']'; write [address]:port")
        return inner, _parse_port(rest[1:], text)
    if text.count(":") > 1:
        # Unbracketed IPv6: no port can be given (the last group would be ambiguous).
        return text, None
    if ":" in text:
        host, port = text.rsplit(":", 1)
        return host, _parse_port(port, text)
    return text, None


def _parse_ip(host: str, port: int | None, text: str, source: str) -> Rule | None:
    """Return an IP/CIDR rule when `host` is an address or network, else None."""
    if "%" in host:
        raise PolicyError(f"allow entry {text!r} has an IPv6 zone index; remove the '%...' part")
    if "/" in host:
        left = host.split("/", 1)[0]
        try:
            ipaddress.ip_address(left)
        except ValueError:
            raise PolicyError(
                f"allow entry {text!r} is not an IP network, and host names cannot carry a path; "
                "write host[:port] or ip/prefix (e.g. 10.0.0.0/8)"
            ) from None
    try:
        if "/" in host:
            net: IPNetwork = ipaddress.ip_network(host, strict=True)
        else:
            addr = ipaddress.ip_address(host)
            net = ipaddress.ip_network(addr)
    except ValueError as exc:
        if "/" in host or ":" in host:
            if "host bits set" in str(exc):
                try:
                    fixed = ipaddress.ip_network(host, strict=False)
                except ValueError:
                    fixed = None
                raise PolicyError(
                    f"allow entry {text!r} has host bits set; write the network address"
                    + (f" ({fixed})" if fixed is not None else "")
                ) from None
            raise PolicyError(
                f"allow entry {text!r} is not a valid IP address or network ({exc}); "
                "write e.g. 10.0.0.0/8 or 2001:db8::/32"
            ) from None
        return None
    _check_network(net, text)
    # Canonical form: an IPv4-mapped IPv6 rule is an IPv4 rule (the matcher unwraps too).
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = ipaddress.IPv6Network("::ffff:0:0/96")
        if net.subnet_of(mapped):
            net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return Rule(text=text, source=source, network=net, port=port)


def parse_rule(text: str, source: str = "") -> Rule:
    """Parse one allow entry; raise `PolicyError` (what is wrong and the fix) when refused.

    `source` is where the entry was written ("file:line"), carried into every
    decision event so an alert names the rule that matched.
    """
    if not isinstance(text, str):
        raise PolicyError(f"allow entry must be a string, not {type(text).__name__}; quote it")
    entry = text.strip()
    if not entry:
        raise PolicyError(
            "allow entry is empty; write host[:port], *.suffix[:port] or ip[/prefix][:port]"
        )
    if any(c.isspace() for c in entry):
        raise PolicyError(f"allow entry {text!r} contains whitespace; write one entry per item")
    if "://" in entry:
        raise PolicyError(
            f"allow entry {text!r} is a URL; write host[:port] (e.g. example.com:443)"
        )

    host_part, port = _split(entry)

    ip_rule = _parse_ip(host_part, port, text, source)
    if ip_rule is not None:
        return ip_rule
    if "/" in host_part or "[" in host_part or "]" in host_part:
        raise PolicyError(
            f"allow entry {text!r} is neither a host name nor an IP network; "
            "write host[:port], *.suffix[:port] or ip[/prefix][:port]"
        )

    if host_part == "*" or host_part.rstrip(".") == "*":
        raise PolicyError(f"allow entry {text!r} allows every host; name the hosts the step needs")
    wildcard = host_part.startswith("*.")
    body = host_part[2:] if wildcard else host_part
    if "*" in body:
        raise PolicyError(
            f"allow entry {text!r} has '*' somewhere other than as the whole first label; "
            "write *.example.com"
        )
    name = normalize_name(body)

    # A trailing dot or odd case must not dodge the address checks below.
    if not wildcard:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            retried = _parse_ip(name, port, text, source)
            assert retried is not None
            return retried
    if _looks_numeric(name):
        raise PolicyError(
            f"allow entry {text!r} is a numeric address in a non-standard spelling; "
            "write the address as dotted decimal (e.g. 192.0.2.1)"
        )

    refusal = _forbidden_name(name, wildcard)
    if refusal is not None:
        raise PolicyError(f"allow entry {text!r} {refusal}")
    if wildcard:
        if "." not in name:
            raise PolicyError(
                f"allow entry {text!r} covers a whole top-level domain; "
                f"name a site, e.g. *.example.{name}"
            )
        return Rule(text=text, source=source, suffix=name, port=port)
    return Rule(text=text, source=source, host=name, port=port)


def _forbidden_name(name: str, wildcard: bool) -> str | None:
    """Why a host (or, with `wildcard`, every name below it) is never reachable, else None."""
    for bad, what in _FORBIDDEN_SUFFIXES.items():
        if name == bad or name.endswith("." + bad):
            return f"is {what} and sbx never lets a step reach it; remove the entry"
    if not wildcard:
        what_name = _FORBIDDEN_NAMES.get(name)
        if what_name is None:
            return None
        return f"is {what_name} and sbx never lets a step reach it; remove the entry"
    for bad, what in _FORBIDDEN_NAMES.items():
        if bad.endswith("." + name):
            return f"covers {bad}, which is {what}; remove the entry or name the hosts you need"
    return None


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """A step's egress policy: the mode and its allow rules, first match wins."""

    mode: str = "enforce"
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"policy mode {self.mode!r} is unknown; use 'enforce' or 'audit'")
        rules: Any = self.rules
        if not isinstance(rules, tuple):
            # Keep the dataclass hashable and immutable whatever the caller passed.
            object.__setattr__(self, "rules", tuple(rules))

    def match_name(self, name: str, port: int | None) -> Rule | None:
        """The first host/suffix rule allowing `name` on `port`, or None."""
        return next((r for r in self.rules if r.matches_name(name, port)), None)

    def match_ip(self, ip: str, port: int | None) -> Rule | None:
        """The first IP/CIDR rule allowing `ip` on `port`, or None."""
        return next((r for r in self.rules if r.matches_ip(ip, port)), None)

    def allows_dns(self, name: str) -> Rule | None:
        """The first host/suffix rule allowing `name` on any port, or None (then NXDOMAIN)."""
        return self.match_name(name, None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the input of `digest`."""
        return {"mode": self.mode, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Rebuild and re-validate a policy from `to_dict` output."""
        unknown = sorted(set(data) - {"mode", "rules"})
        if unknown:
            raise PolicyError(
                f"policy has unknown field(s) {', '.join(unknown)}; upgrade sbx on this side"
            )
        rules = data.get("rules", [])
        if not isinstance(rules, list | tuple) or not all(isinstance(r, Mapping) for r in rules):
            raise PolicyError("policy 'rules' must be a list of objects; regenerate the policy")
        mode = data.get("mode", "enforce")
        if not isinstance(mode, str):
            raise PolicyError("policy 'mode' must be a string; use 'enforce' or 'audit'")
        return cls(mode=mode, rules=tuple(Rule.from_dict(r) for r in rules))

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of `to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
