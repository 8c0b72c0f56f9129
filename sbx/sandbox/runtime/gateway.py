"""The egress gateway: an explicit HTTP proxy and a DNS server applying the step's policy.

It runs in its own container, attached to the step's internal network (where it
listens) and to the egress network (its only route out). It never forwards IP
packets; every connection it makes is its own, to its own resolution of a name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer

from sbx.sandbox.policy import (
    Policy,
    PolicyError,
    Rule,
    in_networks,
    is_internal,
    normalize_name,
)
from sbx.sandbox.runtime import pipe
from sbx.sandbox.runtime.events import emit, log

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    """The gateway's verdict on one destination."""

    verdict: str  # allowed | audit | denied | failed
    reason: str
    rule: Rule | None = None
    addresses: tuple[str, ...] = ()

    @property
    def passes(self) -> bool:
        return self.verdict in ("allowed", "audit")


@dataclass
class Gate:
    """Policy decisions plus the state they need (names this gateway answered)."""

    step: str
    policy: Policy
    refused: tuple[Network, ...]
    relay_token: str = ""
    answered: dict[str, str] = field(default_factory=dict)  # ip -> allowed name
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _blocked_address(self, ip: str, port: int | None) -> bool:
        """Internal addresses pass only when an IP rule names them; refused ones never.

        Every spelling counts: an IPv6 address carrying a refused IPv4 address
        (mapped, NAT64, 6to4, Teredo) is refused too.
        """
        try:
            if in_networks(ip, self.refused):
                return True  # own addresses, host addresses and bridges, sbx's step pool
            return is_internal(ip) and self.policy.match_ip(ip, port) is None
        except PolicyError:
            return True

    def resolve(self, name: str, port: int | None, family: int = 0) -> list[str]:
        infos = socket.getaddrinfo(name, port or 0, family, socket.SOCK_STREAM)
        seen: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in seen:
                seen.append(ip)
        return seen

    def decide_ip(self, ip: str, port: int) -> Decision:
        if self._blocked_address(ip, port):
            return Decision("denied", f"{ip} is an internal or host address")
        rule = self.policy.match_ip(ip, port)
        if rule is None:
            with self.lock:
                name = self.answered.get(ip)
            if name is not None:
                rule = self.policy.match_name(name, port)
        if rule is not None:
            return Decision("allowed", "matched", rule, (ip,))
        if self.policy.mode == "audit":
            return Decision("audit", f"no rule allows {ip}:{port}", None, (ip,))
        return Decision("denied", f"no rule allows {ip}:{port}")

    def decide_name(self, raw: str, port: int) -> Decision:
        try:
            ipaddress.ip_address(raw.strip("[]"))
        except ValueError:
            pass
        else:
            return self.decide_ip(raw.strip("[]"), port)
        try:
            name = normalize_name(raw)
        except PolicyError as exc:
            return Decision("denied", f"invalid name: {exc}")
        rule = self.policy.match_name(name, port)
        if rule is None and self.policy.mode != "audit":
            return Decision("denied", f"no rule allows {name}:{port}")
        try:
            found = self.resolve(name, port)
        except OSError:
            return Decision("failed", f"{name} does not resolve", rule)
        usable = tuple(ip for ip in found if not self._blocked_address(ip, port))
        if not usable:
            return Decision("denied", f"{name} resolves only to internal addresses {found}", rule)
        if rule is None:
            return Decision("audit", f"no rule allows {name}:{port}", None, usable)
        return Decision("allowed", "matched", rule, usable)


