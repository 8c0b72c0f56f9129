"""What the gateway does with an allowed connection: check every request, inspect TLS.

Called by the proxy once a connection is allowed and upstream is connected. The
client's first bytes say what follows: TLS is relayed untouched (host-level rules) or
inspected (a host with an action-level rule); HTTP is read request by request, on
every port, for every rule; anything else is relayed as before on a host-level rule
and refused on an action-level one, whose rules only HTTP can satisfy.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from sbx.sandbox.policy import Policy
from sbx.sandbox.runtime import pipe
from sbx.sandbox.runtime.events import emit
from sbx.sandbox.runtime.http.exchange import Exchange, Record, refusal
from sbx.sandbox.runtime.http.judge import Judge, canonical_host
from sbx.sandbox.runtime.http.relay import Side, run
from sbx.sandbox.runtime.sniff import MAX_FIRST, read

if TYPE_CHECKING:  # tls imports cryptography (~60 ms): only a gateway that inspects needs it
    from sbx.sandbox.runtime.http.tls import RunCA

# A first line that any HTTP server might read as a request: a method-like token and a
# space, a leading empty line, or "HTTP/" anywhere in it. Lenient on purpose: what looks
# like HTTP goes to h11, which is strict.
_HTTP_LIKE: Final = re.compile(rb"^(?:[\r\n]|[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}[ \t]|[^\n]*HTTP/)")
PEEK_TIMEOUT: Final = 30.0


def needs_more(data: bytes) -> bool:
    """True while `data` is a plausible but incomplete ClientHello or HTTP head (`sniff`'s
    one reading of first bytes decides which)."""
    return len(data) < MAX_FIRST and read(data) is None


def tls_sni(data: bytes) -> str | None:
    """The one server name of the ClientHello in `data`, or None (none, or ambiguous)."""
    reading = read(data)
    return reading.name if reading is not None and reading.protocol == "tls" else None


@dataclass
class Inspection:
    """The gateway's TLS inspection state: its CA and the context for upstream TLS."""

    ca: RunCA
    upstream: ssl.SSLContext

    @classmethod
    def for_policy(cls, step: str, policy: Policy, upstream_ca: str = "") -> Inspection | None:
        """None when no rule is action-level (then nothing is inspected and no CA exists)."""
        names = tuple(dict.fromkeys(
            r.host or r.suffix or str(r.network) for r in policy.rules if r.actions is not None))
        if not names:
            return None
        from sbx.sandbox.runtime.http.tls import RunCA, upstream_context

        return cls(RunCA.create(step, names), upstream_context(upstream_ca))


@dataclass
class Flow:
    """An allowed connection as the proxy hands it over."""

    step: str
    policy: Policy
    host: str  # the name or address the connection was allowed for
    port: int
    fields: dict[str, Any]  # the connection's event fields (via, ports, rule)
    counts: list[int]
    inspection: Inspection | None = None
    canonical: str = field(init=False)

    def __post_init__(self) -> None:
        self.canonical = canonical_host(self.host)

    @property
    def action_level(self) -> bool:
        return self.policy.inspects(self.canonical, self.port)

    def record(self, record: Record, inspected: bool) -> None:
        """One request as an event."""
        v = record.verdict
        base = {k: self.fields.get(k) for k in ("step", "via", "src_port", "dst_port",
                                                "connected_ip")}
        emit("http", **base, host=v.host, method=v.method or None, path=v.path or None,
             status=record.status, bytes_out=record.bytes_out, bytes_in=record.bytes_in,
             verdict=v.verdict, reason=v.reason, inspected=inspected,
             rule=v.rule.label if v.rule is not None else None,
             rule_source=(v.rule.source or None) if v.rule is not None else None,
             violation=True if v.verdict in ("denied", "audit") else None)

    def refuse(self, reason: str, inspected: bool, verdict: str = "denied") -> None:
        """A connection refused before any request could be read, as an event."""
        base = {k: self.fields.get(k) for k in ("step", "via", "src_port", "dst_port",
                                                "connected_ip")}
        emit("http", **base, host=self.canonical, verdict=verdict, reason=reason[:300],
             inspected=inspected, violation=True)


