"""The gateway's DNS server: answers allowed names, refuses the rest, records every query."""

from __future__ import annotations

import socket
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSHandler, DNSServer, TCPServer, UDPServer

from sbx.sandbox.policy import PolicyError, normalize_name
from sbx.sandbox.runtime import limits
from sbx.sandbox.runtime.events import emit
from sbx.sandbox.runtime.gate import Gate, rule_fields


class Resolver(BaseResolver):  # type: ignore[misc]
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
            if not found:
                reply.header.rcode = RCODE.NXDOMAIN
        if withheld and not answers:
            # An allowed name that points inside (DNS rebinding): the same verdict the
            # proxy gives it, so the attempt is on record as denied, not as an empty answer.
            # (An answer never allows an address later: the proxy judges the name the
            # client's own bytes carry, so nothing is remembered here.)
            emit("dns", step=self.gate.step, name=name, qtype=qtype, verdict="denied",
                 reason=f"{name} resolves only to internal addresses {withheld}",
                 answers=[], withheld=withheld, src_ip=client, violation=True,
                 **rule_fields(rule))
            return reply
        emit("dns", step=self.gate.step, name=name, qtype=qtype,
             verdict="audit" if audit else "allowed", answers=answers, src_ip=client,
             withheld=withheld or None, violation=audit or None, **rule_fields(rule))
        return reply


class QuietLogger:
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


class RecordingDNSHandler(DNSHandler):  # type: ignore[misc]
    """dnslib's handler, with an idle timeout and an event for every way it can fail.

    dnslib catches only its own DNSError: a message whose compression pointers
    chain deeper than Python's recursion limit raises RecursionError, and a TCP
    client that never sends its message holds the thread forever. Both now end
    in a `dns` event, and a timed-out TCP connection frees its slot.
    """

    def setup(self) -> None:
        if isinstance(self.request, socket.socket):
            limits.idle_timeout(self.request, limits.DNS_IDLE_TIMEOUT)

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:
            self.protocol = "tcp"
            self.server.logger.log_error(
                self, f"no complete DNS message within {limits.DNS_IDLE_TIMEOUT:g} s")
        except RecursionError:
            self.server.logger.log_error(self, "compression pointers nested too deep")
        except Exception as exc:  # whatever dnslib did not expect is still a decision
            self.server.logger.log_error(self, f"{type(exc).__name__}: {exc}")


def make_servers(resolver: Resolver, address: str, port: int) -> list[DNSServer]:
    """The UDP and TCP servers on `port`, their threads bounded (see `limits`)."""
    step = resolver.gate.step
    quiet = QuietLogger(step)
    udp = limits.bounded(UDPServer, limits.DNS_UDP_WORKERS, step, "gateway", "dns_udp")
    tcp = limits.bounded(TCPServer, limits.DNS_TCP_CONNECTIONS, step, "gateway", "dns_tcp")
    return [DNSServer(resolver, address=address, port=port, logger=quiet,
                      handler=RecordingDNSHandler, server=udp),
            DNSServer(resolver, address=address, port=port, tcp=True, logger=quiet,
                      handler=RecordingDNSHandler, server=tcp)]