def _rule_fields(rule: Rule | None) -> dict[str, Any]:
    if rule is None:
        return {}
    return {"rule": rule.text, "rule_source": rule.source or None}


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname)
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        client = handler.client_address[0]
        if len(request.questions) != 1:
            # Resolvers answer one question; the others would ride along unrecorded.
            reply = request.reply()
            reply.header.rcode = RCODE.FORMERR
            emit("dns", step=self.gate.step, name=qname[:255], qtype=qtype, verdict="denied",
                 reason=f"{len(request.questions)} questions in one query", src_ip=client,
                 violation=True)
            return reply
        try:
            name = normalize_name(qname)
        except PolicyError as exc:
            reply.header.rcode = RCODE.NXDOMAIN
            emit("dns", step=self.gate.step, name=qname[:255], qtype=qtype, verdict="denied",
                 reason=f"invalid name: {exc}", src_ip=client, violation=True)
            return reply
        rule = self.gate.policy.allows_dns(name)
        audit = rule is None and self.gate.policy.mode == "audit"
        if rule is None and not audit:
            # Never forwarded upstream: a denied name leaves no trace outside the sandbox.
            reply.header.rcode = RCODE.NXDOMAIN
            emit("dns", step=self.gate.step, name=name, qtype=qtype, verdict="denied",
                 reason="no rule allows this name", src_ip=client, violation=True)
            return reply
        answers: list[str] = []
        withheld: list[str] = []
        if qtype in ("A", "AAAA"):
            family = socket.AF_INET if qtype == "A" else socket.AF_INET6
            try:
                found = self.gate.resolve(name, None, family)
            except OSError:
                found = []
            for ip in found:
                if self.gate._blocked_address(ip, None):
                    withheld.append(ip)
                    continue
                answers.append(ip)
                rdata = A(ip) if qtype == "A" else AAAA(ip)
                reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=30))
                if rule is not None:
                    with self.gate.lock:
                        self.gate.answered[ip] = name
            if not found:
                reply.header.rcode = RCODE.NXDOMAIN
        if withheld and not answers:
            # An allowed name that points inside (DNS rebinding): the same verdict the
            # proxy gives it, so the attempt is on record as denied, not as an empty answer.
            emit("dns", step=self.gate.step, name=name, qtype=qtype, verdict="denied",
                 reason=f"{name} resolves only to internal addresses {withheld}",
                 answers=[], withheld=withheld, src_ip=client, violation=True,
                 **_rule_fields(rule))
            return reply
        emit("dns", step=self.gate.step, name=name, qtype=qtype,
             verdict="audit" if audit else "allowed", answers=answers, src_ip=client,
             withheld=withheld or None, violation=audit or None, **_rule_fields(rule))
        return reply


class _QuietLogger:
    """dnslib's logger: silent, except that a message it cannot parse becomes an event.

    Every datagram or TCP stream to port 53, whatever its destination, ends up
    here; one that is not DNS (a tunnel, a covert channel) is dropped by dnslib
    and would otherwise leave no record.
    """

    def __init__(self, step: str) -> None:
        self.step = step

    def log_error(self, handler: Any, error: Any) -> None:
        emit("dns", step=self.step, verdict="denied",
             reason=f"malformed DNS message: {str(error)[:120]}",
             src_ip=handler.client_address[0], protocol=getattr(handler, "protocol", None),
             violation=True)

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


