"""The gateway's explicit proxy: HTTP CONNECT and absolute http:// URLs, judged by the Gate."""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Any

from sbx.sandbox.runtime import pipe
from sbx.sandbox.runtime.events import emit
from sbx.sandbox.runtime.gate import Gate, rule_fields
from sbx.sandbox.runtime.http import tunnel


@dataclass
class _Flow:
    fields: dict[str, Any]
    counts: list[int]
    opened: bool = False


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
    if not port:
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad port {port[:8]!r}")
    return host, int(port)


def _host_header(headers: list[str]) -> str | None:
    for h in headers:
        key, _, value = h.partition(":")
        if key.strip().lower() == "host":
            return value.strip()
    return None


class ProxyHandler(socketserver.BaseRequestHandler):
    server: Proxy

    def _answer(self, status: str, reason: str) -> None:
        body = (reason + "\n").encode()
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        try:
            self.request.sendall(head.encode() + b"X-Sbx-Reason: " + reason.encode()[:200]
                                 + b"\r\n\r\n" + body)
        except OSError:
            pass

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        gate = self.server.gate
        try:
            head, rest = pipe.read_head(sock)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            emit_refusal(gate.step, f"bad request: {exc}", src_port=self.client_address[1])
            self._answer("400 Bad Request", f"sbx gateway: {exc}")
            return
        headers = [h for h in header_lines if h]
        values = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
        # Only the agent's relay knows the token; a step cannot pose as the relay to
        # put a made-up original destination into the evidence.
        relayed = gate.relay_token != "" and values.get("x-sbx-relay") == gate.relay_token
        orig = values.get("x-sbx-orig-dst") if relayed else None
        src_port = values.get("x-sbx-orig-src-port", "") if relayed else str(self.client_address[1])
        try:
            if method.upper() == "CONNECT":
                host, port = _split_host_port(target, 443)
                forward = rest
            elif target.lower().startswith("http://"):
                authority, _, path = target[7:].partition("/")
                host, port = _split_host_port(authority, 80)
                named = _host_header(headers)
                if named is not None and _split_host_port(named, port)[0].lower() != host.lower():
                    # Domain fronting in the clear: the URL names one host, Host another.
                    raise ValueError(f"Host header {named[:64]!r} differs from the URL host")
                kept = [h for h in headers if not h.lower().startswith(("proxy-", "x-sbx-"))]
                forward = ("\r\n".join([f"{method} /{path} {version}", *kept])
                           + "\r\n\r\n").encode("latin-1") + rest
            else:
                raise ValueError("not a proxy request: use CONNECT or an absolute http:// URL")
        except ValueError as exc:
            emit("tcp", step=gate.step, verdict="denied", reason=f"bad request: {exc}",
                 via="proxy", method=method.upper()[:16], src_port=self.client_address[1],
                 violation=True)
            self._answer("400 Bad Request", f"sbx gateway: {exc}")
            return
        decision = gate.decide_name(host, port)
        orig_ip, _, orig_port = (orig or "").rpartition(":")
        fields: dict[str, Any] = {
            "step": gate.step, "name": None if _is_ip(host) else host.lower(),
            "dst_ip": orig_ip.strip("[]") or (host if _is_ip(host) else None),
            "dst_port": int(orig_port) if orig_port.isdigit() else port,
            "via": "relay" if orig else "proxy", "method": method.upper(),
            "src_port": int(src_port) if src_port.isdigit() else None,
            "verdict": decision.verdict, "reason": decision.reason,
            "internal": decision.internal or None,
            "violation": decision.verdict in ("audit", "denied") or None,
            **rule_fields(decision.rule),
        }
        if not decision.passes:
            emit("tcp", **fields)
            self._answer("403 Forbidden", f"sbx gateway: {decision.reason}")
            return
        # Registered before connecting: a gateway stopped mid-connect still records
        # the decision (see `emit_close`).
        flow = _Flow(fields, [0, 0])
        with self.server.flows_lock:
            self.server.flows[id(flow)] = flow
        upstream = None
        for ip in decision.addresses:
            try:
                upstream = socket.create_connection((ip, port), timeout=10)
                fields["connected_ip"] = ip
                break
            except OSError:
                continue
        if upstream is None:
            with self.server.flows_lock:
                if self.server.flows.pop(id(flow), None) is None:
                    return  # the gateway is stopping and recorded it
            fields.update(verdict="failed", reason=f"no answer from {host}:{port}", violation=None)
            emit("tcp", **fields)
            self._answer("502 Bad Gateway", f"sbx gateway: no answer from {host}:{port}")
            return
        upstream.settimeout(None)
        sock.settimeout(None)
        with self.server.flows_lock:
            if id(flow) not in self.server.flows:
                upstream.close()
                return  # the gateway is stopping and recorded it
            emit("tcp", phase="open", **fields)
            flow.opened = True
        # Every request on the connection is checked from here on (sbx.sandbox.runtime.http).
        checked = tunnel.Flow(gate.step, gate.policy, host, port, fields, flow.counts,
                              getattr(self.server, "inspection", None))
        try:
            if method.upper() == "CONNECT":
                sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                tunnel.serve_connect(sock, upstream, checked, early=forward)
            else:
                tunnel.serve_proxy(sock, upstream, checked, first=head + b"\r\n\r\n" + rest)
        except OSError:
            pass
        finally:
            with self.server.flows_lock:
                if self.server.flows.pop(id(flow), None) is not None:
                    emit_close(flow)


def emit_close(flow: _Flow) -> None:
    """The end of a flow; one still connecting upstream gets its decision recorded."""
    if not flow.opened:
        emit("tcp", **{**flow.fields, "reason": f"{flow.fields.get('reason')}; the gateway "
                       "stopped while it was connecting upstream"})
        return
    emit("tcp", phase="close", bytes_out=flow.counts[0], bytes_in=flow.counts[1], **flow.fields)


def emit_refusal(step: str, reason: str, method: str | None = None,
                 src_port: int | None = None) -> None:
    """A request the proxy could not even read is a denial on record, like any other."""
    emit("tcp", step=step, verdict="denied", reason=reason[:200], via="proxy",
         method=method.upper()[:16] if method else None, src_port=src_port, violation=True)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
