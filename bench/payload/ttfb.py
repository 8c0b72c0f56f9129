"""Time to first byte of N sequential HTTPS requests, each on a new connection.

The name is resolved once, so the figure is per connection (TCP, TLS, request,
first byte of the answer), not DNS. Usage: ttfb.py HOST PORT N CAFILE
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time


def main() -> None:
    """Print {"ttfb_ms": [...]} for N requests."""
    host, port, count, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ip = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    # "env": the bundle sbx gives a step whose TLS it inspects.
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"] if cafile == "env"
                                     else cafile)
    request = f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    times: list[float] = []
    for _ in range(count):
        began = time.perf_counter()
        with socket.create_connection((ip, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(request)
            if not s.recv(1):
                raise SystemExit("closed without an answer")
            times.append((time.perf_counter() - began) * 1000)
    print(json.dumps({"bench": "ttfb", "ttfb_ms": times}), flush=True)


if __name__ == "__main__":
    main()
