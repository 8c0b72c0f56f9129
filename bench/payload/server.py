"""The benchmark's "internet" host: generated bodies over HTTP, a tiny page over HTTPS.

`GET /bytes/N` on port 8080 streams N bytes of a repeating pattern (generated, never
stored), `GET /stream/N` the same without Content-Length (the close ends it); any GET on
port 8443 (TLS, a certificate from the bench's throwaway CA) answers a few bytes, for
time-to-first-byte. Runs in the step image's python3.
"""

from __future__ import annotations

import http.server
import socketserver
import ssl
import sys
import threading

_BLOCK = memoryview(bytes(range(256)) * 4096)  # 1 MiB


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass  # thousands of requests: keep the container's log empty

    def do_GET(self) -> None:
        sized = not self.path.startswith("/stream/")
        size = int(self.path.rsplit("/", 1)[1]) if self.path.startswith(("/bytes/", "/stream/")) \
            else 2
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if sized:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        sock = self.connection
        left = size
        while left > 0:
            n = min(left, len(_BLOCK))
            sock.sendall(_BLOCK[:n])
            left -= n


def main() -> None:
    """Serve HTTP on 8080 and HTTPS on 8443 (cert.pem and key.pem next to this file)."""
    here = sys.argv[1] if len(sys.argv) > 1 else "/srv"
    plain = _Server(("0.0.0.0", 8080), _Handler)
    tls = _Server(("0.0.0.0", 8443), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{here}/cert.pem", f"{here}/key.pem")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    print("ready", flush=True)
    plain.serve_forever()


if __name__ == "__main__":
    main()
