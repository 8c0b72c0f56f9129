"""Reach beyond the step: another step of the same pipeline (its addresses and names,
and the own gateway used as a router or proxy to them), the host and the Docker
daemon (bridge addresses, the API ports, the host's own address), and the cloud
metadata service in every spelling. Each attempt is blocked and recorded."""

from __future__ import annotations

import docker
import pytest

from tests.conftest import Internet
from tests.redteam import netattacks as na
from tests.redteam.batches import DUMMY_PEER, Batch, Cross, cross_batch, net_batch

pytestmark = pytest.mark.docker

HOST_NAMES = [n.name for n in na.host("198.18.0.1", "192.0.2.2")]
LAN_HOST_NAMES = [n.name for n in na.internal("10.99.0.20", "10.99.0.1")
                  if n.name.startswith("host/")]
META_NAMES = [n.name for n in na.metadata()]
CROSS_NAMES = [n.name for n in na.cross(DUMMY_PEER)]
COVERS = frozenset(HOST_NAMES + META_NAMES + CROSS_NAMES)  # LAN_HOST_NAMES: test_egress


@pytest.fixture
def batch(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return net_batch(internet, docker_client, sbx_images[1], tmp_path_factory)


@pytest.fixture
def cross(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Cross:
    return cross_batch(internet, docker_client, tmp_path_factory)


@pytest.mark.parametrize("name", HOST_NAMES + META_NAMES)
def test_host_and_metadata_attack_is_blocked_and_recorded(batch: Batch, name: str) -> None:
    assert batch.judge(name) == []


@pytest.mark.parametrize("name", CROSS_NAMES)
def test_cross_step_attack_is_blocked_and_recorded(cross: Cross, name: str) -> None:
    assert cross.peer, "the test could not learn the victim's addresses"
    assert cross.batch.judge(name) == []


def test_the_victim_was_up_and_received_nothing(cross: Cross) -> None:
    results = cross.batch.results
    first = min(r["t0"] for r in results.values())
    last = max(r["t1"] for r in results.values())
    assert cross.victim["ready"] < first and last < cross.victim["ended"], \
        "the attacks did not run while the victim was listening"
    assert cross.victim["received"] == [], cross.victim["received"]
    steps = cross.batch.run.result.record["steps"]
    assert steps["victim"]["status"] == "succeeded"
    # Enforce mode: the attempts fail the attacker's step, never the victim's.
    assert steps["attacker"]["status"] == "failed" and steps["attacker"]["exit_code"] == 0
