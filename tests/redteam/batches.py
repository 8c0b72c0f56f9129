"""The batched network runs the red-team tests share, and how one attack is judged.

- `net_batch`: one step on the simulated internet running every egress, DNS,
  host and metadata attack (tests/redteam/netattacks.py) in order, with the sink
  canary beside web.sbx.test and other.sbx.test;
- `lan_batch`: one step whose egress network is private, where the allowed name
  internal.sbx.test resolves to an internal address.
Each is run once per session (harness.cached).
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from sbx.pipelines.run.runner import host_addresses
from sbx.sandbox.archive import pack_files
from tests.conftest import Internet
from tests.redteam import netattacks as na
from tests.redteam.harness import (
    Run,
    Sink,
    assign,
    attack_step,
    cached,
    run_spec,
    start_sink,
)

WEB_PATH_MARK = '"server": "web"'


@dataclass
class Batch:
    """A run of many attacks in one step, and the canaries it aimed at."""

    run: Run
    attacks: dict[str, na.Net]
    results: dict[str, Any]
    sink_seen: list[dict[str, Any]]
    other_hits: list[dict[str, Any]]
    web_hits: list[dict[str, Any]]
    step: str

    def _assigned(self, events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Every attempt's own event, each event claimed once (computed once per batch)."""
        cache: dict[str, list[dict[str, Any]]] | None = getattr(self, "_assignment", None)
        if cache is None:
            cache = assign(events, [(n, self.results[n], list(a.wants))
                                    for n, a in self.attacks.items() if n in self.results])
            self._assignment = cache
        return cache

    def judge(self, name: str) -> list[str]:
        """Everything wrong with attack `name`: [] when it was handled and recorded."""
        net = self.attacks[name]
        result = self.results.get(name)
        if result is None:
            return [f"{name}: the step has no result for it"]
        problems = []
        if result["reached"] is None:
            problems.append(f"{name}: {result['detail']}")
        body = str(result.get("body", ""))
        if net.outcome == "blocked":
            if result["reached"]:
                problems.append(f"{name} GOT THROUGH: {result['detail']}")
            if net.dns_rcode is not None and result.get("rcode") != net.dns_rcode:
                problems.append(f"{name}: rcode {result.get('rcode')}, want {net.dns_rcode}")
        elif net.outcome == "allowed" and net.dns_rcode is not None:
            if not result["reached"] or result.get("rcode") != net.dns_rcode:
                problems.append(f"{name}: the allowed name was not answered: {result['detail']}")
        else:  # allowed or redirected: the allowed host answered, and only it
            if not result["reached"] or WEB_PATH_MARK not in body:
                problems.append(f"{name}: did not reach the allowed host: {result['detail']}")
        events = self.run.events_of(self.step)
        if not self._assigned(events).get(name):
            nearby = [e for e in events if e.get("kind") not in ("probe",)]
            problems.append(f"{name}: NOT RECORDED: no event matching {net.wants} in its window "
                            f"[{result['t0']:.3f}, {result['t1']:.3f}]; window events: "
                            f"{_window(nearby, result)}")
        return problems


def _window(events: list[dict[str, Any]], result: dict[str, Any]) -> list[dict[str, Any]]:
    from tests.redteam.harness import in_window

    return in_window(events, result, slack=1.0)


def _sink_ip(subnet: str, host: int) -> str:
    return str(ipaddress.ip_network(subnet)[host])


def net_order(web: str, sink: str, egress_bridge: str, host_ip: str) -> list[na.Net]:
    """Every internet-side attack in run order: the no-SNI probe before any DNS answer,
    the after-DNS ones last, behind an explicit resolution of the allowed name."""
    egress = na.egress(web, sink)
    after = [n for n in egress if n.name in ("egress/raw-ip-after-dns-other-port",
                                              "egress/tls-no-sni-after-dns")]
    before = [n for n in egress if n not in after]
    return before + na.dns(web, sink) + na.host(egress_bridge, host_ip) + na.metadata() + after


def _host_ip() -> str:
    for ip in host_addresses(docker.from_env()):
        addr = ipaddress.ip_address(ip)
        if addr.version == 4 and not addr.is_loopback and not str(addr).startswith("172.17."):
            return ip
    return "192.0.2.2"


def net_batch(internet: Internet, client: docker.DockerClient, step_image: str,
              tmp: pytest.TempPathFactory) -> Batch:
    """The internet-side batch, run once per session."""
    return cached("net", internet.network, lambda: _net_batch(internet, client, step_image, tmp))


