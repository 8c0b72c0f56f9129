"""Fail-closed probes, run inside the step's namespace with the step's (empty) capabilities.

Each probe tries one way out and reports whether anything came back. A
transparent relay completes TCP handshakes locally, so reachability is judged
by data or by a reaction from the far side (a reset, an ICMP error, a reply),
never by a completed connect alone.

Some claims cannot be decided from inside: that the gateway refused an address
(and not merely had no rule for it), or that a DNS query reached the gateway at
all. Such a probe reports what it needs (`check`: its connection's source port,
the name it asked) and the orchestrator decides it from the gateway's own record
(sbx.sandbox.probe_verdicts). Each result says what counted as reached (`reached_if`).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

Result = dict[str, Any]

# The agent gives up on a gateway that does not accept within 5 s or answer within 5 s
# more (and records that): a relayed probe's verdict always comes within this.
VERDICT_WAIT = 11.0

# What counts as reached, per kind of probe: signed with each result.
REACHED_IF = {
    "relayed": "bytes came back, the connection was refused (the relay always accepts, so a "
               "refusal means interception is missing), or the gateway's record of this "
               "connection is anything but a refusal of an internal address (or is missing)",
    "direct": "bytes came back, the far side refused the connection, or the sandbox "
              "firewall has no record of dropping it",
    "udp": "a reply or an ICMP port-unreachable came back, or the sandbox firewall has no "
           "record of dropping it",
    "icmp": "an echo reply came back, or the sandbox firewall has no record of dropping it",
    "proxy": "the gateway answered 200, or its record of this connection is anything but a "
             "refusal of an internal address (or is missing)",
    "error": "always: a probe that crashed or gave no verdict proves nothing",
    "dns": "an address came back, or the gateway has no record of the query, or recorded it "
           "as allowed (the name is one Docker's embedded DNS answers, so an answer means "
           "the query was not intercepted)",
}


class SourcePorts:
    """Hands each probe a TCP socket bound to a source port no earlier probe used.

    The gateway's record is matched to a relayed probe by its source port. A port the
    kernel frees (the relay's reset closes a probe's connection at once, with no
    TIME_WAIT) can be handed out again while conntrack still holds the old redirected
    connection; the new one then clashes with it in the NAT table and the kernel
    rewrites its source port, so the record carries a port the probe never saw and the
    probe counts as reached. One run of 500 peer probes hit this about one time in ten.
    """

    def __init__(self) -> None:
        self._used: set[tuple[int, int]] = set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()

    def socket(self, family: int) -> socket.socket:
        """A new TCP socket of `family`, bound to a port not handed out before."""
        anywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
        with self._lock:
            for _ in range(256):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.bind((anywhere, 0))
                key = (family, s.getsockname()[1])
                if key not in self._used:
                    self._used.add(key)
                    return s
                # Keep it bound, so the kernel hands out another port next time.
                self._held.append(s)
        raise OSError("no unused source port")

    def close(self) -> None:
        """Release the ports held back."""
        with self._lock:
            for s in self._held:
                s.close()
            self._held.clear()


PORTS = SourcePorts()


def _result(name: str, kind: str, target: str, reached: bool, detail: str,
            how: str, **check: Any) -> Result:
    out: Result = {"name": name, "kind": kind, "target": target, "blocked": not reached,
                   "detail": detail, "reached_if": REACHED_IF[how]}
    if check:
        out["check"] = check
    return out


def _drop(protocol: str, ip: str, port: int | None) -> dict[str, Any]:
    """The check for a probe whose packet the sandbox firewall must drop (and record).

    A silently dropped packet looks like a slow answer; the firewall's record of
    dropping exactly this packet is what tells them apart, so the probe need only wait
    a local round trip for an answer that would prove the drop rule missing.
    """
    return {"drop": {"protocol": protocol, "dst_ip": ip, "dst_port": port}}


def fence(ip: str, port: int) -> dict[str, Any]:
    """Send the fence: one datagram the firewall drops and records after every probe.

    The firewall's records reach the orchestrator in order (one NFLOG queue, read by
    one thread), so once the fence's record is in, every earlier drop record is too.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"sbx-fence", (ip, port))
        except OSError:
            pass  # the orchestrator then waits for a record that never comes: no fence
    return {"protocol": "udp", "dst_ip": ip, "dst_port": port}


def identity() -> dict[str, Any]:
    """Who the probes ran as: uid, gid and the capability sets (all must be empty)."""
    out: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key.startswith("Cap") or key == "NoNewPrivs":
                out[key] = value.strip()
    return out


