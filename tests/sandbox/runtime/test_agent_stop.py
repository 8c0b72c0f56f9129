"""The real agent, stopped the instant after the last drops: each is still recorded.

sbx stops the agent without waiting for it to go quiet: on SIGTERM the agent writes
every NFLOG record queued in its socket, then its final heartbeat. Here a process in the
agent's network namespace sends a burst of datagrams the firewall drops and sends the
agent SIGTERM straight after, so most records are still unread or unwritten when the
signal lands.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import docker
import pytest

from sbx.sandbox.runtime.agent import Agent
from sbx.sandbox.runtime.counters import COUNTERS
from sbx.sandbox.runtime.nflog import DroppedPacket
from tests.conftest import TEST_LABEL

BURST = 300  # under the NFLOG rule's burst of 400: each one is logged, none rate-limited
CFG = {"step": "stop", "gateway_ip": "10.255.0.2", "own_ip": "10.255.0.3",
       "bridge_ip": "10.255.0.1", "proxy_port": 3128, "relay_port": 15001,
       "dns_udp_port": 15053, "dns_tcp_port": 15054, "nflog_group": 7, "relay_token": "t"}
# 127.0.0.0/8 but the agent's own address is dropped and logged (Docker's embedded DNS
# lives there); loopback needs no route in a container without a network.
LAST_ACT = f"""
import os, signal, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(20000, 20000 + {BURST}):
    try:
        s.sendto(b"x", ("127.0.0.5", port))
    except OSError:
        pass  # EPERM: dropped (and logged)
os.kill(1, signal.SIGTERM)
"""


def _events(container: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            container.logs(stdout=True, stderr=False).decode().splitlines() if line]


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_drops_just_before_sigterm_are_all_written_before_the_final_heartbeat(
        docker_client: docker.DockerClient, sbx_images: tuple[str, str]) -> None:
    runtime, _ = sbx_images
    agent = docker_client.containers.run(
        runtime, ["python3", "-m", "sbx.sandbox.runtime.agent"], detach=True,
        user="0:0", network_mode="none", environment={"SBX_CONFIG": json.dumps(CFG)},
        cap_drop=["ALL"], cap_add=["NET_ADMIN", "SETPCAP", "SETUID", "SETGID"],
        sysctls={"net.ipv6.conf.all.disable_ipv6": "0"}, labels={TEST_LABEL: "1"})
    try:
        deadline = time.monotonic() + 60
        while not any(e.get("phase") == "ready" for e in _events(agent)):
            agent.reload()
            assert agent.status == "running" and time.monotonic() < deadline, _events(agent)
            time.sleep(0.1)
        # In the agent's namespace, like the step (which shares it), and as the agent's
        # own uid: the one process that can signal it the instant after its last packet.
        done = agent.exec_run(["python3", "-c", LAST_ACT], user="65534:65534")
        assert done.exit_code in (0, 137, None), done.output  # 137: exited with the agent
        assert agent.wait(timeout=30)["StatusCode"] == 0
        events = _events(agent)
    finally:
        agent.remove(force=True)
    dropped = [i for i, e in enumerate(events) if e.get("kind") == "udp"
               and e.get("dst_ip") == "127.0.0.5" and e.get("verdict") == "denied"]
    ports = sorted(events[i]["dst_port"] for i in dropped)
    assert ports == list(range(20000, 20000 + BURST)), f"{len(ports)} of {BURST} recorded"
    assert events[-1]["kind"] == "heartbeat" and events[-1].get("final") is True
    assert dropped[-1] < len(events) - 1


class _Queue:
    """An NFLOG reader whose socket holds `batches` (an exception: a failed read)."""

    def __init__(self, batches: list[list[DroppedPacket] | Exception]) -> None:
        self.batches = batches

    def read_queued(self) -> list[DroppedPacket] | None:
        if not self.batches:
            return None
        batch = self.batches.pop(0)
        if isinstance(batch, Exception):
            raise batch
        return batch


def _drop(port: int) -> DroppedPacket:
    return DroppedPacket("out", socket.AF_INET, "udp", "10.0.0.2", "192.0.2.1", port, 29)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_drain_writes_every_queued_batch_past_an_overrun(
        capsys: pytest.CaptureFixture[str]) -> None:
    agent = Agent(CFG)
    overruns = COUNTERS.snapshot().get("nflog_overruns", 0)
    queue = _Queue([[_drop(1), _drop(2)], OSError(105, "No buffer space available"),
                    [_drop(3)]])
    agent.drain_nflog(queue)  # type: ignore[arg-type]
    lines = _lines(capsys)
    assert [e["dst_port"] for e in lines if e["kind"] == "udp"] == [1, 2, 3]
    assert COUNTERS.snapshot()["nflog_overruns"] == overruns + 1
    assert queue.batches == []
    # The lock stays held: serve_nflog reads nothing after the drain, up to the exit.
    assert not agent.nflog_lock.acquire(blocking=False)


def test_serve_reads_one_batch_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    agent = Agent(CFG)
    queue = _Queue([[_drop(1)], [_drop(2)]])
    agent._log_queued(queue)  # type: ignore[arg-type]
    assert [e["dst_port"] for e in _lines(capsys)] == [1]
    assert len(queue.batches) == 1
