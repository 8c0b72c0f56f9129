"""Hostile names from inside a step, then ordinary denied attempts.

Usage: python3 hostile.py CONFIG_JSON OUT_JSON

CONFIG_JSON: {"labels": [hex, ...], "other_ip": ip, "after": name}. Each label (raw
bytes) is sent as a DNS name over UDP and TCP, as a TLS SNI and an HTTP Host
through the transparent relay, and as a CONNECT target and URL host through the
explicit proxy. Then come ordinary attempts that must be recorded all the same: a
DNS query for `after`, a TCP connection to other_ip:8080, a UDP datagram to
other_ip:9999. Results (what was sent, when) go to OUT_JSON.
"""

import json
import os
import socket
import struct
import sys
import time
import urllib.parse

PROXY = urllib.parse.urlparse(os.environ.get("SBX_PROXY", "http://127.0.0.1:3128"))


def dns_query(labels: list[bytes], qid: int) -> bytes:
    name = b"".join(bytes([len(x)]) + x for x in labels if x) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)


def udp_dns(query: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query, ("127.0.0.11", 53))
        try:
            s.recv(4096)
        except OSError:
            pass


def tcp_dns(query: bytes) -> None:
    try:
        with socket.create_connection(("198.51.100.53", 53), timeout=3) as s:
            s.sendall(struct.pack("!H", len(query)) + query)
            s.recv(4096)
    except OSError:
        pass


def client_hello(sni: bytes) -> bytes:
    server_name = struct.pack("!BH", 0, len(sni)) + sni
    ext_body = struct.pack("!H", len(server_name)) + server_name
    ext = struct.pack("!HH", 0, len(ext_body)) + ext_body
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack("!H", 2) + b"\x13\x01"
            + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def send(addr: tuple[str, int], data: bytes) -> None:
    try:
        with socket.create_connection(addr, timeout=3) as s:
            s.sendall(data)
            s.recv(1024)
    except OSError:
        pass


def main() -> None:
    with open(sys.argv[1]) as fh:
        cfg = json.load(fh)
    other = cfg["other_ip"]
    proxy = (PROXY.hostname or "", PROXY.port or 3128)
    sent = []
    for i, hexed in enumerate(cfg["labels"]):
        raw = bytes.fromhex(hexed)
        query = dns_query([raw, b"hostile", b"test"], 1000 + i)
        udp_dns(query)
        tcp_dns(query)
        host = raw + b".hostile.test"
        send((other, 443), client_hello(host))
        send((other, 8080), b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        send(proxy, b"CONNECT " + host + b":443 HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        send(proxy, b"GET http://" + host + b"/" + raw + b" HTTP/1.1\r\n\r\n")
        sent.append(hexed)
    time.sleep(0.2)
    t_after = time.time()
    udp_dns(dns_query([x.encode() for x in cfg["after"].split(".")], 4242))
    send((other, 8080), b"GET / HTTP/1.1\r\nHost: other.sbx.test\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"after", (other, 9999))
        except OSError:
            pass  # EPERM: dropped by the sandbox's firewall, which records it
    with open(sys.argv[2], "w") as fh:
        json.dump({"sent": sent, "after": t_after}, fh)


if __name__ == "__main__":
    main()
