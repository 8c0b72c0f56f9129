"""The recorder against a step that tries to overwhelm or silence it.

- A flood is counted, not hidden: the firewall's log is rate-limited and the itemized
  events are capped, but its packet counter is read at the end, so run.json and the
  isolation Statement say how many attempts there were against how many are itemized.
- A wedged gateway (stopped with SIGSTOP, as a stuck lock or exhausted tasks would
  leave it) stops beating: the step is stopped and fails closed with a one-line reason.
- A follower thread that dies for any reason is a fault, never a silent gap.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import pytest
import yaml

from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run.runner import RunOptions, RunResult, run_file
from sbx.sandbox import recorder
from sbx.sandbox.sandbox import Sandbox
from tests.conftest import Internet
from tests.redteam.faults_support import sbx_containers

FLOOD = """
import json, socket, sys
other, n = sys.argv[1], int(sys.argv[2])
sent = 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    try:
        s.sendto(b"x", (other, 9000 + i % 100))
    except OSError:
        pass  # EPERM: the firewall dropped it (and counted it)
    sent += 1
json.dump({"sent": sent}, open("out/flood.json", "w"))
"""


IDLE = r"""
import json, os, socket, struct, sys, time, urllib.parse
gateway = urllib.parse.urlparse(os.environ["SBX_PROXY"]).hostname
held = []
for target in [(gateway, 53)] * 300 + [("127.0.0.11", 53)] * 50:
    try:
        held.append(socket.create_connection(target, timeout=3))
    except OSError:
        pass
name = sys.argv[1].encode()
query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(x)]) + x for x in name.split(b".")) + b"\0" + struct.pack("!HH", 1, 1)
answered = False
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for _ in range(5):
    try:
        s.sendto(query, ("127.0.0.11", 53))
        answered = len(s.recv(512)) > 0
        break
    except OSError:
        time.sleep(1)
json.dump({"held": len(held), "answered": answered}, open("out/idle.json", "w"))
"""


DNS_FLOOD = r"""
import json, os, socket, struct, sys, urllib.parse
gateway = urllib.parse.urlparse(os.environ["SBX_PROXY"]).hostname
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent = 0
for i in range(n):
    name = b"q%d.flood.test" % i
    query = struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(x)]) + x for x in name.split(b".")) + b"\0" + struct.pack("!HH", 1, 1)
    while True:
        try:
            s.sendto(query, (gateway, 53))
            break
        except BlockingIOError:
            pass
    sent += 1