def _net_batch(internet: Internet, client: docker.DockerClient, step_image: str,
               tmp: pytest.TempPathFactory) -> Batch:
    sink = start_sink(client, step_image, internet.network, _sink_ip(internet.subnet, 20),
                      na.SINK_ALIASES)
    try:
        order = net_order(internet.web.ip, sink.ip, internet.bridge_ip, _host_ip())
        ops = [n.step_op() for n in order]
        index = next(i for i, n in enumerate(order)
                     if n.name == "egress/raw-ip-after-dns-other-port")
        ops.insert(index, {"name": "_setup-resolve-web", "op": "resolve", "host": na.WEB})
        spec, files = attack_step("netbatch", ops, ["web.sbx.test:8080", "web.sbx.test:8443"],
                                  proxy_env=True)
        run = run_spec(tmp.mktemp("redteam-net") / "ws", spec, files, internet.network)
        return _batch(run, order, "netbatch", sink, internet)
    finally:
        sink.remove()


def _batch(run: Run, order: list[na.Net], step: str, sink: Sink,
           internet: Internet | None) -> Batch:
    results = run.attack_results(step)
    return Batch(run=run, attacks={n.name: n for n in order}, results=results,
                 sink_seen=sink.seen(run.started, run.ended),
                 other_hits=internet.other.hits(run.started) if internet else [],
                 web_hits=internet.web.hits(run.started) if internet else [], step=step)


def lan_batch(client: docker.DockerClient, step_image: str,
              tmp: pytest.TempPathFactory) -> Batch:
    """The private-egress batch, run once per session."""
    return cached("lan", "", lambda: _lan_batch(client, step_image, tmp))


def _lan_batch(client: docker.DockerClient, step_image: str,
               tmp: pytest.TempPathFactory) -> Batch:
    api = client.api
    net_id = None
    for attempt in range(20):
        subnet = f"10.99.{secrets.randbelow(250) + 1}.0/24"
        bridge = _sink_ip(subnet, 1)
        try:
            net_id = api.create_network(
                f"sbx-test-lan-{secrets.token_hex(4)}", driver="bridge",
                labels={"sbx.test": "redteam"},
                ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                    subnet=subnet, gateway=bridge)]))["Id"]
            break
        except docker.errors.APIError:
            if attempt == 19:
                raise
    assert net_id is not None
    try:
        sink = start_sink(client, step_image, net_id, _sink_ip(subnet, 20), ["internal.sbx.test"])
        try:
            order = na.internal(sink.ip, bridge)
            spec, files = attack_step(
                "lanbatch", [n.step_op() for n in order],
                ["internal.sbx.test:8080", "internal.sbx.test:443"])
            run = run_spec(tmp.mktemp("redteam-lan") / "ws", spec, files, net_id)
            return _batch(run, order, "lanbatch", sink, None)
        finally:
            sink.remove()
    finally:
        api.remove_network(net_id)


def run_dir(batch: Batch) -> Path:
    """The batch's run directory."""
    return batch.run.out


# --------------------------------------------------------------------------- two steps at once

STEPS_DIR = Path(__file__).parent / "steps"
VICTIM_SECONDS = 240  # a hang guard: the victim stays until the test says the attacker is done
DUMMY_PEER: dict[str, Any] = {
    "gateway_ip": "10.222.0.2", "agent_ip": "10.222.0.3", "gateway_egress_ip": "198.18.0.99",
    "names": {"gateway": "sbx-x-victim-gateway", "agent": "sbx-x-victim-agent",
              "step": "sbx-x-victim-step"}}


@dataclass
class Cross:
    """The pipeline where an attacker step runs beside a victim step."""

    batch: Batch
    peer: dict[str, Any]
    victim: dict[str, Any]
    side: dict[str, Any]
    privs_user: dict[str, Any]


def cross_batch(internet: Internet, client: docker.DockerClient,
                tmp: pytest.TempPathFactory) -> Cross:
    """The cross-step pipeline, run once per session."""
    return cached("cross", internet.network, lambda: _cross_batch(internet, client, tmp))


