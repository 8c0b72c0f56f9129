"""Many GitLab jobs on one runner share one engine: eight `sbx run` processes started at
once all succeed, each in its own sandbox, and leave nothing behind."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import docker
import pytest
import yaml

from tests.redteam.faults_support import run_objects, spawn_sbx

pytestmark = pytest.mark.docker
PROCESSES = 8


@pytest.mark.usefixtures("sbx_images")
def test_eight_sbx_runs_at_once_on_one_engine(tmp_path: Path,
                                              docker_client: docker.DockerClient) -> None:
    spec = tmp_path / "noop.yaml"
    spec.write_text(yaml.safe_dump({"name": "noop", "image": "sbx-step:bookworm",
                                    "run": "true", "outputs": []}))
    outs = [tmp_path / f"job{i}" for i in range(PROCESSES)]
    procs = [spawn_sbx(["run", str(spec), "--out", str(out), "--quiet"]) for out in outs]
    results = [(p.wait(timeout=600), p.stderr.read().decode() if p.stderr else "")
               for p in procs]
    records = [json.loads((out / "run.json").read_text()) for out in outs]
    assert [code for code, _ in results] == [0] * PROCESSES, [err for _, err in results]
    steps = [r["steps"]["noop"] for r in records]
    assert all(s["status"] == "succeeded" for s in steps)
    # Eight sandboxes: distinct networks, distinct egress networks, disjoint subnets.
    assert len({s["docker"]["network"] for s in steps}) == PROCESSES
    assert len({s["docker"]["egress_network"] for s in steps}) == PROCESSES
    nets = [ipaddress.ip_network(s["docker"]["subnet"]) for s in steps]
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    assert len({r["run_id"] for r in records}) == PROCESSES
    for record in records:
        assert run_objects(docker_client, record["run_id"]) == []
