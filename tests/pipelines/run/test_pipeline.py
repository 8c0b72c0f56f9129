"""Pipelines on the real engine: parallel steps, hand-off by digest, steps that cannot
reach each other, failures that stop dependants, and evidence that verifies."""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from sbx.attest.signing.local import KeyPair, load_public_key
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run
from sbx.errors import EXIT_FAILED, EXIT_OK
from sbx.pipelines.cli import main
from sbx.pipelines.run.records import parse_time
from sbx.sandbox.archive import pack_files
from tests.conftest import Internet

pytestmark = pytest.mark.docker
IMAGE = "sbx-step:bookworm"


def _run(tmp_path: Path, internet: Internet, steps: dict[str, Any],
         files: dict[str, str] | None = None) -> tuple[int, dict[str, Any], Path]:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    for name, text in (files or {}).items():
        (ws / name).write_text(text)
    (ws / "pipeline.yaml").write_text(yaml.safe_dump({"name": "p", "steps": steps}))
    out = tmp_path / "run"
    code = main(["run", str(ws / "pipeline.yaml"), "--out", str(out), "--quiet",
                 "--egress-network", internet.network])
    return code, json.loads((out / "run.json").read_text()), out


def _verify(out: Path, key: KeyPair) -> dict[str, str]:
    report = verify_run(out, KeyTrust([load_public_key(key.public)]), DEFAULT_POLICY)
    return {r.check.value: r.reason for r in report.failed()}


def test_three_steps_with_a_parallel_pair_hand_off_by_digest_and_verify(
        tmp_path: Path, internet: Internet, signing_key: KeyPair,
        docker_client: docker.DockerClient) -> None:
    steps = {
        "build": {"image": IMAGE, "inputs": ["app.py"], "outputs": ["dist/"],
                  "run": "mkdir -p dist && cp app.py dist/app.py && echo 1.0 > dist/VERSION"},
        "test": {"image": IMAGE, "inputs": [{"from": "build", "path": "dist/"}],
                 "run": "sleep 3 && python3 dist/app.py > report.txt", "outputs": ["report.txt"]},
        "lint": {"image": IMAGE, "inputs": [{"from": "build", "path": "dist/app.py"}],
                 "run": "ls dist > seen.txt && sleep 3 && python3 -m py_compile dist/app.py",
                 "outputs": ["seen.txt"]},
    }
    code, record, out = _run(tmp_path, internet, steps, {"app.py": "print('ok')\n"})
    assert code == EXIT_OK, record["reason"]
    s = record["steps"]
    assert [s[n]["status"] for n in ("build", "test", "lint")] == ["succeeded"] * 3
    assert record["order"][0] == "build" and set(record["order"]) == {"build", "test", "lint"}

    # test and lint ran side by side.
    t0, t1 = (parse_time(s["test"][k]) for k in ("step_started", "ended"))
    l0, l1 = (parse_time(s["lint"][k]) for k in ("step_started", "ended"))
    assert t0 < l1 and l0 < t1, "the parallel pair did not overlap"

    # Hand-off by digest: exactly the producer's bytes, from the content-addressed store.
    produced = {o["path"]: o["sha256"] for o in s["build"]["outputs"]}
    taken = {i["path"]: i["sha256"] for i in s["test"]["inputs"] if i["from"] == "build"}
    assert taken == produced
    assert [i["path"] for i in s["lint"]["inputs"]] == ["dist/app.py"]  # only what it asked
    assert (out / "outputs/lint/seen.txt").read_text() == "app.py\n"
    for digest in produced.values():
        assert (out / "store/sha256" / digest).is_file()

    # Every step had its own network; its peer probes (sbx.pipelines.run.peers: the
    # nearest step on each side that was up) were blocked.
    networks = {s[n]["docker"]["network"] for n in s}
    subnets = {s[n]["docker"]["subnet"] for n in s}
    assert len(networks) == 3 and len(subnets) == 3
    for name in s:
        peers = s[name]["peer_probes"]
        assert all(p["blocked"] for p in peers), (name, peers)
        # Judged on the address: the step's own gateway refused each peer as internal.
        for p in peers:
            if p["kind"] == "tcp":
                assert "refused the address as internal" in p["detail"], p
        targets = {p["target"].split(":")[0] for p in peers}
        # Neighbours only: at most one step on each side in run order (the nearest that
        # was up: not always the adjacent one, which may not be prepared yet).
        order = record["order"]
        i = order.index(name)
        hit = [n for n in order if n != name and _sandbox_ips(s[n]) & targets]
        assert len([n for n in hit if order.index(n) < i]) <= 1, (name, hit)
        assert len([n for n in hit if order.index(n) > i]) <= 1, (name, hit)
        addresses = {ip for n in hit for ip in _sandbox_ips(s[n])}
        assert targets <= addresses, (name, targets)
    # The neighbouring pairs, each probed in at least one direction.
    for a, b in itertools.pairwise(record["order"]):
        assert _probed(s[a], s[b]) or _probed(s[b], s[a]), (a, b)
    assert not docker_client.api.containers(all=True, filters={
        "label": f"sbx.run={record['run_id']}"})

    assert _verify(out, signing_key) == {}


