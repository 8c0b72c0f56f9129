"""The namespace agent: owns the network namespace the step joins.

Started with NET_ADMIN (and the capabilities needed to give it up), it installs
the interception rules, binds its NFLOG group and listeners, then drops every
capability and runs unprivileged:
- all TCP is redirected to a transparent relay that reads the original
  destination, asks the gateway with CONNECT and streams the client's bytes to it
  (the gateway reads the TLS SNI or HTTP Host from them and decides);
- all DNS, to any server, is relayed to the gateway;
- everything else (other UDP, ICMP, IPv6, the host bridge) is dropped and logged.
Enforcement does not depend on this process: the step network is internal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sbx.sandbox.runtime import heartbeat, limits, pipe
from sbx.sandbox.runtime.counters import COUNTERS, udp_drops
from sbx.sandbox.runtime.events import emit, log
from sbx.sandbox.runtime.firewall import drop_privileges, rules_v4, rules_v6, run, setup_ipv6
from sbx.sandbox.runtime.nflog import DroppedPacket, NflogReader

SO_ORIGINAL_DST = 80
# How long the stop may spend writing queued NFLOG records. The queue holds what the step
# sent before it exited, so it drains at once; the bound is for a step still sending (a
# failed start) and stays under sbx's 2 s grace before SIGKILL. Whatever is left is still
# counted by the firewall's counters, read before the stop.
DRAIN_LIMIT = 1.0


def original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


class Agent:
    """The relays the agent runs after dropping privileges."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.step: str = cfg["step"]
        self.gateway = (cfg["gateway_ip"], int(cfg["proxy_port"]))
        # Held from reading NFLOG records to having written them: the stop takes it, so no
        # record is read and then lost to the exit.
        self.nflog_lock = threading.Lock()

    def _deny(self, reason: str, **fields: Any) -> None:
        emit("tcp", step=self.step, verdict="denied", reason=reason, source="agent",
             violation=True, **fields)

    def relay_tcp(self, conn: socket.socket) -> None:
        try:
            dst_ip, dst_port = original_dst(conn)
        except OSError:
            pipe.reset(conn)
            return
        if dst_ip == "127.0.0.1" and dst_port == self.cfg["relay_port"]:
            self._deny("direct connection to the relay", dst_ip=dst_ip, dst_port=dst_port)
            pipe.reset(conn)
            return
        try:
            # The source port ties the gateway's record to this connection (the probes' check).
            src_port = conn.getpeername()[1]
        except OSError:
            src_port = 0
        target = f"{dst_ip}:{dst_port}"
        try:
            upstream = socket.create_connection(self.gateway, timeout=5)
            upstream.sendall(
                f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                f"X-Sbx-Orig-Src-Port: {src_port}\r\n"
                f"X-Sbx-Relay: {self.cfg.get('relay_token', '')}\r\n\r\n".encode())
        except OSError as exc:
            self._deny(f"gateway unreachable: {exc}", dst_ip=dst_ip, dst_port=dst_port)
            pipe.reset(conn)
            return
        # The gateway reads the name from the client's own first bytes, whenever they
        # come (no sniffing here, no timeout that falls back to the address): they flow
        # to it from the start, and only its answer lets bytes flow back.
        upstream.settimeout(None)
        conn.settimeout(None)
        counts = [0, 0]
        sending = threading.Thread(target=pipe.pump, args=(conn, upstream, counts, 0),
                                   daemon=True)
        sending.start()
        try:
            head, rest = pipe.read_head(upstream)
        except (OSError, ValueError):
            head, rest = b"", b""
        if not head.startswith(b"HTTP/1.1 200"):
            # The gateway recorded the verdict. Shutting the reading side ends the
            # sending thread's read (close alone would not) before the reset.
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            sending.join()
            pipe.reset(conn)
            upstream.close()
            return
        try:
            if rest:
                conn.sendall(rest)
        except OSError:
            pass
        pipe.pump(upstream, conn, counts, 1)
        sending.join()
        conn.close()
        upstream.close()

    def relay_dns_tcp(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.cfg["gateway_ip"], 53), timeout=5)
        except OSError as exc:
            emit("dns", step=self.step, verdict="denied", reason=f"gateway unreachable: {exc}",
                 source="agent", violation=True)
            pipe.reset(conn)
            return
        # Timeouts on both sides: an idle client must not hold a slot (the gateway
        # also drops it after DNS_IDLE_TIMEOUT and records that).
        limits.idle_timeout(conn, limits.DNS_IDLE_TIMEOUT * 2)
        limits.idle_timeout(upstream, limits.DNS_IDLE_TIMEOUT * 2)
        pipe.relay(conn, upstream)

    def serve_dns_udp(self, sock: socket.socket) -> None:
        slots = limits.Slots(limits.DNS_UDP_WORKERS)
        refusals = limits.Refusals(self.step, "agent", "dns_udp")
        while True:
            try:
                query, client = sock.recvfrom(4096)
            except OSError:
                continue
            if not slots.take():
                refusals.refuse(f"all {slots.size} DNS relay workers are busy")
                continue
            if not limits.start_thread(self._dns_worker, slots, sock, query, client):
                slots.give()
                refusals.refuse("cannot start a thread")

    def _dns_worker(self, slots: limits.Slots, sock: socket.socket, query: bytes,
                    client: Any) -> None:
        try:
            self._dns_query(sock, query, client)
        except OSError:
            pass  # the client went away before its answer
        finally:
            slots.give()

    def _dns_query(self, sock: socket.socket, query: bytes, client: Any) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            try:
                up.sendto(query, (self.cfg["gateway_ip"], 53))
                answer = up.recv(65535)
            except OSError as exc:
                emit("dns", step=self.step, verdict="denied", source="agent", violation=True,
                     reason=f"gateway unreachable: {exc}")
                return
        sock.sendto(answer, client)

    def serve_nflog(self, reader: NflogReader) -> None:
        while True:
            reader.wait()
            with self.nflog_lock:
                self._log_queued(reader)

    def drain_nflog(self, reader: NflogReader, limit: float = DRAIN_LIMIT) -> None:
        """Write every record still queued and keep `serve_nflog` from reading more (the
        lock is never given back): the last thing before the exit."""
        self.nflog_lock.acquire()
        self._log_queued(reader, deadline=time.monotonic() + limit)

    def _log_queued(self, reader: NflogReader, deadline: float | None = None) -> None:
        """Emit one queued batch, or with a deadline every batch until none is left."""
        while True:
            try:
                packets = reader.read_queued()
            except (OSError, ValueError) as exc:  # ENOBUFS under a flood: say so and go on
                # What was lost is counted by the firewall's own counters (sbx reads them).
                if COUNTERS.add("nflog_overruns") == 1:
                    emit("agent", step=self.step, phase="log-overrun", reason=str(exc))
                packets = []
            if packets is None:
                return
            for p in packets:
                self._log_drop(p)
            if deadline is None or time.monotonic() >= deadline:
                return

    def _log_drop(self, p: DroppedPacket) -> None:
        kind = p.protocol if p.family == socket.AF_INET else "ipv6"
        reason = "dropped by the sandbox firewall"
        if p.prefix == "bound":
            # Logged after the REDIRECT: the address is the relay's, not the target's.
            reason = ("a connection bound to a device (SO_BINDTODEVICE) bypassed the "
                      "relay; dropped (the destination is the relay's address)")
        emit(kind, step=self.step, dst_ip=p.dst_ip, dst_port=p.dst_port,
             protocol=p.protocol, verdict="denied", source="agent", violation=True,
             reason=reason, bytes_out=p.length, layer="firewall")


