"""Load: twelve steps side by side, each in its own sandbox, each probing its nearest live
neighbour on each side (sbx.pipelines.run.peers): every network is probed from and at, every
peer probe is blocked, every step succeeds, the evidence verifies, nothing is left."""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading
import time
from pathlib import Path

import docker
import pytest
import yaml

from sbx.attest.signing.local import KeyPair
from sbx.errors import EXIT_OK
from sbx.pipelines.cli import main
from sbx.sandbox.archive import pack_files
from tests.conftest import Internet
from tests.redteam.faults_support import failed_checks, run_objects

pytestmark = pytest.mark.docker
STEPS = 12


def _release_when_all_run(client: docker.DockerClient, out: Path) -> None:
    """Drop /tmp/go into every step container once no step is still on its way there
    (each is running, or ended without running: then the test fails on its status)."""
    deadline = time.monotonic() + 600  # a hang guard only
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            record = json.loads((out / "run.json").read_text())
        except (OSError, ValueError):
            continue
        statuses = {st["status"] for st in record.get("steps", {}).values()}
        if not statuses or statuses & {"pending", "preparing", "probing", "waiting"}:
            continue
        running = client.api.containers(filters={
            "label": [f"sbx.run={record['run_id']}", "sbx.role=step"], "status": "running"})
        if len(running) == sum(st["status"] == "running" for st in record["steps"].values()):
            for c in running:
                client.api.put_archive(c["Id"], "/tmp", pack_files({"go": b""}))
            return


def test_twelve_parallel_steps_cannot_reach_each_other(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        docker_client: docker.DockerClient) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # Each step holds until the test has seen all twelve commands start (so every step's
    # probes are done while all the others are still live): every step probes its
    # neighbours in run order, however the machine schedules them. The test releases
    # them by dropping /tmp/go in.
    steps = {f"s{i:02d}": {"image": "sbx-step:bookworm", "outputs": ["who.txt"],
                           "resources": {"timeout": 300},
                           "run": "while [ ! -e /tmp/go ]; do sleep 0.1; done; "
                                  "echo $SBX_STEP > who.txt"} for i in range(STEPS)}
    (ws / "pipeline.yaml").write_text(yaml.safe_dump({"name": "load", "steps": steps}))
    out = tmp_path / "run"
    released = threading.Thread(target=_release_when_all_run, args=(docker_client, out),
                                daemon=True)
    released.start()
    began = time.monotonic()
    code = main(["run", str(ws / "pipeline.yaml"), "--out", str(out), "--quiet",
                 "--egress-network", internet.network])
    took = time.monotonic() - began
    released.join(timeout=30)
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
    # Each step probed the nearest step on each side in run order that was up when it
    # probed (sbx.pipelines.run.peers): every neighbouring pair in at least one
    # direction, at most 2(n-1) pairs instead of n(n-1), each on every probe kind.
    names = sorted(s)
    probes = [p for st in s.values() for p in st["peer_probes"]]
    assert all(p["blocked"] for p in probes), [p for p in probes if not p["blocked"]]
    # ...on the address: each step's own gateway refused every peer as internal.
    assert all("refused the address as internal" in p["detail"]
               for p in probes if p["kind"] == "tcp"), probes[:4]
    probed: set[tuple[str, str]] = set()
    kinds: dict[tuple[str, str], int] = {}
    for i, name in enumerate(names):
        sides: list[int] = []
        for j, (other, ost) in enumerate(sorted(s.items())):
            subnet = ipaddress.ip_network(ost["docker"]["subnet"])
            hits = [p for p in s[name]["peer_probes"]
                    if ipaddress.ip_address(p["target"].split(":")[0]) in subnet]
            if hits:
                # Never its own sandbox; both the peer's gateway and its agent.
                assert other != name and len({p["target"].split(":")[0] for p in hits}) == 2
                probed.add((name, other))
                kinds[(name, other)] = len(hits)
                sides.append(j > i)
        # One peer at most on each side: the nearest that was up.
        assert sorted(sides) in ([], [False], [True], [False, True]), (name, sides)
    assert len(set(kinds.values())) == 1, kinds  # every pair got every probe kind
    for a, b in itertools.pairwise(names):
        assert (a, b) in probed or (b, a) in probed, (a, b, sorted(probed))
    assert len(probes) == len(probed) * kinds[next(iter(probed))] <= 2 * (STEPS - 1) * 8
    failed = failed_checks(out, signing_key)
    assert failed == {}
    assert run_objects(docker_client, record["run_id"]) == []
    print(f"\n12 parallel steps: {took:.1f} s, {len(probes)} peer probes blocked")