def _sandbox_ips(step: dict[str, Any]) -> set[str]:
    """The gateway and agent addresses of a step's network (.2 and .3 of its subnet)."""
    hosts = list(ipaddress.ip_network(step["docker"]["subnet"]).hosts())
    return {str(hosts[1]), str(hosts[2])}


def _probed(by: dict[str, Any], at: dict[str, Any]) -> bool:
    """Whether `by` probed both the gateway and the agent of `at`."""
    return {p["target"].split(":")[0] for p in by["peer_probes"]} >= _sandbox_ips(at)


def _drop_file(client: docker.DockerClient, step: str, name: str) -> None:
    """Put /tmp/<name> into `step`'s running container once it runs: a signal to a step
    that waits for it (steps have no other way to hear from the test)."""
    container = _wait_for(lambda: client.api.containers(filters={
        "label": [f"sbx.step={step}", "sbx.role=step"], "status": "running"}))[0]
    client.api.put_archive(container["Id"], "/tmp", pack_files({name: b""}))


def _wait_for(probe: Any, limit: float = 120.0) -> Any:
    """Poll `probe()` until it returns something truthy (a hang guard, not a timing)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("gave up waiting")


WAIT_FOR = "while [ ! -e /tmp/{0} ]; do sleep 0.1; done"


def test_a_step_cannot_reach_its_sibling_by_address_or_name(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient) -> None:
    # No Host header and no name: the relay asks the gateway for the sibling's address.
    attack = r"""
import json, socket
addrs = open("sibling.txt").read().split()
results = {}
for ip in addrs:
    for port in (80, 3128, 15001, 15353):
        try:
            with socket.create_connection((ip, port), timeout=15) as s:
                s.settimeout(15)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = s.recv(64)
            results[f"{ip}:{port}"] = "reached" if data else "silent"
        except OSError as exc:
            results[f"{ip}:{port}"] = f"blocked: {exc}"
for name in ("victim", "sbx-victim", "victim.sbx.test"):
    try:
        results[name] = "resolved " + socket.gethostbyname(name)
    except OSError as exc:
        results[name] = f"blocked: {exc}"
