"""Download a generated body REPS times and print the rates as one JSON line.

Timed inside the container, so container start and sandbox set-up are not counted:
from before the connection to the last byte. Usage: download.py HOST PORT SIZE REPS [CAFILE]
With CAFILE the download is HTTPS, verified against it ("env": $SSL_CERT_FILE, the bundle
sbx gives a step whose TLS it inspects). With $BENCH_PROXY (ip:port) a plain download asks
that explicit proxy for the absolute URL instead (the hand-built Squid sandbox). With
$BENCH_STREAM set it asks for /stream/SIZE: the same bytes without Content-Length.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time


def fetch(host: str, port: int, size: int, ctx: ssl.SSLContext | None = None,
          proxy: tuple[str, int] | None = None) -> float:
    """Seconds to fetch /bytes/SIZE over a new connection, checking the length."""
    buf = bytearray(1 << 20)
    path = f"/{'stream' if os.environ.get('BENCH_STREAM') else 'bytes'}/{size}"
    target = f"http://{host}:{port}{path}" if proxy else path
    began = time.perf_counter()
    raw = socket.create_connection(proxy or (host, port), timeout=60)
    with ctx.wrap_socket(raw, server_hostname=host) if ctx else raw as s:
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"closed before the response head: {head!r}")
            head += chunk
        got = len(head.partition(b"\r\n\r\n")[2])
        while got < size:
            n = s.recv_into(buf)
            if n == 0:
                raise SystemExit(f"closed after {got} of {size} bytes")
            got += n
    return time.perf_counter() - began


def main() -> None:
    """Print {"seconds": [...], "mb_per_s": [...]} for REPS downloads."""
    host, port, size, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ctx = None
    if len(sys.argv) > 5:
        cafile = os.environ["SSL_CERT_FILE"] if sys.argv[5] == "env" else sys.argv[5]
        ctx = ssl.create_default_context(cafile=cafile)
    proxy = None
    if os.environ.get("BENCH_PROXY") and ctx is None:
        p_host, _, p_port = os.environ["BENCH_PROXY"].rpartition(":")
        proxy = (p_host, int(p_port))
    seconds = [fetch(host, port, size, ctx, proxy) for _ in range(reps)]
    print(json.dumps({"bench": "download", "size": size, "seconds": seconds,
                      "mb_per_s": [size / s / 1e6 for s in seconds]}), flush=True)


if __name__ == "__main__":
    main()