def _accept_loop(server: socket.socket, handler: Callable[[socket.socket], None],
                 slots: limits.Slots, refusals: limits.Refusals) -> None:
    """Accept and hand each connection to a thread, within `slots`; past them, refuse
    (reset, counted, recorded) instead of letting the task limit kill the loop."""
    def run(conn: socket.socket) -> None:
        try:
            handler(conn)
        finally:
            slots.give()

    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        if not slots.take():
            refusals.refuse(f"all {slots.size} {refusals.what} slots are busy")
            pipe.reset(conn)
            continue
        if not limits.start_thread(run, conn):
            slots.give()
            refusals.refuse("cannot start a thread")
            pipe.reset(conn)


def _listen(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    return sock


def main() -> None:
    """Set up from SBX_CONFIG, drop privileges, then relay until killed."""
    cfg = json.loads(os.environ["SBX_CONFIG"])
    step = cfg["step"]
    try:
        reader = NflogReader(int(cfg["nflog_group"]))
        setup_ipv6()
        run(["ip6tables-restore"], rules_v6(cfg))
        run(["iptables-restore", "--noflush"], rules_v4(cfg))
        rules = run(["iptables-save"]) + run(["ip6tables-save"])
        relay = _listen(socket.SOCK_STREAM, int(cfg["relay_port"]))
        dns_tcp = _listen(socket.SOCK_STREAM, int(cfg["dns_tcp_port"]))
        dns_udp = _listen(socket.SOCK_DGRAM, int(cfg["dns_udp_port"]))
        caps = drop_privileges()
    except Exception as exc:  # any failure means the step must not run
        emit("agent", step=step, phase="failed", reason=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    agent = Agent(cfg)
    ports = (int(cfg["dns_udp_port"]),)
    beating = threading.Event()

    def drops() -> dict[str, int]:
        return {"dns_socket_drops": udp_drops(ports)}

    stopping = threading.Event()

    def stop() -> None:
        stopping.wait()
        beating.set()
        agent.drain_nflog(reader)
        heartbeat.beat("agent", step, 0, drops, final=True)
        sys.stdout.flush()
        os._exit(0)

    # The handler only wakes the stop thread: it runs on the main thread, which may be
    # inside emit() (the lock the last records need) or anywhere else.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    threading.Thread(target=stop, name="sbx-stop", daemon=True).start()
    threading.Thread(target=agent.serve_nflog, args=(reader,), daemon=True).start()
    threading.Thread(target=agent.serve_dns_udp, args=(dns_udp,), daemon=True).start()
    threading.Thread(target=_accept_loop, args=(
        dns_tcp, agent.relay_dns_tcp, limits.Slots(limits.DNS_TCP_CONNECTIONS),
        limits.Refusals(step, "agent", "dns_tcp")), daemon=True).start()
    emit("agent", step=step, phase="ready", uid=os.getuid(), caps=caps,
         rules=[line for line in rules.splitlines() if line.startswith("-")])
    heartbeat.start("agent", step, drops, stop=beating)
    log(f"sbx agent for step {step}: interception installed, capabilities dropped")
    _accept_loop(relay, agent.relay_tcp, limits.Slots(limits.PROXY_FLOWS),
                 limits.Refusals(step, "agent", "relay"))


if __name__ == "__main__":
    main()
