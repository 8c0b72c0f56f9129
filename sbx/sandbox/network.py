"""The step network: an internal bridge with a subnet sbx chooses.

sbx picks the subnet so it can give the gateway and agent fixed addresses and
create both containers at once, instead of starting one to learn its address.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

import docker
from docker.errors import APIError
from docker.types import IPAMConfig, IPAMPool

from sbx.errors import EnvironmentFailure

# Private, so the gateway refuses it as an internal range; /28 leaves room for
# the host bridge (.1), the gateway (.2) and the agent (.3).
STEP_POOL = ipaddress.IPv4Network("10.222.0.0/16")


@dataclass(frozen=True)
class StepNetwork:
    """The addresses of one step's network."""

    id: str
    name: str
    subnet: str
    bridge_ip: str
    gateway_ip: str
    agent_ip: str


def create_step_network(client: docker.DockerClient, name: str,
                        labels: dict[str, str], attempts: int = 32) -> StepNetwork:
    """Create an internal bridge network on a free /28 of STEP_POOL."""
    subnets: list[ipaddress.IPv4Network] = list(STEP_POOL.subnets(new_prefix=28))
    last: APIError | None = None
    for _ in range(attempts):
        subnet = subnets[secrets.randbelow(len(subnets))]
        hosts = list(subnet.hosts())
        bridge, gateway, agent = (str(h) for h in hosts[:3])
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=bridge)])
        try:
            net = client.api.create_network(
                name, driver="bridge", internal=True, ipam=ipam, labels=labels,
                check_duplicate=True,
                options={"com.docker.network.bridge.enable_icc": "true",
                         # Engines 28+ stop answering from the host bridge address.
                         "com.docker.network.bridge.gateway_mode_ipv4": "isolated"})
        except APIError as exc:
            if "overlap" in str(exc).lower():
                last = exc
                continue
            raise EnvironmentFailure(f"cannot create network {name}: {exc.explanation}") from None
        return StepNetwork(id=net["Id"], name=name, subnet=str(subnet), bridge_ip=bridge,
                           gateway_ip=gateway, agent_ip=agent)
    raise EnvironmentFailure(f"no free subnet in {STEP_POOL} for network {name}: {last}")


def create_egress_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> str:
    """A routed bridge for one gateway's way out; ICC off so gateways never meet."""
    try:
        net = client.api.create_network(
            name, driver="bridge", labels=labels, check_duplicate=True,
            options={"com.docker.network.bridge.enable_icc": "false"})
    except APIError as exc:
        raise EnvironmentFailure(f"cannot create network {name}: {exc.explanation}") from None
    return str(net["Id"])
