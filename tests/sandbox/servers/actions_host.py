"""A web host for action-level rules: one address, several names, HTTP and HTTPS.

Every request it receives, whatever its method, is printed as one JSON line (method,
path, Host, TLS or not), so a test proves a denied request never arrived. GET and HEAD
serve files under /srv/www (a simple package index, a wheel, a git repository for the
dumb HTTP protocol); any other method is answered 200 and logged.
"""

import http.server
import json
import os
import ssl
import threading
from datetime import UTC, datetime

ROOT = "/srv/www"
_lock = threading.Lock()


def log(**fields: object) -> None:
    fields["time"] = datetime.now(UTC).isoformat()
    with _lock:
        print(json.dumps(fields), flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a second request can share a connection

    def _log(self) -> None:
        log(kind="http", method=self.command, path=self.path, host=self.headers.get("Host"),
            tls=isinstance(self.connection, ssl.SSLSocket))

    def _send(self, status: int, body: bytes, head_only: bool = False,
              content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _file(self, head_only: bool) -> None:
        self._log()
        path = os.path.normpath(ROOT + self.path.split("?", 1)[0])
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        if not path.startswith(ROOT) or not os.path.isfile(path):
            self._send(404, b"not found\n", head_only)
            return
        with open(path, "rb") as fh:
            self._send(200, fh.read(), head_only,
                       "text/html" if path.endswith(".html") else "application/octet-stream")

    def do_GET(self) -> None:
        self._file(False)

    def do_HEAD(self) -> None:
        self._file(True)

    def do_POST(self) -> None:
        self._log()
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._send(200, b"stored\n")

    do_PUT = do_POST
    do_DELETE = do_POST

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    tls = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain("/srv/cert.pem", "/srv/key.pem")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    log(kind="ready")
    plain.serve_forever()


if __name__ == "__main__":
    main()