def dns_canary(name: str, server: str, qname: str, tcp: bool, timeout: float) -> Result:
    """A name the resolver behind the interception would answer must not resolve.

    `qname` is a container on the step network: Docker's embedded DNS (127.0.0.11)
    answers it. Intercepted, the query goes to the gateway, which refuses it.
    """
    from dnslib import QTYPE, DNSRecord  # the runtime image's python3-dnslib

    target = f"{qname} via {server}/{'tcp' if tcp else 'udp'}"
    check = {"dns_name": qname.rstrip(".").lower()}
    try:
        raw = DNSRecord.question(qname, "A").send(server, 53, tcp=tcp, timeout=timeout)
        reply = DNSRecord.parse(raw)
    except Exception as exc:  # timeouts, resets, garbage: nothing came back to use
        return _result(name, "dns", target, False, f"no answer: {type(exc).__name__}: {exc}",
                       "dns", **check)
    addresses = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
    if addresses:
        return _result(name, "dns", target, True, f"resolved to {', '.join(addresses)}",
                       "dns", **check)
    return _result(name, "dns", target, False,
                   f"no address (rcode {reply.header.rcode})", "dns", **check)


def tcp(name: str, ip: str, port: int, timeout: float, relayed: bool) -> Result:
    """Connect and speak; only bytes back or a reset from the far side count as reached.

    No Host header and no name: the relay has to ask the gateway for the address
    itself (CONNECT ip:port), so the gateway's judgement of the address is tested.
    """
    target = f"{ip}:{port}"
    how = "relayed" if relayed else "direct"
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    # Bound first, so the source port is known even if the connect fails.
    with PORTS.socket(family) as s:
        s.settimeout(timeout)
        check: dict[str, Any] = {"src_port": s.getsockname()[1], "dst_ip": ip,
                                 "dst_port": port} if relayed else _drop("tcp", ip, port)
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            # The relay accepts everything: a refusal came from a real far side.
            return _result(name, "tcp", target, True, "connection refused", how, **check)
        except OSError as exc:
            return _result(name, "tcp", target, False, f"no connection: {exc}", how, **check)
        if relayed:
            # The relay resets the connection only once the gateway has judged (and
            # recorded) it. Wait for that verdict: a probe that gave up early would leave
            # its decision to arrive after step_started, counted as the step's own traffic.
            s.settimeout(max(timeout, VERDICT_WAIT))
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = s.recv(64)
        except OSError as exc:
            return _result(name, "tcp", target, False, f"reset or silent: {exc}", how, **check)
        if data:
            return _result(name, "tcp", target, True, f"answered {data[:16]!r}", how, **check)
        return _result(name, "tcp", target, False, "closed without data", how, **check)


def udp(name: str, ip: str, port: int, timeout: float) -> Result:
    """A datagram that reaches a host draws a reply or an ICMP port-unreachable."""
    target = f"{ip}:{port}"
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            s.send(b"sbx-probe")
            time.sleep(0.05)
            s.send(b"sbx-probe")
            s.recv(64)
        except ConnectionRefusedError:
            return _result(name, "udp", target, True, "ICMP port unreachable came back", "udp")
        except OSError as exc:
            return _result(name, "udp", target, False, f"no answer: {exc}", "udp",
                           **_drop("udp", ip, port))
    return _result(name, "udp", target, True, "answered", "udp")


def icmp(name: str, ip: str, timeout: float) -> Result:
    """An echo request through an unprivileged ICMP socket; a reply means reached."""
    v6 = ":" in ip
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        s = socket.socket(family, socket.SOCK_DGRAM, proto)
    except OSError as exc:
        return _result(name, "icmp", ip, False, f"cannot open an ICMP socket: {exc}", "icmp")
    with s:
        s.settimeout(timeout)
        packet = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, 1) + b"sbx-probe"
        try:
            s.sendto(packet, (ip, 0))
            s.recv(64)
        except OSError as exc:
            return _result(name, "icmp", ip, False, f"no reply: {exc}", "icmp",
                           **_drop("icmpv6" if v6 else "icmp", ip, None))
    return _result(name, "icmp", ip, True, "echo reply", "icmp")