json.dump({"sent": sent}, open("out/dns.json", "w"))
"""


def _run(tmp_path: Path, internet: Internet, run: str, files: dict[str, str],
         mode: str = "enforce") -> RunResult:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    for name, text in files.items():
        (ws / name).write_text(text)
    spec = {"name": "flood", "image": "sbx-step:bookworm", "run": run,
            "inputs": list(files), "outputs": ["out/"],
            "egress": {"mode": mode, "allow": ["web.sbx.test:8080"]},
            "resources": {"timeout": 120}}
    (ws / "step.yaml").write_text(yaml.safe_dump(spec))
    from rich.console import Console

    return run_file(ws / "step.yaml", RunOptions(out_dir=tmp_path / "run",
                                                 egress_network=internet.network),
                    LiveView(Console(stderr=True, force_terminal=False), quiet=True))


@pytest.mark.docker
def test_a_flood_is_counted_not_hidden(tmp_path: Path, internet: Internet) -> None:
    """20,000 UDP datagrams: the NFLOG rule itemizes a few hundred a second, the counter
    has every one, and the records say 'N attempts, M itemized' with N >= 20,000."""
    n = 20_000
    result = _run(tmp_path, internet, f"mkdir -p out && python3 flood.py {internet.other.ip} {n}",
                  {"flood.py": FLOOD})
    step = result.record["steps"]["flood"]
    rec = step["recording"]
    assert json.loads((result.out_dir / "outputs/flood/out/flood.json").read_text())["sent"] == n
    assert rec["firewall_dropped"] >= n, rec
    assert rec["firewall_itemized"] < n and rec["firewall_unlogged"] >= n - rec["firewall_itemized"]
    assert rec["attempts"] >= n and rec["itemized"] < rec["attempts"]
    assert rec["heartbeats"]["gateway"] >= 1 and rec["heartbeats"]["agent"] >= 1
    assert step["status"] == "failed" and step["faults"] == []
    iso = next(result.out_dir.glob("attestations/flood.isolation.*"))
    import base64

    signed = json.loads(base64.b64decode(json.loads(iso.read_text())["payload"]))
    recording = signed["predicate"]["sandbox"]["recording"]
    assert recording["attempts"] == rec["attempts"] and recording["firewallDropped"] >= n


@pytest.mark.docker
def test_a_dns_flood_at_the_gateway_is_capped_in_the_log_and_counted(
        tmp_path: Path, internet: Internet) -> None:
    """Straight to the gateway, not rate-limited: events.jsonl stops itemizing at its
    limit and says so, while every query is counted as an event, a socket drop or a
    refusal, so attempts covers all that were sent."""
    n = 30_000
    result = _run(tmp_path, internet, f"mkdir -p out && python3 dns.py {n}",
                  {"dns.py": DNS_FLOOD})
    step = result.record["steps"]["flood"]
    rec = step["recording"]
    sent = json.loads((result.out_dir / "outputs/flood/out/dns.json").read_text())["sent"]
    assert sent == n
    assert rec["attempts"] >= n, rec
    assert rec["itemized"] <= 20_000 and step["faults"] == []
    lines = (result.out_dir / "events.jsonl").read_text().splitlines()
    assert len(lines) < 20_000 + 200
    if rec["decisions_not_itemized"]:
        assert any('"itemizing-stopped"' in line for line in lines)


@pytest.mark.docker
def test_idle_dns_connections_are_refused_counted_and_stop_nothing(
        tmp_path: Path, internet: Internet) -> None:
    """~250 idle TCP connections to the gateway's DNS port used to exhaust its 256
    tasks: the gateway then refused without an event. Now slots bound the threads,
    the extra connections are refused and counted, and a query after them is
    answered and recorded."""
    after = "after-idle.denied.test"
    result = _run(tmp_path, internet, f"mkdir -p out && python3 idle.py {after}",
                  {"idle.py": IDLE})
    step = result.record["steps"]["flood"]
    report = json.loads((result.out_dir / "outputs/flood/out/idle.json").read_text())
    assert report["held"] >= 300 and report["answered"] is True, report
    events = [json.loads(x) for x in (result.out_dir / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("kind") == "dns" and e.get("name") == after]
    assert [e for e in events if e.get("phase") == "refused" and e.get("what") == "dns_tcp"]
    assert step["recording"]["refused"] >= 300 - 2 * 8, step["recording"]
    assert step["faults"] == [], step["faults"]
    assert not [e for e in events if e.get("phase") in ("crashed", "recorder-failed")]


@pytest.mark.docker
def test_a_wedged_gateway_fails_the_step_closed(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Sandbox, "heartbeat_timeout", 3.0)
    stopped: list[str] = []

    def wedge() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            steps = sbx_containers(docker_client, "step", "flood")
            gateways = sbx_containers(docker_client, "gateway", "flood")
            if steps and gateways:
                docker_client.api.kill(gateways[0]["Id"], signal="SIGSTOP")
                stopped.append(gateways[0]["Id"])
                return
            time.sleep(0.1)

    thread = threading.Thread(target=wedge, daemon=True)
    thread.start()
    began = time.monotonic()
    result = _run(tmp_path, internet, "sleep 100", {})
    thread.join(timeout=5)
    assert stopped, "the gateway was never wedged"
    step = result.record["steps"]["flood"]
    assert step["status"] == "failed"
    assert any("gateway sent no heartbeat" in f and "fails closed" in f for f in step["faults"])
    assert "no heartbeat" in step["reason"] and "\n" not in step["reason"]
    assert time.monotonic() - began < 90  # stopped by the watchdog, not by the timeout
    events = [json.loads(x) for x in (result.out_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("phase") == "recorder-failed" for e in events)


def test_a_follower_that_dies_is_a_fault_and_stops_the_step() -> None:
    """Whatever escapes the line handling (here an event sink that raises) ends the
    follower: that must be a fault naming the role, and the step is stopped."""
    killed: list[str] = []
    events: list[dict[str, Any]] = []

    def sink(event: dict[str, Any]) -> None:
        if event.get("kind") == "dns":
            raise RuntimeError("sink failed")
        events.append(event)

    api = SimpleNamespace(kill=killed.append)
    step = SimpleNamespace(name="s")
    box = Sandbox(SimpleNamespace(api=api), "run", step, SimpleNamespace(egress_network=None),
                  sink, Path("/nonexistent"))
    box.containers["step"] = "step-id"
    lines = [b'{"kind":"gateway","phase":"ready"}\n', b'{"kind":"dns","verdict":"denied"}\n',
             b'{"kind":"tcp","verdict":"denied"}\n']
    box._follow("gateway", "gw-id", iter(lines))
    assert killed == ["step-id"] and box.recorder_failed()
    [fault] = box.faults
    assert fault.startswith("the gateway event follower stopped (RuntimeError: sink failed)")
    assert events[-1]["phase"] == "recorder-failed"


def test_firewall_counters_are_read_from_iptables_save() -> None:
    saved = """*filter
:OUTPUT DROP [0:0]
:SBX_DROPPED - [0:0]
[5:300] -A OUTPUT -o lo -j ACCEPT
[20015:560420] -A OUTPUT -j SBX_DROPPED
[400:11200] -A OUTPUT -j NFLOG --nflog-prefix out --nflog-group 7 -m limit --limit 200/sec
[20015:560420] -A SBX_DROPPED -j RETURN
COMMIT
*mangle
[3:180] -A POSTROUTING -d 127.0.0.0/8 ! -o lo -j SBX_DROPPED
COMMIT
"""
    assert recorder.firewall_dropped(saved) == 20018