def _first_bytes(client: socket.socket, upstream: socket.socket) -> bytes | None:
    """The client's first bytes (a whole ClientHello or request head, when it is one);
    None when upstream speaks first."""
    readable, _, _ = select.select([client, upstream], [], [], PEEK_TIMEOUT)
    if client not in readable:
        return None
    client.settimeout(PEEK_TIMEOUT)
    data = b""
    try:
        while not data or needs_more(data):
            chunk = client.recv(MAX_FIRST - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        client.settimeout(None)
    return data


def _passes_untouched(client: socket.socket, upstream: socket.socket) -> bool:
    """True when the tunnel needs no request checks: the client's first byte is a TLS
    record (peeked, left in the socket), or upstream spoke first, or nothing came."""
    readable, _, _ = select.select([client, upstream], [], [], PEEK_TIMEOUT)
    if client not in readable:
        return True
    try:
        return client.recv(1, socket.MSG_PEEK) == b"\x16"
    except OSError:
        return False


def _pass(client: socket.socket, upstream: socket.socket, flow: Flow, first: bytes) -> None:
    """Today's relay for host-level rules: the first bytes, then splice."""
    try:
        upstream.sendall(first)
        flow.counts[0] += len(first)
    except OSError:
        client.close()
        upstream.close()
        return
    pipe.relay(client, upstream, flow.counts)


def serve_connect(client: socket.socket, upstream: socket.socket, flow: Flow,
                  early: bytes = b"") -> None:
    """A CONNECT tunnel (explicit or from the transparent relay), after its 200; `early` is
    what the client sent right behind its CONNECT head."""
    if not early and not flow.action_level and _passes_untouched(client, upstream):
        # Host-level TLS (or a server that speaks first): today's kernel splice, with not
        # one byte read here. Reading the ClientHello first cost the bench +4 ms.
        pipe.relay(client, upstream, flow.counts)
        return
    first = early + (_first_bytes(client, upstream) or b"") if not early or needs_more(early) \
        else early
    if not first:
        if flow.action_level:
            flow.refuse("nothing HTTP on a host with action-level rules (upstream spoke first "
                        "or the client sent nothing)", inspected=False)
            pipe.reset(client)
            upstream.close()
            return
        _pass(client, upstream, flow, b"")
        return
    if first[:1] == b"\x16":
        if flow.action_level and flow.inspection is not None:
            _inspect(client, upstream, flow, first)
        else:
            _pass(client, upstream, flow, first)
        return
    if _HTTP_LIKE.match(first):
        judge = Judge(flow.policy, flow.canonical, flow.port)
        run(Side(client), Side(upstream), Exchange(judge),
            lambda r: flow.record(r, inspected=False), flow.counts, first)
        return
    if flow.action_level:
        flow.refuse("neither HTTP nor TLS on a host with action-level rules", inspected=False)
        pipe.reset(client)
        upstream.close()
        return
    _pass(client, upstream, flow, first)


def serve_proxy(client: socket.socket, upstream: socket.socket, flow: Flow, first: bytes) -> None:
    """The explicit proxy's plain-HTTP requests (absolute URIs); `first` is what was read."""
    judge = Judge(flow.policy, flow.canonical, flow.port, proxy_form=True)
    run(Side(client), Side(upstream), Exchange(judge),
        lambda r: flow.record(r, inspected=False), flow.counts, first)


def _inspect(client: socket.socket, upstream: socket.socket, flow: Flow, hello: bytes) -> None:
    assert flow.inspection is not None
    sni = tls_sni(hello)
    try:
        named = canonical_host(sni) if sni else None
    except ValueError:
        named = None
    if named != flow.canonical:
        flow.refuse(f"TLS server name {sni[:80] if sni else None!r} is not {flow.canonical}, the "
                    "host this connection was allowed for", inspected=True)
        pipe.reset(client)
        upstream.close()
        return
    try:
        up = Side.wrap(upstream, flow.inspection.upstream, server_side=False,
                       server_hostname=flow.canonical)
        if up.tls is not None and up.tls.selected_alpn_protocol() not in (None, "http/1.1"):
            raise ssl.SSLError("upstream chose a protocol other than http/1.1")
    except (OSError, ssl.SSLError, ValueError) as exc:
        flow.refuse(f"upstream TLS failed ({str(exc)[:160]}): nothing relayed", inspected=True,
                    verdict="failed")
        pipe.reset(client)
        upstream.close()
        return
    try:
        down = Side.wrap(client, flow.inspection.ca.context_for(flow.canonical), server_side=True,
                         first=hello)
    except (OSError, ssl.SSLError, ValueError) as exc:
        flow.refuse(f"the client refused the run CA or the TLS handshake failed "
                    f"({str(exc)[:160]}): nothing relayed", inspected=True)
        pipe.reset(client)
        upstream.close()
        return
    judge = Judge(flow.policy, flow.canonical, flow.port, scheme="https")
    run(down, up, Exchange(judge), lambda r: flow.record(r, inspected=True), flow.counts)


__all__ = ["Flow", "Inspection", "refusal", "serve_connect", "serve_proxy"]