def proxy_internal(proxy: str, target: str, timeout: float) -> Result:
    """The gateway, used as an explicit proxy, must refuse an internal address as such."""
    host, _, port = proxy.rpartition(":")
    dst_ip, _, dst_port = target.rpartition(":")
    with PORTS.socket(socket.AF_INET) as s:
        # The gateway is there to answer: a timeout would be taken as reached (fail closed),
        # so a loaded machine gets the verdict wait, not the probe timeout.
        s.settimeout(max(timeout, VERDICT_WAIT))
        check = {"src_port": s.getsockname()[1], "dst_ip": dst_ip, "dst_port": int(dst_port)}
        try:
            s.connect((host, int(port)))
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = s.recv(256)
        except OSError as exc:
            return _result("proxy-internal", "tcp", target, False, f"proxy unreachable: {exc}",
                           "proxy", **check)
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    return _result("proxy-internal", "tcp", target, b" 200 " in head[:16], status or "no reply",
                   "proxy", **check)


def plan(cfg: dict[str, Any]) -> list[Callable[[], Result]]:
    """The probes for one sandbox, from the orchestrator's description of it."""
    t = float(cfg.get("timeout", 1.0))
    probes: list[Callable[[], Result]] = []
    # Docker's embedded DNS answers these names (containers on the step network): only
    # interception keeps the answer away. One over UDP, one over TCP, each its own name
    # so the gateway's record of each query can be told apart.
    canaries = cfg.get("dns_canaries", {})
    if canaries.get("udp"):
        probes.append(partial(dns_canary, "dns-canary-udp", "127.0.0.11", canaries["udp"],
                              False, t))
    if canaries.get("tcp"):
        probes.append(partial(dns_canary, "dns-canary-tcp", "127.0.0.11", canaries["tcp"],
                              True, t))
    for ip in cfg.get("egress_ips", []):
        probes += [partial(tcp, "egress-raw-ip", ip, 80, t, relayed=True),
                   partial(udp, "egress-udp", ip, 33434, t),
                   partial(icmp, "egress-icmp", ip, t)]
    for ip in cfg.get("host_ips", []):
        probes += [partial(tcp, "host-bridge", ip, 80, t, relayed=False),
                   partial(icmp, "host-bridge-icmp", ip, t),
                   partial(udp, "host-bridge-udp", ip, 33434, t)]
    for ip in cfg.get("peer_ips", []):
        # Another live step's gateway and agent: its proxy, any web port, UDP and ICMP.
        # (UDP to port 53 is not tried: every DNS packet is relayed to the step's own
        # gateway, whatever its destination, so it proves nothing about the peer.)
        probes += [partial(tcp, "peer-step", ip, 80, t, relayed=True),
                   partial(tcp, "peer-step-proxy", ip, int(cfg.get("peer_proxy_port", 3128)), t,
                           relayed=True),
                   partial(udp, "peer-step-udp", ip, 33434, t),
                   partial(icmp, "peer-step-icmp", ip, t)]
    for ip in cfg.get("ipv6_ips", []):
        probes += [partial(tcp, "ipv6", ip, 80, t, relayed=False),
                   partial(udp, "ipv6-udp", ip, 33434, t)]
    if cfg.get("proxy") and cfg.get("host_ips"):
        probes.append(partial(proxy_internal, cfg["proxy"], f"{cfg['host_ips'][0]}:80", t))
    return probes


def main() -> None:
    """Run every probe in parallel and print one JSON document."""
    # With --stdin the process was started ahead and waits here for its description
    # (sent once the gateway and agent are ready); end of input means no probes: exit.
    source = sys.stdin.readline() if "--stdin" in sys.argv[1:] else os.environ["SBX_CONFIG"]
    if not source:
        raise SystemExit(2)
    cfg = json.loads(source)
    probes = plan(cfg)
    results: list[Result | None] = [None] * len(probes)

    def run(i: int) -> None:
        try:
            results[i] = probes[i]()
        except Exception as exc:  # a probe that crashed proves nothing: count it as reached
            results[i] = _result(f"probe-{i}", "error", "", True, f"{type(exc).__name__}: {exc}",
                                 "error")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(probes))]
    for th in threads:
        th.start()
    deadline = time.monotonic() + max(float(cfg.get("timeout", 1.0)), VERDICT_WAIT) + 4
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    PORTS.close()
    # A probe still going proves nothing either: fail closed.
    final = [r if r is not None else _result(f"probe-{i}", "timeout", "", True, "no verdict",
                                             "error")
             for i, r in enumerate(results)]
    report: dict[str, Any] = {"uid": os.getuid(), "identity": identity(), "probes": final}
    if cfg.get("fence"):
        # Every probe has ended (or been given up on above): its packets are out.
        report["fence"] = fence(cfg["fence"]["ip"], int(cfg["fence"]["port"]))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
