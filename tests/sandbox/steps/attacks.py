"""Egress attacks run inside a step: each tries one way out and reports what came back.

Usage: python3 attacks.py CONFIG_JSON OUT_JSON. Reachability is judged by data or
by a reaction from the far side, never by a completed local handshake.
"""

import json
import os
import socket
import struct
import sys
import urllib.parse
from pathlib import Path

cfg = json.loads(Path(sys.argv[1]).read_text())
results: dict[str, dict[str, object]] = {}


def record(name: str, reached: bool, detail: str) -> None:
    results[name] = {"blocked": not reached, "detail": detail}


def tcp_exchange(name: str, ip: str, port: int, payload: bytes = b"GET / HTTP/1.0\r\n\r\n") -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((ip, port))
            s.sendall(payload)
            data = s.recv(256)
    except ConnectionRefusedError as exc:
        record(name, True, f"refused by the far side: {exc}")
        return
    except OSError as exc:
        record(name, False, f"{type(exc).__name__}: {exc}")
        return
    record(name, bool(data), repr(data[:60]))


def resolve(name: str, host: str) -> None:
    try:
        info = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    except OSError as exc:
        record(name, False, f"does not resolve: {exc}")
        return
    record(name, True, f"resolved to {info[0][4][0]}")


def proxy_connect(name: str, target: str) -> None:
    proxy = urllib.parse.urlparse(os.environ["SBX_PROXY"])
    try:
        with socket.create_connection((proxy.hostname, proxy.port), timeout=5) as s:
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = s.recv(256)
            if b" 200 " not in head[:16]:
                record(name, False, head.split(b"\r\n")[0].decode())
                return
            # CONNECT to an address is answered before the bytes that name the destination
            # are judged: reached only if the far side answers them.
            host = target.rsplit(":", 1)[0]
            s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            body = s.recv(256)
    except OSError as exc:
        record(name, False, f"{type(exc).__name__}: {exc}")
        return
    record(name, bool(body), f"after 200: {body[:60]!r}")


def udp_send(name: str, ip: str, port: int, payload: bytes) -> bytes | None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        try:
            s.connect((ip, port))
            s.send(payload)
            answer = s.recv(4096)
        except ConnectionRefusedError:
            record(name, True, "ICMP port unreachable came back")
            return None
        except OSError as exc:
            record(name, False, f"{type(exc).__name__}: {exc}")
            return None
    record(name, True, f"answered {len(answer)} bytes")
    return answer


def ping(name: str, ip: str) -> None:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    except OSError as exc:
        record(name, False, f"no ICMP socket: {exc}")
        return
    with s:
        s.settimeout(3)
        try:
            s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"sbx", (ip, 0))
            s.recv(64)
        except OSError as exc:
            record(name, False, f"{type(exc).__name__}: {exc}")
            return
    record(name, True, "echo reply")


def dns(name: str, server: str) -> None:
    """Send a prepared query; an answer is fine only if it is NXDOMAIN (checked by the test)."""
    query = bytes.fromhex(cfg["dns_query"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        try:
            s.sendto(query, (server, 53))
            answer = s.recv(4096)
        except OSError as exc:
            record(name, False, f"{type(exc).__name__}: {exc}")
            return
    results[name] = {"answer": answer.hex()}


def default_gateway() -> str:
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    raise RuntimeError("no default route")


for attack in cfg["attacks"]:
    kind, args = attack[0], attack[1:]
    name = "-".join(str(a) for a in attack)
    if kind == "tcp":
        tcp_exchange(name, args[0], int(args[1]))
    elif kind == "resolve":
        resolve(name, args[0])
    elif kind == "proxy":
        proxy_connect(name, args[0])
    elif kind == "udp":
        udp_send(name, args[0], int(args[1]), b"exfiltrate")
    elif kind == "icmp":
        ping(name, args[0])
    elif kind == "dns":
        dns(name, args[0])
    elif kind == "bridge-tcp":
        tcp_exchange(name, default_gateway(), int(args[0]))
    elif kind == "bridge-icmp":
        ping(name, default_gateway())
    elif kind == "bridge-proxy":
        proxy_connect(name, f"{default_gateway()}:{args[0]}")

Path(sys.argv[2]).write_text(json.dumps({"results": results, "bridge": default_gateway()}))
