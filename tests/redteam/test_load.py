"""Load: twelve steps side by side, each in its own sandbox, each probing all the others.
Every peer probe is blocked, every step succeeds, the evidence verifies, nothing is left."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import docker
import pytest
import yaml

from sbx.attest.signing.local import KeyPair
from sbx.errors import EXIT_OK
from sbx.pipelines.cli import main
from tests.conftest import Internet
from tests.redteam.faults_support import failed_checks, run_objects

pytestmark = pytest.mark.docker
STEPS = 12


def test_twelve_parallel_steps_cannot_reach_each_other(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        docker_client: docker.DockerClient) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    steps = {f"s{i:02d}": {"image": "sbx-step:bookworm", "run": "echo $SBX_STEP > who.txt",
                           "outputs": ["who.txt"]} for i in range(STEPS)}
    (ws / "pipeline.yaml").write_text(yaml.safe_dump({"name": "load", "steps": steps}))
    out = tmp_path / "run"
    began = time.monotonic()
    code = main(["run", str(ws / "pipeline.yaml"), "--out", str(out), "--quiet",
                 "--egress-network", internet.network])
    took = time.monotonic() - began
    record = json.loads((out / "run.json").read_text())
    s = record["steps"]
    assert sorted(s) == sorted(steps)
    # Every step succeeded: no probe's decision was counted as the step's own traffic.
    assert code == EXIT_OK, record["reason"]
    assert all(st["status"] == "succeeded" and st["flows"]["denied"] == 0
               for st in s.values()), {n: st["reason"] for n, st in s.items()}
    # Twelve sandboxes: distinct networks on disjoint subnets.
    nets = [ipaddress.ip_network(st["docker"]["subnet"]) for st in s.values()]
    assert len({st["docker"]["network"] for st in s.values()}) == STEPS
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    # Each step probed every other (its gateway and agent, every probe kind): all blocked.
    per_peer = {len(st["peer_probes"]) // (STEPS - 1) for st in s.values()}
    assert len(per_peer) == 1 and per_peer != {0}, per_peer
    probes = [p for st in s.values() for p in st["peer_probes"]]
    assert len(probes) == STEPS * (STEPS - 1) * per_peer.pop()
    assert all(p["blocked"] for p in probes), [p for p in probes if not p["blocked"]]
    for name, st in s.items():
        hit = {ipaddress.ip_address(p["target"].split(":")[0]) for p in st["peer_probes"]}
        for other, ost in s.items():
            inside = {ip for ip in hit if ip in ipaddress.ip_network(ost["docker"]["subnet"])}
            # Its gateway and its agent for every other step, nothing of its own.
            assert len(inside) == (0 if other == name else 2), (name, other, inside)
    failed = failed_checks(out, signing_key)
    assert failed == {}
    assert run_objects(docker_client, record["run_id"]) == []
    print(f"\n12 parallel steps: {took:.1f} s, {len(probes)} peer probes blocked")
