"""Name-pinning attacks from inside a step, against the shared-address host.

Usage: python3 pinning.py OUT.json. The policy allows `allowed.sbx.test` (8443, 8080,
and 2222 nameless); `denied.sbx.test` lives on the same address. Each case tries to
reach the denied tenant (or anything, for the nameless cases) and records what came
back, its time window and its source port, for the test to match with events.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

PROXY = urllib.parse.urlparse(os.environ["SBX_PROXY"])
ALLOWED, DENIED = "allowed.sbx.test", "denied.sbx.test"
Result = dict[str, Any]


def address() -> str:
    return socket.getaddrinfo(ALLOWED, 8443, socket.AF_INET)[0][4][0]


def read_all(s: Any, limit: int = 65536) -> bytes:
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(limit - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def relay(port: int) -> socket.socket:
    """A connection to the shared address: the agent's transparent relay takes it."""
    return socket.create_connection((address(), port), timeout=8)


def proxy_connect(target: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection((PROXY.hostname, PROXY.port), timeout=8)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, head


def records(message: bytes, cuts: list[int]) -> bytes:
    out, edges = b"", sorted({c for c in cuts if 0 < c < len(message)})
    for a, b in zip([0, *edges], [*edges, len(message)], strict=True):
        out += b"\x16\x03\x01" + (b - a).to_bytes(2, "big") + message[a:b]
    return out


def with_padding(message: bytes, size: int) -> bytes:
    """The ClientHello `message` with an unknown extension of `size` bytes first, so the
    server name comes after the first 16 KiB record."""
    body = message[4:]
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    exts = (0x4444).to_bytes(2, "big") + size.to_bytes(2, "big") + b"\0" * size + body[pos + 2:]
    body = body[:pos] + len(exts).to_bytes(2, "big") + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_request(sock: socket.socket, sni: str | None, host: str,
                frame: Callable[[bytes], bytes] | None = None) -> bytes:
    """TLS over `sock` with memory BIOs (so the hello can be re-framed), then GET."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    first = True
    got = b""
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = outgoing.read()
            if first and frame is not None:
                out = frame(out[5:5 + int.from_bytes(out[3:5], "big")])
            first = False
            sock.sendall(out)
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
            incoming.write(chunk)
    sock.sendall(outgoing.read())
    tls.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    sock.sendall(outgoing.read())
    data = b""
    while True:
        try:
            data += tls.read(65536)
        except ssl.SSLWantReadError:
            chunk = sock.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    return data


# --------------------------------------------------------------------------- cases


def silence_then_sni(_: Result) -> bytes:
    """The issue's first attack: silent past the old 1.5 s sniff window, then SNI denied."""
    s = relay(8443)
    time.sleep(2.5)
    return tls_request(s, DENIED, DENIED)


def connect_ip_then_sni(_: Result) -> bytes:
    s, head = proxy_connect(f"{address()}:8443")
    if b" 200 " not in head[:16]:
        return b""
    return tls_request(s, DENIED, DENIED)


def split_hello(_: Result) -> bytes:
    """The hello over two records, cut inside the server name."""
    def frame(message: bytes) -> bytes:
        return records(message, [message.index(DENIED.encode()) + 3])
    return tls_request(relay(8443), DENIED, DENIED, frame)


def oversize_hello(_: Result) -> bytes:
    """Over the parser's bound (and over one record): once 'no name', judged by address."""
    def frame(message: bytes) -> bytes:
        return records(with_padding(message, 20000), [16384])
    return tls_request(relay(8443), DENIED, DENIED, frame)


def raw(port: int, payload: bytes) -> bytes:
    s = relay(port)
    s.sendall(payload)
    return read_all(s)


def unknown_method(_: Result) -> bytes:
    return raw(8080, f"FOO / HTTP/1.1\r\nHost: {DENIED}\r\nConnection: close\r\n\r\n".encode())


def bare_lf_relay(_: Result) -> bytes:
    return raw(8080, f"GET / HTTP/1.1\nHost: {DENIED}\nConnection: close\n\n".encode())


def duplicate_host_relay(_: Result) -> bytes:
    return raw(8080, f"GET / HTTP/1.1\r\nHost: {ALLOWED}\r\nHost: {DENIED}\r\n"
                     "Connection: close\r\n\r\n".encode())


def explicit(payload: bytes) -> bytes:
    s = socket.create_connection((PROXY.hostname, PROXY.port), timeout=8)
    s.sendall(payload)
    return read_all(s)


def bare_lf_proxy(_: Result) -> bytes:
    return explicit(f"GET http://{ALLOWED}:8080/ HTTP/1.1\nHost: {DENIED}\n"
                    "Connection: close\n\n".encode())


def duplicate_host_proxy(_: Result) -> bytes:
    return explicit(f"GET http://{ALLOWED}:8080/ HTTP/1.1\r\nHost: {ALLOWED}:8080\r\n"
                    f"Host: {DENIED}\r\nConnection: close\r\n\r\n".encode())


def scope_proxy(_: Result) -> bytes:
    return explicit(b"CONNECT [fe80::1%zone-SCOPETEXT]:80 HTTP/1.1\r\nHost: x\r\n\r\n")


def ssh_on_a_name_port(_: Result) -> bytes:
    """A protocol without names to the allowed name's TLS port: no nameless rule there."""
    return raw(8443, b"SSH-2.0-client\r\n")


def docker_dns_high_port(result: Result) -> bytes:
    """Docker's embedded resolver listens on 127.0.0.11 at a high port: ask it directly."""
    ports = []
    for table in ("/proc/net/udp", "/proc/net/tcp"):
        with open(table) as f:
            lines = f.read().splitlines()[1:]
        for line in lines:
            local = line.split()[1]
            ip, port = local.split(":")
            if ip == "0B00007F":
                ports.append((table[-3:], int(port, 16)))
    result["ports"] = ports
    query = bytes.fromhex("abcd01000001000000000000") + b"".join(
        bytes([len(p)]) + p.encode() for p in DENIED.split(".")) + b"\x00\x00\x01\x00\x01"
    got = b""
    for proto, port in ports:
        try:
            if proto == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(3)
                    s.sendto(query, ("127.0.0.11", port))
                    got += s.recv(4096)
            else:
                with socket.create_connection(("127.0.0.11", port), timeout=3) as s:
                    s.sendall(len(query).to_bytes(2, "big") + query)
                    got += s.recv(4096)
        except OSError as exc:
            result.setdefault("errors", []).append(str(exc))
    return got


# Positive controls: the allowed paths work, so a refusal above is the check, not a fault.
def allowed_sni(_: Result) -> bytes:
    return tls_request(relay(8443), ALLOWED, ALLOWED)


def allowed_split_hello(_: Result) -> bytes:
    def frame(message: bytes) -> bytes:
        return records(message, [message.index(ALLOWED.encode()) + 3])
    return tls_request(relay(8443), ALLOWED, ALLOWED, frame)


def allowed_connect_name(_: Result) -> bytes:
    s, head = proxy_connect(f"{ALLOWED}:8443")
    return tls_request(s, ALLOWED, ALLOWED) if b" 200 " in head[:16] else b""


def nameless_banner(_: Result) -> bytes:
    s = relay(2222)
    return read_all(s)


def idna_name(_: Result) -> bytes:
    """curl encodes names with UTS 46 (libidn2): straße is xn--strae-oqa, not strasse."""
    done = subprocess.run(["curl", "-s", "-m", "8", "http://straße.sbx.test:8080/"],
                          capture_output=True)
    return done.stdout


CASES: dict[str, Callable[[Result], bytes]] = {
    "silence-then-sni": silence_then_sni,
    "connect-ip-then-sni": connect_ip_then_sni,
    "split-hello": split_hello,
    "oversize-hello": oversize_hello,
    "unknown-method": unknown_method,
    "bare-lf-relay": bare_lf_relay,
    "duplicate-host-relay": duplicate_host_relay,
    "bare-lf-proxy": bare_lf_proxy,
    "duplicate-host-proxy": duplicate_host_proxy,
    "scope-proxy": scope_proxy,
    "ssh-on-a-name-port": ssh_on_a_name_port,
    "docker-dns-high-port": docker_dns_high_port,
    "allowed-sni": allowed_sni,
    "allowed-split-hello": allowed_split_hello,
    "allowed-connect-name": allowed_connect_name,
    "nameless-banner": nameless_banner,
    "idna-name": idna_name,
}


def main() -> None:
    results: dict[str, Result] = {}
    for name, case in CASES.items():
        result: Result = {"t0": time.time()}
        try:
            data = case(result)
            result["body"] = data.decode("latin-1")[-600:]
        except Exception as exc:  # a refusal is often an exception: record it
            result["body"] = ""
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["t1"] = time.time()
        results[name] = result
        time.sleep(0.3)
    with open(sys.argv[1], "w") as out:
        json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