@dataclass
class _Flow:
    fields: dict[str, Any]
    counts: list[int]


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    gate: Gate
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


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _Proxy

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
            self._answer("400 Bad Request", f"sbx gateway: {exc}")
            return
        headers = [h for h in header_lines if h]
        values = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
        # Only the agent's relay knows the token; a step cannot pose as the relay to
        # put a made-up original destination into the evidence.
        relayed = gate.relay_token != "" and values.get("x-sbx-relay") == gate.relay_token
        orig = values.get("x-sbx-orig-dst") if relayed else None
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
                self._answer("400 Bad Request",
                             "sbx gateway: use CONNECT or an absolute http:// URL")
                return
        except ValueError as exc:
            emit("tcp", step=gate.step, verdict="denied", reason=f"bad request: {exc}",
                 via="proxy", method=method.upper()[:16], violation=True)
            self._answer("400 Bad Request", f"sbx gateway: {exc}")
            return
        decision = gate.decide_name(host, port)
        orig_ip, _, orig_port = (orig or "").rpartition(":")
        fields: dict[str, Any] = {
            "step": gate.step, "name": None if _is_ip(host) else host.lower(),
            "dst_ip": orig_ip.strip("[]") or (host if _is_ip(host) else None),
            "dst_port": int(orig_port) if orig_port.isdigit() else port,
            "via": "relay" if orig else "proxy", "method": method.upper(),
            "verdict": decision.verdict, "reason": decision.reason,
            "violation": decision.verdict in ("audit", "denied") or None,
            **_rule_fields(decision.rule),
        }
        if not decision.passes:
            emit("tcp", **fields)
            self._answer("403 Forbidden", f"sbx gateway: {decision.reason}")
            return
        upstream = None
        for ip in decision.addresses:
            try:
                upstream = socket.create_connection((ip, port), timeout=10)
                fields["connected_ip"] = ip
                break
            except OSError:
                continue
        if upstream is None:
            fields.update(verdict="failed", reason=f"no answer from {host}:{port}", violation=None)
            emit("tcp", **fields)
            self._answer("502 Bad Gateway", f"sbx gateway: no answer from {host}:{port}")
            return
        upstream.settimeout(None)
        sock.settimeout(None)
        emit("tcp", phase="open", **fields)
        flow = _Flow(fields, [0, 0])
        with self.server.flows_lock:
            self.server.flows[id(flow)] = flow
        try:
            if method.upper() == "CONNECT":
                sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if forward:
                upstream.sendall(forward)
                flow.counts[0] += len(forward)
            pipe.relay(sock, upstream, flow.counts)
        except OSError:
            pass
        finally:
            with self.server.flows_lock:
                if self.server.flows.pop(id(flow), None) is not None:
                    _emit_close(flow)


def _emit_close(flow: _Flow) -> None:
    emit("tcp", phase="close", bytes_out=flow.counts[0], bytes_in=flow.counts[1], **flow.fields)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _own_addresses() -> list[Network]:
    """This container's addresses and its default gateway (the host's bridge)."""
    nets: list[Network] = []
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(addr["local"]))
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", "-j", family, "route"], capture_output=True, text=True).stdout
        for route in json.loads(out or "[]"):
            if route.get("gateway"):
                nets.append(ipaddress.ip_network(route["gateway"]))
    return nets


def main() -> None:
    """Start from the JSON configuration in SBX_CONFIG and serve until SIGTERM."""
    config = json.loads(os.environ["SBX_CONFIG"])
    policy = Policy.from_dict(config["policy"])
    refused = tuple(ipaddress.ip_network(n) for n in config.get("refused", [])) + tuple(
        _own_addresses())
    gate = Gate(step=config["step"], policy=policy, refused=refused,
                relay_token=str(config.get("relay_token", "")))
    listen = config["listen_ip"]
    proxy = _Proxy((listen, int(config.get("proxy_port", 3128))), _ProxyHandler)
    proxy.gate = gate
    proxy.flows = {}
    proxy.flows_lock = threading.Lock()
    resolver = _Resolver(gate)
    dns_port = int(config.get("dns_port", 53))
    quiet = _QuietLogger(gate.step)
    servers = [DNSServer(resolver, address=listen, port=dns_port, logger=quiet),
               DNSServer(resolver, address=listen, port=dns_port, tcp=True, logger=quiet)]

    def stop(_signum: int, _frame: Any) -> None:
        with proxy.flows_lock:
            for flow in list(proxy.flows.values()):
                _emit_close(flow)
            proxy.flows.clear()
        emit("gateway", step=gate.step, phase="stopped")
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for server in servers:
        server.start_thread()
    emit("gateway", step=gate.step, phase="ready", listen_ip=listen,
         refused=[str(n) for n in refused], policy_digest=policy.digest())
    log(f"sbx gateway for step {gate.step} listening on {listen}")
    proxy.serve_forever()


if __name__ == "__main__":
    main()
