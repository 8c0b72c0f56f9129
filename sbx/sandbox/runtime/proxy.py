"""The gateway's proxy: the agent's relayed connections, HTTP CONNECT and absolute http:// URLs.

Every connection is judged by the `Gate`, and every one it accepts ends in a
decision event, even one whose client never sends a byte. A destination named by
address only (the relay's original destination, `CONNECT <ip>`) is decided at once
when the address alone settles it (internal, an IP or nameless rule, no rule for
the port); otherwise the client's first bytes decide, whenever they arrive: the
name in its TLS SNI or HTTP Host, read by `sniff`, and the gateway connects to its
own resolution of that name. A refused step is told only "denied by policy".
"""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

from sbx.sandbox.runtime import http_head, limits, pipe, sniff
from sbx.sandbox.runtime.events import emit
from sbx.sandbox.runtime.gate import Decision, Gate, is_ip, rule_fields
from sbx.sandbox.runtime.http import tunnel

DENIED = "denied by policy"


@dataclass
class _Flow:
    fields: dict[str, Any]
    counts: list[int] = field(default_factory=lambda: [0, 0])
    opened: bool = False
    waiting: str = "connecting upstream"  # what it was doing if the gateway stops


class Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of connections (a parallel build, or the
    # probes' two dozen at once) overflowed it, and dropped SYNs wait a second to retry.
    request_queue_size = 512
    gate: Gate
    inspection: tunnel.Inspection | None = None
    flows: dict[int, _Flow]
    flows_lock: threading.Lock


def _split_host_port(target: str, default_port: int) -> tuple[str, int]:
    """Host and port of an authority; ValueError for a port that is not 1..65535."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if "%" in host:
        raise ValueError("IPv6 zone index in the destination")
    if not host:
        raise ValueError("empty host")
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("bad port")
    return host, int(port)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while True:
        end = http_head.head_end(data)
        if end is not None:
            return data[:end], data[end:]
        chunk = sock.recv(4096)
        if not chunk:
            raise http_head.HeadError("connection closed before the request head ended")
        data += chunk


def first_bytes(sock: socket.socket, data: bytes,
                wait: float = limits.FIRST_BYTES_WAIT) -> tuple[sniff.Reading, bytes]:
    """Read until the first bytes say what they name (or cannot), within `wait` seconds."""
    sock.settimeout(wait)
    while True:
        reading = sniff.read(data)
        if reading is not None:
            return reading, data
        if len(data) >= sniff.MAX_FIRST:
            return sniff.Reading("none", problem="first bytes beyond the bound"), data
        try:
            chunk = sock.recv(sniff.MAX_FIRST - len(data))
        except TimeoutError:
            return sniff.Reading("none", problem=f"no first bytes within {wait:g} s"), data
        except OSError as exc:
            return sniff.Reading("none", problem=f"client gone: {exc}"), data
        if not chunk:
            return sniff.Reading("none", problem="the client closed before naming a "
                                 "destination"), data
        data += chunk


class ProxyHandler(socketserver.BaseRequestHandler):
    server: Proxy

    def _answer(self, status: str, reason: str) -> None:
        body = (reason + "\n").encode()
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        try:
            self.request.sendall(head.encode() + body)
        except OSError:
            pass

    def _refuse_request(self, reason: str, method: str | None = None) -> None:
        emit_refusal(self.server.gate.step, f"bad request: {reason}", method,
                     src_port=self.client_address[1])
        self._answer("400 Bad Request", "sbx gateway: bad request")

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        gate = self.server.gate
        try:
            raw, rest = _read_head(sock)
            head = http_head.parse(raw)
        except (http_head.HeadError, OSError) as exc:
            self._refuse_request(str(exc)[:160])
            return
        # Only the agent's relay knows the token; a step cannot pose as the relay to
        # put a made-up original destination into the evidence.
        token = head.get("x-sbx-relay")
        relayed = gate.relay_token != "" and token == [gate.relay_token]
        method = head.method.upper()
        try:
            if method == "CONNECT":
                host, port = _split_host_port(head.target, 443)
                forward = rest
            elif head.target.lower().startswith("http://"):
                host, port = _absolute(head)
                forward = b""  # the request checker reads and rebuilds it from `raw + rest`
            else:
                raise ValueError("not a proxy request: use CONNECT or an absolute http:// URL")
        except (ValueError, http_head.HeadError) as exc:
            self._refuse_request(str(exc)[:160], method)
            return
        src_port = self.client_address[1]
        via = "proxy"
        if relayed:
            via = "relay"
            src = head.get("x-sbx-orig-src-port")
            src_port = int(src[0]) if src and src[0].isdigit() else 0
        fields: dict[str, Any] = {
            "step": gate.step, "name": None if is_ip(host) else host.lower(),
            "dst_ip": host.strip("[]") if is_ip(host) else None, "dst_port": port,
            "via": via, "method": method, "src_port": src_port}
        flow = _Flow(fields, waiting="waiting for the client's first bytes")
        with self.server.flows_lock:
            self.server.flows[id(flow)] = flow  # recorded even if the gateway stops now
        try:
            self._judge_and_relay(sock, flow, head, host, port, forward, relayed, raw + rest)
        except OSError:
            pass  # the client or upstream went away: the record below still says so
        finally:
            with self.server.flows_lock:
                if self.server.flows.pop(id(flow), None) is not None:
                    emit_close(flow, "the connection broke")

    def _decide(self, flow: _Flow, decision: Decision, name_from: str | None) -> bool:
        """Put the decision in the flow's record; False (and recorded) when it refuses."""
        fields = flow.fields
        if decision.name is not None:
            fields["name"] = decision.name
        fields.update(
            verdict=decision.verdict, reason=decision.reason, name_from=name_from,
            nameless=decision.nameless or None, internal=decision.internal or None,
            violation=decision.verdict in ("audit", "denied") or None,
            **rule_fields(decision.rule))
        if decision.passes:
            flow.waiting = "connecting upstream"
            return True
        with self.server.flows_lock:
            if self.server.flows.pop(id(flow), None) is None:
                return False  # the gateway is stopping and recorded it
        emit("tcp", **fields)
        return False

    def _judge_and_relay(self, sock: socket.socket, flow: _Flow, head: http_head.RequestHead,
                         host: str, port: int, forward: bytes, relayed: bool,
                         original: bytes) -> None:
        """Decide, connect, then hand the connection to the request checker; `original` is
        what the client sent of an explicit-proxy request, as it sent it (the checker reads
        and rebuilds every request on the connection, the first one included)."""
        gate = self.server.gate
        connect = head.method.upper() == "CONNECT"
        answered = False  # whether the client already got its 200
        wait = (limits.FIRST_BYTES_WAIT_AUDIT if gate.policy.mode == "audit"
                else limits.FIRST_BYTES_WAIT)
        if is_ip(host):
            decision = gate.decide_address(host.strip("[]"), port)
            name_from: str | None = None
            if decision is None and connect:
                if not relayed:
                    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    answered = True
                reading, forward = first_bytes(sock, forward, wait)
                decision = gate.decide_reading(reading, host.strip("[]"), port)
                name_from = _name_from(reading)
            elif decision is None:
                decision = gate.decide_name(host, port)
        else:
            decision = gate.decide_name(host, port)
            name_from = "connect" if connect else "url"
            nameless = decision.rule is not None and decision.rule.nameless
            if decision.passes and connect and not nameless:
                # The CONNECT name is pinned: the bytes that follow may not name another.
                if not relayed:
                    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    answered = True
                reading, forward = first_bytes(sock, forward, wait)
                decision = gate.decide_reading(reading, None, port, pinned=decision)
        if not self._decide(flow, decision, name_from):
            if answered:
                pipe.reset(sock)
            else:
                self._answer("403 Forbidden", f"sbx gateway: {DENIED}")
            return
        upstream, connected_ip = _connect(decision.addresses, port)
        if upstream is None:
            with self.server.flows_lock:
                if self.server.flows.pop(id(flow), None) is None:
                    return  # the gateway is stopping and recorded it
            flow.fields.update(verdict="failed", reason=f"no answer from {host}:{port}",
                               violation=None)
            emit("tcp", **flow.fields)
            if answered:
                pipe.reset(sock)
            else:
                self._answer("502 Bad Gateway", "sbx gateway: no answer upstream")
            return
        flow.fields["connected_ip"] = connected_ip
        upstream.settimeout(None)
        sock.settimeout(None)
        with self.server.flows_lock:
            if id(flow) not in self.server.flows:
                upstream.close()
                return  # the gateway is stopping and recorded it
            emit("tcp", phase="open", **flow.fields)
            flow.opened = True
        # Every request on the connection is checked from here on (sbx.sandbox.runtime.http),
        # against the name the connection was allowed for (an SNI or Host one for CONNECT <ip>).
        checked = tunnel.Flow(gate.step, gate.policy, decision.name or host.strip("[]"), port,
                              flow.fields, flow.counts, self.server.inspection)
        try:
            if connect:
                if not answered:
                    sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                tunnel.serve_connect(sock, upstream, checked, early=forward)
            else:
                tunnel.serve_proxy(sock, upstream, checked, first=original)
        except OSError:
            pass


def _name_from(reading: sniff.Reading) -> str | None:
    if reading.name is None:
        return None
    return "sni" if reading.protocol == "tls" else "host"


def _absolute(head: http_head.RequestHead) -> tuple[str, int]:
    """Host and port of an absolute http:// request (which the request checker forwards)."""
    url = head.target[7:]
    cut = min((i for i in (url.find(c) for c in "/?#") if i >= 0), default=len(url))
    authority = url[:cut]
    host, port = _split_host_port(authority, 80)
    if "@" in authority:
        raise ValueError("user info in the URL")
    named = head.host
    if named is not None:
        # Domain fronting in the clear: the URL names one host, Host another.
        named_host, named_port = _split_host_port(named, port)  # no port in Host: the URL's
        if named_host.lower() != host.lower() or named_port != port:
            raise ValueError("Host header differs from the URL authority")
    return host, port


def _connect(addresses: tuple[str, ...], port: int) -> tuple[socket.socket | None, str]:
    for ip in addresses:
        try:
            return socket.create_connection((ip, port), timeout=10), ip
        except OSError:
            continue
    return None, ""


def emit_close(flow: _Flow, why: str = "the gateway stopped") -> None:
    """The end of a flow; one not yet open gets its decision (or its absence) recorded."""
    if not flow.opened:
        fields = {"verdict": "denied", "reason": "", "violation": True, **flow.fields}
        emit("tcp", **{**fields, "reason": f"{fields.get('reason') or 'undecided'}; {why} "
                       f"while it was {flow.waiting}"})
        return
    emit("tcp", phase="close", bytes_out=flow.counts[0], bytes_in=flow.counts[1], **flow.fields)


def emit_refusal(step: str, reason: str, method: str | None = None,
                 src_port: int | None = None) -> None:
    """A request the proxy could not even read is a denial on record, like any other."""
    emit("tcp", step=step, verdict="denied", reason=reason[:200], via="proxy",
         method=method.upper()[:16] if method else None, src_port=src_port, violation=True)
