"""The verdict on one parsed HTTP request: Host, URI authority, method and path against rules.

Sans-IO: an `h11.Request` in, a `Verdict` out. The connection was already allowed for
one host and port (the name the gateway resolved and connected to); every request on
it must name that same host, and an action-level rule must allow its method and path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import h11

from sbx.sandbox.policy import AmbiguousPath, Policy, PolicyError, Rule, normalize_name
from sbx.sandbox.policy import normalize_path as _normalize_path

_VERSIONS: Final = (b"1.0", b"1.1")
_RECORDED_PATH: Final = 256


@dataclass(frozen=True)
class Verdict:
    """What the gateway does with one request, and what it records about it."""

    verdict: str  # allowed | audit | denied
    reason: str
    method: str
    host: str
    path: str  # normalized, without the query; the raw path (cut short) when ambiguous
    rule: Rule | None = None
    target: bytes = b"/"  # origin-form target to forward
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())
    websocket: bool = False

    @property
    def passes(self) -> bool:
        return self.verdict in ("allowed", "audit")


def canonical_host(host: str) -> str:
    """A host as compared: an address in its standard form, a name normalized.

    `PolicyError` (a ValueError) for a name that cannot be one."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return normalize_name(host)


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """(host, port) of `host[:port]` or `[v6]:port`; ValueError when malformed."""
    if "@" in authority or not authority:
        raise ValueError("authority is empty or carries user information")
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("malformed IPv6 authority")
        port = rest[1:]
    elif ":" in authority:
        host, _, port = authority.rpartition(":")
    else:
        host, port = authority, ""
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("bad port")
    return host, int(port)


@dataclass(frozen=True)
class Judge:
    """Judges the requests of one connection, allowed for `host`:`port` (canonical form)."""

    policy: Policy
    host: str
    port: int
    proxy_form: bool = False  # the explicit proxy: absolute http:// URIs, Proxy-* headers
    scheme: str = "http"

    def judge(self, request: h11.Request) -> Verdict:
        """The verdict on `request` (its method, target, Host and Upgrade headers)."""
        method = request.method.decode("ascii", "replace")
        raw_target = request.target.decode("ascii", "replace")

        def deny(reason: str, path: str | None = None, auditable: bool = False,
                 host: str | None = None) -> Verdict:
            recorded = path if path is not None else raw_target.split("?", 1)[0][:_RECORDED_PATH]
            verdict = "audit" if auditable and self.policy.mode == "audit" else "denied"
            return Verdict(verdict, reason, method, host or self.host, recorded,
                           target=request.target, headers=tuple(request.headers.raw_items()))

        if request.http_version not in _VERSIONS:
            what = "HTTP/2 prior knowledge" if request.method == b"PRI" else "HTTP version"
            return deny(f"{what} {request.http_version.decode('ascii', 'replace')} refused: "
                        "only HTTP/1.x is checked")
        if request.method == b"CONNECT":
            return deny("CONNECT inside a connection is refused")
        headers = [(k.lower(), v) for k, v in request.headers.raw_items()]
        upgrade = b",".join(v for k, v in headers if k == b"upgrade").strip().lower()
        websocket = False
        if upgrade or any(k == b"http2-settings" for k, _ in headers):
            if upgrade != b"websocket" or request.method != b"GET":
                return deny(f"Upgrade to {upgrade[:40].decode('ascii', 'replace')!r} refused: "
                            "only a WebSocket upgrade is relayed")
            websocket = True
        host_header = next((v.decode("ascii", "replace") for k, v in headers if k == b"host"),
                           None)
        target = raw_target
        try:
            if "://" in raw_target:
                parts = urlsplit(raw_target)
                if parts.scheme.lower() != self.scheme:
                    return deny(f"scheme {parts.scheme[:10]!r} on a {self.scheme} connection")
                default = 443 if self.scheme == "https" else 80
                a_host, a_port = _split_authority(parts.netloc, default)
                if canonical_host(a_host) != self.host or a_port != self.port:
                    return deny(f"URI authority {parts.netloc[:80]!r} is not {self.host}:"
                                f"{self.port}, the host this connection was allowed for",
                                auditable=True, host=a_host[:253])
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            elif self.proxy_form:
                return deny("a request to the proxy needs an absolute http:// URI")
            if host_header is not None:
                h_host, h_port = _split_authority(host_header, self.port)
                if canonical_host(h_host) != self.host or h_port != self.port:
                    return deny(f"Host {host_header[:80]!r} is not {self.host}:{self.port}, the "
                                "host this connection was allowed for", auditable=True,
                                host=h_host[:253])
            elif "://" not in raw_target:
                return deny("request without a Host header")
        except (ValueError, PolicyError) as exc:
            return deny(f"unreadable host in the request: {exc}")
        if target == "*" or not target.startswith("/"):
            return deny("request target is not a path")
        # Proxy-* is for the proxy; X-Sbx-* is sbx's own and never leaves the gateway.
        kept = tuple((k, v) for k, v in request.headers.raw_items()
                     if not (self.proxy_form and k.lower().startswith((b"proxy-", b"x-sbx-"))))
        path: str | None
        try:
            path = _normalize_path(target)
            why = ""
        except AmbiguousPath as exc:
            path, why = None, str(exc)
        shown = path if path is not None else target.split("?", 1)[0][:_RECORDED_PATH]
        rule = self.policy.request_rule(self.host, self.port, method, path)
        if rule is not None:
            return Verdict("allowed", "matched", method, self.host, shown, rule,
                           target.encode("ascii"), kept, websocket)
        reason = (f"ambiguous path ({why})" if path is None
                  else f"no rule allows {method} {self.host}:{self.port}{path}")
        verdict = "audit" if self.policy.mode == "audit" else "denied"
        return Verdict(verdict, reason, method, self.host, shown, None,
                       target.encode("ascii"), kept, websocket)
