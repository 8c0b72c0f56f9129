"""The gateway's own addresses and gateways, read over rtnetlink, against `ip`'s answer."""

from __future__ import annotations

import json

import docker
import pytest

from tests.conftest import TEST_LABEL

COMPARE = """
import json, subprocess
from sbx.sandbox.runtime.interfaces import own_addresses

def ip(*args):
    return json.loads(subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                                     check=True).stdout or "[]")

addresses, gateways = own_addresses()
print(json.dumps({
    "ours": [sorted(addresses), sorted(gateways)],
    "ip": [sorted(a["local"] for link in ip("addr") for a in link.get("addr_info", [])),
           sorted(r["gateway"] for f in ("-4", "-6") for r in ip(f, "route")
                  if r.get("gateway"))]}))
"""


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_own_addresses_are_every_address_and_gateway_ip_shows(
        docker_client: docker.DockerClient, sbx_images: tuple[str, str]) -> None:
    """In the runtime image, on a network with a gateway and with IPv6 on (loopback and
    link-local addresses): the same addresses and gateways as `ip -j addr` / `ip -j route`,
    which is what the gateway refuses to connect to."""
    runtime, _ = sbx_images
    out = docker_client.containers.run(
        runtime, ["python3", "-c", COMPARE], remove=True, network_mode="bridge",
        sysctls={"net.ipv6.conf.all.disable_ipv6": "0"}, labels={TEST_LABEL: "1"})
    found = json.loads(out)
    assert found["ours"] == found["ip"]
    addresses, gateways = found["ours"]
    assert "127.0.0.1" in addresses and "::1" in addresses and gateways
    assert any(a.startswith("fe80:") for a in addresses)
