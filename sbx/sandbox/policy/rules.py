"""Allow rules: one entry parsed, refused with its fix, and matched against a name or address.

STANDARD LIBRARY ONLY: copied into the gateway image (see the package docstring).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from .actions import Actions, make_actions
from .addresses import IPNetwork, _check_network, _in, _parse_address, _unwrap, is_forbidden
from .errors import PolicyError
from .names import _forbidden_name, _looks_numeric, normalize_name


@dataclass(frozen=True)
class Rule:
    """One allow entry.

    Exactly one of `host` (exact normalised name), `suffix` (``*.suffix``: any name
    strictly below it, on label boundaries) or `network` (IP/CIDR) is set. `port`
    None means any port. `nameless` (host rules with a port only) also allows a
    connection that names nothing in its first bytes (ssh, say) to an address the
    host resolves to at that moment; without it a name rule needs the name in the
    connection's TLS SNI, HTTP Host or CONNECT line.

    `actions` (None: host-level) makes the rule action-level: HTTP methods and paths,
    checked request by request, with TLS inspection. `to_dict` omits default fields, so
    existing policies keep their digest, and `from_dict` refuses keys it does not know, so
    an older gateway fails closed on a policy whose restrictions it could not enforce
    instead of ignoring them.
    """

    text: str
    source: str = ""
    host: str | None = None
    suffix: str | None = None
    network: IPNetwork | None = None
    port: int | None = None
    nameless: bool = False
    # Action-level rule (methods, paths, TLS inspection): see `actions`. None: host-level.
    actions: Actions | None = None

    @property
    def label(self) -> str:
        """The rule as events name it: its text, plus its methods and paths when it has them."""
        return self.text if self.actions is None else f"{self.text} {self.actions.describe()}"

    def __post_init__(self) -> None:
        kinds = sum(x is not None for x in (self.host, self.suffix, self.network))
        if kinds != 1:
            raise PolicyError(
                f"rule {self.text!r} must set exactly one of host, suffix or network; "
                "build rules with parse_rule()"
            )
        if self.port is not None and not 1 <= self.port <= 65535:
            raise PolicyError(f"rule {self.text!r} has port {self.port}; use a port in 1..65535")
        if self.nameless and (self.host is None or self.port is None):
            raise PolicyError(
                f"allow entry {self.text!r} is nameless, which needs one host name and a port "
                "(an IP rule already allows by address); write host:port with nameless: true"
            )
        if self.nameless and self.actions is not None:
            raise PolicyError(
                f"allow entry {self.text!r} is nameless and has methods/paths/inspect: a "
                "connection that names nothing cannot be checked request by request; drop one"
            )

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
            parsed = _parse_address(ip)
        except PolicyError:
            return False
        return _in(_unwrap(parsed), self.network) and not is_forbidden(parsed)

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
        if self.nameless:
            out["nameless"] = True
        if self.actions is not None:
            out["inspect"] = True
            if self.actions.methods is not None:
                out["methods"] = list(self.actions.methods)
            if self.actions.paths is not None:
                out["paths"] = [p.text for p in self.actions.paths]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Rebuild a rule by re-parsing its text; refuses unknown keys or fields that disagree.

        Re-parsing means the gateway re-validates every rule it receives rather
        than trusting the host side.
        """
        known = {"text", "source", "host", "suffix", "network", "port", "nameless", "methods",
                 "paths", "inspect"}
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
        nameless = data.get("nameless", False)
        if not isinstance(nameless, bool):
            raise PolicyError("rule 'nameless' must be true or false; regenerate the policy")
        rule = parse_rule(text, source, nameless=nameless)
        if data.get("inspect") is True:
            rule = with_actions(rule, data.get("methods"), data.get("paths"))
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


def parse_rule(text: str, source: str = "", nameless: bool = False) -> Rule:
    """Parse one allow entry; raise `PolicyError` (what is wrong and the fix) when refused.

    `source` is where the entry was written ("file:line"), carried into every
    decision event so an alert names the rule that matched. `nameless`: see `Rule`.
    """
    rule = _parse_rule(text, source)
    if nameless:
        return Rule(text=rule.text, source=rule.source, host=rule.host, suffix=rule.suffix,
                    network=rule.network, port=rule.port, nameless=True)
    return rule


def _parse_rule(text: str, source: str) -> Rule:
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




def with_actions(rule: Rule, methods: object = None, paths: object = None) -> Rule:
    """`rule` made action-level: each HTTP request is checked against `methods` and `paths`
    (None: any), and TLS to it is inspected. `PolicyError` for a bad method or pattern."""
    return replace(rule, actions=make_actions(methods, paths))
