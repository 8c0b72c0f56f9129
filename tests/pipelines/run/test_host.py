"""The run's own egress network (sbx.pipelines.run.host): one per run, ICC off, removed."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest
import yaml

from sbx.errors import EXIT_OK, EnvironmentFailure
from sbx.pipelines.cli import main
from sbx.pipelines.run.host import RunEgress, create_run_egress, run_egress_name
from sbx.sandbox.sandbox import remove_by_label

pytestmark = pytest.mark.docker


def test_the_runs_egress_network_keeps_gateways_apart(
        docker_client: docker.DockerClient) -> None:
    run_id = "test-host-egress"
    try:
        name = create_run_egress(docker_client, run_id)
        net = docker_client.api.inspect_network(name)
        # ICC off: the engine drops traffic between two containers on this bridge.
        assert net["Options"].get("com.docker.network.bridge.enable_icc") == "false"
        assert net["Labels"]["sbx.run"] == run_id and net["Labels"]["sbx.step"] == "_run"
        assert name == run_egress_name(run_id)
    finally:
        remove_by_label(docker_client, {"sbx.run": run_id})


def test_steps_of_a_run_share_its_egress_network_and_nothing_is_left(
        tmp_path: Path, docker_client: docker.DockerClient) -> None:
    steps = {f"s{i}": {"image": "sbx-step:bookworm", "run": "true"} for i in range(2)}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"name": "two", "steps": steps}))
    out = tmp_path / "run"
    code = main(["run", str(tmp_path / "pipeline.yaml"), "--out", str(out), "--quiet"])
    record = json.loads((out / "run.json").read_text())
    assert code == EXIT_OK, record["reason"]
    egress = {st["docker"]["egress_network"] for st in record["steps"].values()}
    assert egress == {run_egress_name(record["run_id"])}
    # ... while each step still had an internal network of its own.
    assert len({st["docker"]["network"] for st in record["steps"].values()}) == 2
    assert not docker_client.api.networks(filters={"label": f"sbx.run={record['run_id']}"})


def test_the_runs_egress_network_is_made_and_removed_in_the_background(
        docker_client: docker.DockerClient) -> None:
    """Gateways wait for it; a creation that fails reaches each of them; removal goes."""
    run_id = "test-host-background"
    egress = RunEgress(docker_client, run_id)
    try:
        egress.start()
        assert egress.wait() == run_egress_name(run_id)
        assert docker_client.api.inspect_network(run_egress_name(run_id))["Name"]
        twice = RunEgress(docker_client, run_id)  # the name is taken: the engine refuses
        twice.start()
        with pytest.raises(EnvironmentFailure, match="cannot create network"):
            twice.wait()
        egress.remove()
        egress.join()
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_network(run_egress_name(run_id))
    finally:
        remove_by_label(docker_client, {"sbx.run": run_id})