import os
os.makedirs("out", exist_ok=True)
json.dump(results, open("out/result.json", "w"))
"""
    # The victim serves until the attacker is done; the gate holds the attacker back until
    # the test has learned the victim's addresses. Both wait on files the test drops in.
    steps = {
        "victim": {"image": IMAGE, "resources": {"timeout": 300},
                   "run": "python3 -m http.server 80 & " + WAIT_FOR.format("attacker-done")},
        "gate": {"image": IMAGE, "run": WAIT_FOR.format("go"), "resources": {"timeout": 300}},
        "attacker": {"image": IMAGE, "needs": ["gate"], "inputs": ["sibling.txt", "attack.py"],
                     "run": "python3 attack.py", "outputs": ["out/"]},
        "consumer": {"image": IMAGE, "inputs": [{"from": "attacker", "path": "out/"}],
                     "run": "true"},
    }
    ws = tmp_path / "ws"
    found: list[str] = []
    errors: list[BaseException] = []

    def victim_addresses() -> list[str]:
        ips = [net["IPAddress"]
               for c in docker_client.api.containers(filters={"label": ["sbx.step=victim"]})
               if c["Labels"].get("sbx.role") in ("agent", "gateway")
               for net in c["NetworkSettings"]["Networks"].values()
               if net.get("IPAddress", "").startswith("10.222.")]
        return ips if len(ips) == 2 else []

    def spy() -> None:
        # The test, not the attacker, learns where the victim lives: sbx gives a step
        # no way to know, and a real attacker could guess.
        try:
            found.extend(_wait_for(victim_addresses))
            (ws / "sibling.txt").write_text("\n".join(found) + "\n")
            _drop_file(docker_client, "gate", "go")
            _wait_for(lambda: docker_client.api.containers(all=True, filters={
                "label": ["sbx.step=attacker", "sbx.role=step"], "status": "exited"}))
            _drop_file(docker_client, "victim", "attacker-done")
        except BaseException as exc:
            errors.append(exc)

    ws.mkdir()
    (ws / "sibling.txt").write_text("\n")
    (ws / "attack.py").write_text(attack)
    spy_thread = threading.Thread(target=spy, daemon=True)
    spy_thread.start()
    code, record, out = _run(tmp_path, internet, steps)
    spy_thread.join(timeout=30)
    assert not errors, errors
    assert len(found) == 2, "the test could not learn the victim's addresses"
    s = record["steps"]
    assert s["victim"]["status"] == "succeeded" and s["attacker"]["exit_code"] == 0
    results = json.loads((out / "outputs/attacker/out/result.json").read_text())
    assert all(v.startswith("blocked") for v in results.values()), results
    assert {k.split(":")[0] for k in results if ":" in k} == set(found)

    # Each attempt is on record as a denied event of the attacker: its gateway refused
    # the sibling's address itself (not merely for want of a rule).
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    begin = parse_time(s["attacker"]["step_started"])
    denied = [e for e in events if e.get("step") == "attacker" and e.get("verdict") == "denied"
              and parse_time(e["time"]) >= begin]
    refused = {(e.get("dst_ip"), e.get("dst_port")) for e in denied
               if e["kind"] == "tcp" and e.get("internal") is True}
    assert refused >= {(ip, port) for ip in found for port in (80, 3128, 15001, 15353)}
    assert {"victim", "sbx-victim"} <= {e.get("name") for e in denied if e["kind"] == "dns"}
    # In enforce mode the attempts fail the attacker's step and the run.
    assert s["attacker"]["status"] == "failed" and code == EXIT_FAILED
    assert s["attacker"]["flows"]["denied"] >= len(found)
    # ...so what it produced never reaches a step that takes from it.
    assert s["consumer"]["status"] == "skipped" and s["consumer"]["inputs"] == []


def test_a_failed_step_stops_its_dependants_and_the_run_says_which(
        tmp_path: Path, internet: Internet, signing_key: KeyPair) -> None:
    steps = {
        "compile": {"image": IMAGE, "run": "echo broken >&2; exit 2", "outputs": ["dist/"]},
        "test": {"image": IMAGE, "inputs": [{"from": "compile", "path": "dist/"}],
                 "run": "touch ran"},
        "publish": {"image": IMAGE, "needs": ["test"], "run": "touch ran"},
        "docs": {"image": IMAGE, "run": "mkdir -p site && echo docs > site/index.html",
                 "outputs": ["site/"]},
    }
    code, record, out = _run(tmp_path, internet, steps)
    s = record["steps"]
    assert code == EXIT_FAILED
    assert s["compile"]["status"] == "failed" and s["compile"]["exit_code"] == 2
    assert s["test"]["status"] == "skipped" and "compile did not succeed" in s["test"]["reason"]
    assert s["publish"]["status"] == "skipped" and "test did not succeed" in s["publish"]["reason"]
    assert s["docs"]["status"] == "succeeded"
    assert s["test"]["step_started"] is None and s["test"]["exit_code"] is None
    assert "compile failed" in record["reason"] and "test skipped" in record["reason"]
    # The failure is in the signed evidence, and the evidence is intact.
    failed = _verify(out, signing_key)
    assert set(failed) == {"steps-succeeded"}
    assert "compile failed (exit 2)" in failed["steps-succeeded"]


def test_a_dependant_made_ahead_of_its_producers_verdict_never_starts_when_it_fails(
        tmp_path: Path, internet: Internet) -> None:
    """A step that takes files is created, with them, once its producer has stored them,
    while the producer still stops (issue 18): the producer's verdict can still fail it
    (here a denied attempt in enforce mode, known only after it stopped), and then the
    dependant made ahead is skipped, never started, and removed with the rest."""
    steps = {
        "produce": {"image": IMAGE, "outputs": ["dist/"],
                    "run": "sleep 2; mkdir -p dist && echo app > dist/app.txt; "
                           "curl -sS --max-time 3 http://other.sbx.test:8080/x || true"},
        "consume": {"image": IMAGE, "inputs": [{"from": "produce", "path": "dist/"}],
                    "run": "cat dist/app.txt"},
    }
    code, record, out = _run(tmp_path, internet, steps)
    s = record["steps"]
    assert code == EXIT_FAILED
    assert s["produce"]["exit_code"] == 0 and s["produce"]["status"] == "failed"
    assert "denied (enforce mode)" in s["produce"]["reason"]
    assert s["consume"]["status"] == "skipped"
    assert "produce did not succeed" in s["consume"]["reason"]
    # It was made ahead (its container is on record), and nothing of it ran.
    assert "step" in s["consume"]["docker"]["containers"]
    assert s["consume"]["step_started"] is None and s["consume"]["exit_code"] is None
    assert s["consume"]["inputs"] == [] and s["consume"]["outputs"] == []
    assert (out / "logs" / "consume.log").read_bytes() == b""
