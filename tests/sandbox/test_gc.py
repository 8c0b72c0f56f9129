"""`sbx gc`: removes what dead runs left, never a live run's objects or a user's containers."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from sbx.pipelines.cli import main
from sbx.sandbox import labels as L
from sbx.sandbox.gc import collect

pytestmark = pytest.mark.docker


@pytest.fixture
def run_id() -> str:
    return f"gc-test-{secrets.token_hex(4)}"


@pytest.fixture
def network(docker_client: docker.DockerClient, run_id: str) -> Iterator[Any]:
    """A run's network, its owner label left for each test to choose."""
    made: list[str] = []

    def make(owner: str | None) -> str:
        tags = {L.MANAGED: "1", L.RUN: run_id, L.STEP: "s", L.ROLE: "step"}
        if owner is not None:
            tags[L.OWNER] = owner
        net_id: str = docker_client.api.create_network(f"sbx-{run_id}", labels=tags,
                                                       internal=True)["Id"]
        made.append(net_id)
        return net_id

    yield make
    for net_id in made:
        try:
            docker_client.api.remove_network(net_id)
        except docker.errors.NotFound:
            pass


def _exists(client: docker.DockerClient, net_id: str) -> bool:
    try:
        client.api.inspect_network(net_id)
        return True
    except docker.errors.NotFound:
        return False


def test_a_live_run_is_kept_unless_forced(docker_client: docker.DockerClient, network: Any,
                                          run_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    net_id = network(L.owner())  # this very process: alive
    assert main(["gc"]) == 0
    assert _exists(docker_client, net_id)
    assert f"kept run {run_id}" in capsys.readouterr().out
    assert main(["gc", "--run", run_id, "--force"]) == 0
    assert not _exists(docker_client, net_id)


@pytest.mark.parametrize("owner", [None, "garbage", f"{socket.gethostname()}/999999999/1.00"])
def test_a_dead_or_unknown_owner_is_removed(docker_client: docker.DockerClient, network: Any,
                                            run_id: str, owner: str | None) -> None:
    net_id = network(owner)
    result = collect(docker_client, run_id)
    assert result.removed == (f"network sbx-{run_id}",) and result.live_runs == ()
    assert not _exists(docker_client, net_id)


def test_a_reused_pid_does_not_keep_a_dead_run(docker_client: docker.DockerClient,
                                               network: Any, run_id: str) -> None:
    host, pid, _ = L.owner().split("/")
    net_id = network(f"{host}/{pid}/12.34")  # this pid, but another process's start time
    assert collect(docker_client, run_id).removed
    assert not _exists(docker_client, net_id)


def test_a_users_container_from_an_sbx_image_is_never_touched(
        docker_client: docker.DockerClient, sbx_images: tuple[str, str]) -> None:
    # sbx's images carry sbx.managed=1, and a container inherits its image's labels.
    cid = docker_client.api.create_container(sbx_images[1], command=["true"])["Id"]
    try:
        assert docker_client.api.inspect_container(cid)["Config"]["Labels"].get(L.MANAGED)
        assert main(["gc"]) == 0
        docker_client.api.inspect_container(cid)
    finally:
        docker_client.api.remove_container(cid, force=True)