def _learn_peer(client: docker.DockerClient, internet: Internet, ws: Path,
                found: dict[str, Any]) -> None:
    """Find the victim's addresses while the pipeline runs and write the attacker's
    attacks. The test learns them, not the attacker: sbx gives a step no way to."""
    import json
    import time

    deadline = time.monotonic() + 300  # a hang guard
    while time.monotonic() < deadline:
        peer: dict[str, Any] = {}
        for c in client.api.containers(filters={"label": ["sbx.step=victim"]}):
            role, run_id = c["Labels"].get("sbx.role"), c["Labels"].get("sbx.run")
            for net in c["NetworkSettings"]["Networks"].values():
                ip = net.get("IPAddress", "")
                if role == "gateway" and ip.startswith("10.222."):
                    peer["gateway_ip"] = ip
                elif role == "gateway" and net.get("NetworkID") == internet.network:
                    peer["gateway_egress_ip"] = ip
                elif role == "agent" and ip.startswith("10.222."):
                    peer["agent_ip"] = ip
            peer["names"] = {r: f"sbx-{run_id}-victim-{r}" for r in ("gateway", "agent", "step")}
        if {"gateway_ip", "agent_ip", "gateway_egress_ip"} <= set(peer):
            found.update(peer)
            ops = [n.step_op() for n in na.cross(peer)]
            (ws / "cross.json").write_text(json.dumps({"attacks": ops, "gap": 0.08}))
            break
        time.sleep(0.1)
    else:
        return
    # On events, not on time: the attacker starts once the victim is ready (the gate
    # step waits for /tmp/go), and the victim stays until the attacker has exited.
    victim = _running_step(client, "victim", deadline)
    while time.monotonic() < deadline and not _has(client, victim, "/workspace/victim-ready"):
        time.sleep(0.1)
    client.api.put_archive(_running_step(client, "gate", deadline), "/tmp",
                           pack_files({"go": b""}))
    while time.monotonic() < deadline and not client.api.containers(all=True, filters={
            "label": ["sbx.step=attacker", "sbx.role=step"], "status": "exited"}):
        time.sleep(0.1)
    client.api.put_archive(victim, "/workspace", pack_files({"stop-victim": b""}))


def _running_step(client: docker.DockerClient, step: str, deadline: float) -> str:
    import time

    while time.monotonic() < deadline:
        found = client.api.containers(filters={"label": [f"sbx.step={step}", "sbx.role=step"],
                                               "status": "running"})
        if found:
            return str(found[0]["Id"])
        time.sleep(0.1)
    raise AssertionError(f"the {step} step never ran")


def _has(client: docker.DockerClient, cid: str, path: str) -> bool:
    try:
        client.api.get_archive(cid, path)[0].close()
    except docker.errors.NotFound:
        return False
    return True


def _cross_batch(internet: Internet, client: docker.DockerClient,
                 tmp: pytest.TempPathFactory) -> Cross:
    import json
    import threading

    ws = tmp.mktemp("redteam-cross") / "ws"
    ws.mkdir()
    (ws / "cross.json").write_text(json.dumps({"attacks": [], "gap": 0.08}))
    image = "sbx-step:bookworm"
    files = {name: (STEPS_DIR / name).read_bytes()
             for name in ("attack.py", "sidechannel.py", "victim.py", "privs.py")}
    steps = {
        "victim": {"image": image, "inputs": ["victim.py"], "outputs": ["out/"],
                   "read_only_rootfs": True, "tmpfs": ["/tmp"], "resources": {"timeout": 300},
                   "run": f"python3 victim.py {VICTIM_SECONDS} out/victim.json"},
        "lowpriv": {"image": image, "inputs": ["privs.py"], "outputs": ["out/"],
                    "user": "1000:1000", "run": "python3 privs.py out/privs.json"},
        "gate": {"image": image, "run": "until [ -e /tmp/go ]; do sleep 0.1; done",
                 "resources": {"timeout": 300}},
        "attacker": {"image": image, "needs": ["gate"], "user": "0:0",
                     "inputs": ["attack.py", "sidechannel.py", "cross.json"],
                     "outputs": ["out/"],
                     "run": "python3 sidechannel.py out/side.json && "
                            "python3 attack.py cross.json out/results.json"},
    }
    found: dict[str, Any] = {}
    spy = threading.Thread(target=_learn_peer, args=(client, internet, ws, found), daemon=True)
    spy.start()
    run = run_spec(ws, {"name": "cross", "steps": steps}, files, internet.network)
    spy.join(timeout=5)
    out = run.out / "outputs"
    peer = found or DUMMY_PEER
    order = na.cross(peer)
    batch = Batch(run=run, attacks={n.name: n for n in order},
                  results=run.attack_results("attacker"), sink_seen=[], other_hits=[],
                  web_hits=[], step="attacker")
    return Cross(batch=batch, peer=found,
                 victim=json.loads((out / "victim/out/victim.json").read_text()),
                 side=json.loads((out / "attacker/out/side.json").read_text())["results"],
                 privs_user=json.loads((out / "lowpriv/out/privs.json").read_text()))
