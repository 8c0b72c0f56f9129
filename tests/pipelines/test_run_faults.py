"""Faults during a run: a crashed gateway, Ctrl-C and SIGTERM, a killed sbx and `sbx gc`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.conftest import Internet, only_step

pytestmark = pytest.mark.docker


def _wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _step_running(client: docker.DockerClient, step: str) -> Any:
    found = client.api.containers(filters={"label": [f"sbx.step={step}", "sbx.role=step"],
                                           "status": "running"})
    return found[0] if found else None


def test_crashed_gateway_leaves_no_egress_and_the_run_says_so(
        run_step: Any, internet: Internet, docker_client: docker.DockerClient) -> None:
    script = """
mkdir -p out
curl -fsS http://web.sbx.test:8080/before > out/before.json
touch /tmp/first-done
sleep 4
curl -sS --max-time 5 http://web.sbx.test:8080/after > out/after.json 2> out/after.err \
  || echo failed > out/after.status
"""
    killed: list[str] = []

    def kill_gateway() -> None:
        step = _wait_for(lambda: _step_running(docker_client, "crash"))
        run_id = step["Labels"]["sbx.run"]
        time.sleep(2)
        gw = docker_client.api.containers(
            filters={"label": [f"sbx.run={run_id}", "sbx.role=gateway"]})[0]
        docker_client.api.kill(gw["Id"])
        killed.append(gw["Id"])

    killer = threading.Thread(target=kill_gateway)
    killer.start()
    run = run_step({"name": "crash", "image": "sbx-step:bookworm", "run": script,
                    "outputs": ["out/"], "egress": {"allow": ["web.sbx.test:8080"]}})
    killer.join()
    assert killed
    assert json.loads(run.output("out/before.json").splitlines()[0])["server"] == "web"
    assert run.output("out/after.status").strip() == "failed"
    assert not any(h["path"] == "/after" for h in internet.web.hits(run.started))
    record = run.result.record
    assert run.result.exit_code == 1
    assert only_step(record)["status"] == "failed"
    assert any("gateway exited during the step" in f for f in only_step(record)["faults"])
    assert any(e.get("kind") == "gateway" and e.get("phase") == "crashed" for e in run.events)


def _spawn(tmp_path: Path, internet: Internet) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "ws").mkdir()
    spec = {"name": "sleepy", "image": "sbx-step:bookworm", "run": "echo started; sleep 60",
            "egress": {"allow": ["web.sbx.test:8080"]}}
    path = tmp_path / "ws" / "step.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbx.pipelines.cli", "run", str(path), "--out", str(out),
         "--egress-network", internet.network, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, out


def _run_objects(client: docker.DockerClient, run_id: str) -> list[str]:
    f = {"label": f"sbx.run={run_id}"}
    return ([c["Id"] for c in client.api.containers(all=True, filters=f)]
            + [n["Id"] for n in client.api.networks(filters=f)])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_removes_every_object_and_records_the_interruption(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient,
        sig: signal.Signals) -> None:
    proc, out = _spawn(tmp_path, internet)
    step = _wait_for(lambda: _step_running(docker_client, "sleepy"))
    run_id = step["Labels"]["sbx.run"]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["run_id"] == run_id
    assert record["interrupted"] is True
    assert only_step(record)["status"] == "interrupted"
    assert record["ended"]
    assert _run_objects(docker_client, run_id) == []
    assert (out / "events.jsonl").read_text().strip()  # what it saw is kept


def test_gc_removes_what_a_killed_run_left(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient) -> None:
    proc, _ = _spawn(tmp_path, internet)
    step = _wait_for(lambda: _step_running(docker_client, "sleepy"))
    run_id = step["Labels"]["sbx.run"]
    proc.kill()
    proc.wait(timeout=30)
    assert _run_objects(docker_client, run_id), "a killed sbx cannot clean up"
    done = subprocess.run([sys.executable, "-m", "sbx.pipelines.cli", "gc", "--run", run_id],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed container" in done.stdout and "removed network" in done.stdout
    assert _run_objects(docker_client, run_id) == []
