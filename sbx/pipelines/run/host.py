"""What a run takes from the host: the addresses that lead to it, and its egress network."""

from __future__ import annotations

import docker
import psutil

from sbx.sandbox import labels
from sbx.sandbox.network import create_egress_network

# The step label of the run's own objects (its egress network): not a step name, since
# those begin with a letter or digit, so no step's clean-up sweeps it away.
RUN_SCOPE = "_run"


def run_egress_name(run_id: str) -> str:
    """The name of the run's own egress network."""
    return labels.object_name(run_id, RUN_SCOPE, "egress")


def create_run_egress(client: docker.DockerClient, run_id: str) -> str:
    """One egress network for all the run's gateways, not one per step.

    ICC is off on it, so no two gateways exchange a packet there (as on a shared
    `--egress-network`), and each gateway refuses every internal address anyway. One
    bridge, and one set of engine iptables rules, instead of one per step: the engine
    serializes network creation, which made many steps slow to start, and its default
    address pools hold about 30 such networks, too few for a 64-step pipeline.
    """
    name = run_egress_name(run_id)
    create_egress_network(client, name, labels.for_object(run_id, RUN_SCOPE, "network"))
    return name


def host_addresses(client: docker.DockerClient) -> tuple[str, ...]:
    """Addresses that lead to the host: its interfaces and every Docker bridge gateway."""
    found: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name in ("AF_INET", "AF_INET6"):
                found.add(a.address.split("%")[0])
    for net in client.api.networks():
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                found.add(cfg["Gateway"])
    return tuple(sorted(found))
