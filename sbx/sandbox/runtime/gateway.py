"""The egress gateway: an explicit HTTP proxy and a DNS server applying the step's policy.

It runs in its own container, attached to the step's internal network (where it
listens) and to the egress network (its only route out). It never forwards IP
packets; every connection it makes is its own, to its own resolution of a name.
The decisions live in `gate`, the DNS server in `dns_server`, the proxy in `proxy`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
import threading

from sbx.sandbox.policy import Policy
from sbx.sandbox.runtime import heartbeat, limits
from sbx.sandbox.runtime.counters import udp_drops
from sbx.sandbox.runtime.dns_server import Resolver, make_servers
from sbx.sandbox.runtime.events import emit, log
from sbx.sandbox.runtime.gate import Decision, Gate, Network
from sbx.sandbox.runtime.http.tunnel import Inspection
from sbx.sandbox.runtime.interfaces import own_addresses
from sbx.sandbox.runtime.proxy import Proxy, ProxyHandler, emit_close

__all__ = ["Decision", "Gate", "Network", "main"]


def _own_addresses() -> list[Network]:
    """This container's addresses and its default gateway (the host's bridge)."""
    addresses, gateways = own_addresses()
    return [ipaddress.ip_network(a) for a in addresses + gateways]


def main() -> None:
    """Start from the JSON configuration in SBX_CONFIG and serve until SIGTERM."""
    config = json.loads(os.environ["SBX_CONFIG"])
    policy = Policy.from_dict(config["policy"])
    refused = tuple(ipaddress.ip_network(n) for n in config.get("refused", [])) + tuple(
        _own_addresses())
    gate = Gate(step=config["step"], policy=policy, refused=refused,
                relay_token=str(config.get("relay_token", "")))
    listen = config["listen_ip"]
    step = gate.step
    proxy_class = limits.bounded(Proxy, limits.PROXY_FLOWS, step, "gateway", "proxy")
    proxy = proxy_class((listen, int(config.get("proxy_port", 3128))), ProxyHandler)
    proxy.gate = gate
    # The run CA exists only here, in this process's memory (None: nothing is inspected).
    proxy.inspection = Inspection.for_policy(gate.step, policy, str(config.get("upstream_ca", "")))
    ca = proxy.inspection.ca if proxy.inspection is not None else None
    proxy.flows = {}
    proxy.flows_lock = threading.Lock()
    resolver = Resolver(gate)
    dns_port = int(config.get("dns_port", 53))
    servers = make_servers(resolver, listen, dns_port)

    beating = threading.Event()

    def drops() -> dict[str, int]:
        return {"dns_socket_drops": udp_drops((dns_port,))}

    stopping = threading.Event()

    def stop() -> None:
        stopping.wait()
        beating.set()
        for server, what in zip(servers, ("dns_udp", "dns_tcp"), strict=True):
            limits.refuse_queued(server.server, what)
        with proxy.flows_lock:
            for flow in list(proxy.flows.values()):
                emit_close(flow)
            proxy.flows.clear()
        heartbeat.beat("gateway", step, 0, drops, final=True)
        emit("gateway", step=step, phase="stopped")
        sys.stdout.flush()
        os._exit(0)

    # The handler only wakes the stop thread: it runs on the main thread, which may be
    # inside emit() (a refusal while the proxy's slots are full) holding the lock that a
    # flow's handler, holding `flows_lock`, waits for: the stop would wait for both.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stopping.set())
    threading.Thread(target=stop, name="sbx-stop", daemon=True).start()
    for server in servers:
        server.start_thread()
    emit("gateway", step=step, phase="ready", listen_ip=listen,
         refused=[str(n) for n in refused], policy_digest=policy.digest(),
         ca_cert=ca.pem() if ca else None, ca_fingerprint=ca.fingerprint() if ca else None)
    heartbeat.start("gateway", step, drops, stop=beating)
    log(f"sbx gateway for step {step} listening on {listen}")
    proxy.serve_forever()


if __name__ == "__main__":
    main()
