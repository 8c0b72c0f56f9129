"""Everything under tests/redteam is part of the red-team suite (`make redteam`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from sbx.sandbox.archive import pack_files
from tests.conftest import TEST_LABEL, Host, Internet, _ca, _cert

VHOST_SCRIPT = Path(__file__).parent / "servers" / "vhost.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/redteam/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.redteam)


@dataclass
class SharedHost:
    """One address serving several names (servers/vhost.py), on the simulated internet."""

    host: Host
    names: dict[str, str]  # tenant -> DNS name (allowed, denied, xn--strae-oqa)


@pytest.fixture(scope="session")
def shared_host(internet: Internet, docker_client: docker.DockerClient,
                sbx_images: tuple[str, str]) -> Iterator[SharedHost]:
    """`allowed.sbx.test`, `denied.sbx.test` and `xn--strae-oqa.sbx.test` (straße) on one
    address: TLS routed by SNI, HTTP by Host, as a CDN or a virtual host does."""
    api = docker_client.api
    tag = secrets.token_hex(4)
    names = {t: f"{t}.sbx.test" for t in ("allowed", "denied", "xn--strae-oqa")}
    ca_key, ca = _ca()
    files: dict[str, bytes] = {"vhost.py": VHOST_SCRIPT.read_bytes()}
    for tenant, name in names.items():
        cert, key = _cert(name, ca_key, ca)
        files[f"{tenant}.pem"], files[f"{tenant}.key"] = cert, key
    third = internet.subnet.split(".")[2]
    ip = f"198.18.{third}.30"
    cid = api.create_container(
        sbx_images[1], command=["python3", "/srv/vhost.py"], name=f"sbx-test-{tag}-vhost",
        labels={TEST_LABEL: tag},
        networking_config=api.create_networking_config({
            internet.network: api.create_endpoint_config(aliases=sorted(names.values()),
                                                         ipv4_address=ip)}),
        host_config=api.create_host_config(network_mode=internet.network))["Id"]
    try:
        api.put_archive(cid, "/srv", pack_files(files))
        api.start(cid)
        for _ in range(100):
            if b'"ready"' in api.logs(cid):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the shared-address host did not start: {api.logs(cid)!r}")
        yield SharedHost(Host("allowed.sbx.test", ip, cid, docker_client), names)
    finally:
        api.remove_container(cid, force=True)
