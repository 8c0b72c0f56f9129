"""A shared-address test host: one address, several names (tenants), like a CDN.

TLS on 8443 picks the tenant by SNI (no SNI: the `denied` tenant, as a CDN's default
may be anyone's); HTTP on 8080 by the Host header (the last one, as some servers do);
TCP 2222 speaks first (an ssh-like banner, no name). Every request, every SNI the TLS
stack reads and every banner connection is printed as one JSON line, so a test can
prove which tenant a step reached, or that it reached none.
"""

import http.server
import json
import socket
import ssl
import threading
from datetime import UTC, datetime

TENANTS = ("allowed", "denied", "xn--strae-oqa")
_lock = threading.Lock()


def log(**fields: object) -> None:
    fields["time"] = datetime.now(UTC).isoformat()
    with _lock:
        print(json.dumps(fields), flush=True)


def tenant_of(name: str | None) -> str:
    label = (name or "").split(".")[0].lower()
    return label if label in TENANTS else "denied"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        tls = isinstance(self.connection, ssl.SSLSocket)
        hosts = self.headers.get_all("Host") or []
        sni = getattr(self.connection, "sbx_sni", None) if tls else None
        tenant = tenant_of(sni) if tls else tenant_of(hosts[-1].rsplit(":", 1)[0] if hosts
                                                      else None)
        log(kind="http", tenant=tenant, method=self.command, hosts=hosts, sni=sni, tls=tls,
            peer=self.client_address[0])
        body = json.dumps({"tenant": tenant, "hosts": hosts, "sni": sni}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_FOO = do_POST = do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def banner(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, peer = srv.accept()
        log(kind="tcp-banner", port=port, peer=peer[0])
        try:
            conn.sendall(b"SSH-2.0-vhost\r\n")
        except OSError:
            pass
        conn.close()


def main() -> None:
    contexts = {}
    for tenant in TENANTS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"/srv/{tenant}.pem", f"/srv/{tenant}.key")
        contexts[tenant] = ctx

    def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        log(kind="sni", sni=name, tenant=tenant_of(name))
        sock.sbx_sni = name  # type: ignore[attr-defined]
        sock.context = contexts[tenant_of(name)]

    default = contexts["denied"]
    default.sni_callback = pick
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    tls = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)
    tls.socket = default.wrap_socket(tls.socket, server_side=True)
    for target, args in ((banner, (2222,)), (tls.serve_forever, ())):
        threading.Thread(target=target, args=args, daemon=True).start()
    log(kind="ready")
    plain.serve_forever()


if __name__ == "__main__":
    main()
