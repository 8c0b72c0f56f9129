"""Fail-closed probes, run inside the step's namespace with the step's (empty) capabilities.

Each probe tries one way out and reports whether anything came back. A
transparent relay completes TCP handshakes locally, so reachability is judged
by data or by a reaction from the far side (a reset, an ICMP error, a reply),
never by a completed connect alone.
"""

from __future__ import annotations

import json
import os
import secrets
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


def _result(name: str, kind: str, target: str, reached: bool, detail: str) -> Result:
    return {"name": name, "kind": kind, "target": target, "blocked": not reached, "detail": detail}


def dns_denied(name: str, timeout: float) -> Result:
    """A name no rule allows must not resolve."""
    socket.setdefaulttimeout(timeout)
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except OSError as exc:
        return _result("dns-denied", "dns", name, False, f"no answer: {exc}")
    return _result("dns-denied", "dns", name, True, f"resolved to {infos[0][4][0]}")


def tcp(name: str, ip: str, port: int, timeout: float, relayed: bool) -> Result:
    """Connect and speak; only bytes back or a reset from the far side count as reached."""
    target = f"{ip}:{port}"
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            # Nothing in the sandbox refuses: a refusal came from the destination.
            return _result(name, "tcp", target, not relayed, "connection refused")
        except OSError as exc:
            return _result(name, "tcp", target, False, f"no connection: {exc}")
        if relayed:
            # The relay resets the connection only once the gateway has judged (and
            # recorded) it. Wait for that verdict: a probe that gave up early would leave
            # its decision to arrive after step_started, counted as the step's own traffic.
            s.settimeout(max(timeout, VERDICT_WAIT))
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: sbx-probe\r\n\r\n")
            data = s.recv(64)
        except OSError as exc:
            return _result(name, "tcp", target, False, f"reset or silent: {exc}")
        if data:
            return _result(name, "tcp", target, True, f"answered {data[:16]!r}")
        return _result(name, "tcp", target, False, "closed without data")


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
            return _result(name, "udp", target, True, "ICMP port unreachable came back")
        except OSError as exc:
            return _result(name, "udp", target, False, f"no answer: {exc}")
    return _result(name, "udp", target, True, "answered")


def icmp(name: str, ip: str, timeout: float) -> Result:
    """An echo request through an unprivileged ICMP socket; a reply means reached."""
    v6 = ":" in ip
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        s = socket.socket(family, socket.SOCK_DGRAM, proto)
    except OSError as exc:
        return _result(name, "icmp", ip, False, f"cannot open an ICMP socket: {exc}")
    with s:
        s.settimeout(timeout)
        packet = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0, 1) + b"sbx-probe"
        try:
            s.sendto(packet, (ip, 0))
            s.recv(64)
        except OSError as exc:
            return _result(name, "icmp", ip, False, f"no reply: {exc}")
    return _result(name, "icmp", ip, True, "echo reply")


def proxy_internal(proxy: str, target: str, timeout: float) -> Result:
    """The gateway, used as an explicit proxy, must refuse an internal address."""
    host, _, port = proxy.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = s.recv(256)
    except OSError as exc:
        return _result("proxy-internal", "tcp", target, False, f"proxy unreachable: {exc}")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    return _result("proxy-internal", "tcp", target, b" 200 " in head[:16], status)


def plan(cfg: dict[str, Any]) -> list[Callable[[], Result]]:
    """The probes for one sandbox, from the orchestrator's description of it."""
    t = float(cfg.get("timeout", 1.0))
    denied = f"sbx-probe-{secrets.token_hex(6)}.invalid"
    probes: list[Callable[[], Result]] = [partial(dns_denied, denied, t)]
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
    cfg = json.loads(os.environ["SBX_CONFIG"])
    probes = plan(cfg)
    results: list[Result | None] = [None] * len(probes)

    def run(i: int) -> None:
        try:
            results[i] = probes[i]()
        except Exception as exc:  # a probe that crashed proves nothing: count it as reached
            results[i] = _result(f"probe-{i}", "error", "", True, f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(probes))]
    for th in threads:
        th.start()
    # A resolver that never answers can stall getaddrinfo for many seconds: bound the wait.
    deadline = time.monotonic() + max(float(cfg.get("timeout", 1.0)), VERDICT_WAIT) + 4
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    final = [r if r is not None else _result(f"probe-{i}", "timeout", "", False, "no verdict")
             for i, r in enumerate(results)]
    json.dump({"uid": os.getuid(), "probes": final}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
