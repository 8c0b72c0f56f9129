"""A test host on the simulated internet: HTTP, HTTPS, and UDP/DNS canaries.

Every request or datagram it receives is printed as one JSON line, so a test
can prove that a denied flow never arrived.
"""

import http.server
import json
import os
import socket
import ssl
import threading
from datetime import UTC, datetime

NAME = os.environ["SERVER_NAME"]
_lock = threading.Lock()


def log(**fields: object) -> None:
    fields["time"] = datetime.now(UTC).isoformat()
    with _lock:
        print(json.dumps(fields), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        log(kind="http", peer=self.client_address[0], path=self.path,
            host=self.headers.get("Host"), tls=isinstance(self.connection, ssl.SSLSocket))
        size = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/bytes/") else 0
        body = json.dumps({"server": NAME, "path": self.path}).encode() + b"\n" + b"x" * size
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def udp_canary(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(65535)
        log(kind="udp", port=port, peer=peer[0], size=len(data))


def tcp_banner(port: int) -> None:
    """A server that speaks first, like ssh: the relay learns no name from the client."""
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, peer = srv.accept()
        log(kind="tcp-banner", port=port, peer=peer[0])
        conn.sendall(f"SSH-2.0-{NAME}\r\n".encode())
        conn.close()


def main() -> None:
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    tls = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain("/srv/cert.pem", "/srv/key.pem")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    for target, args in ((udp_canary, (9999,)), (udp_canary, (53,)), (tcp_banner, (2222,)),
                         (tls.serve_forever, ())):
        threading.Thread(target=target, args=args, daemon=True).start()
    log(kind="ready", name=NAME)
    plain.serve_forever()


if __name__ == "__main__":
    main()
