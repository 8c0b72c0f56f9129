"""What the red-team tests share: the sink canary, running a batch of attacks in one
sandboxed step, and finding each attempt's events.

Every sbx run costs seconds, so many attacks run in one step, one after another,
each timed by the step itself; a test finds an attempt's events by that window
and by what the event says (kind, destination, name). Runs are cached per
session so the test modules that share a batch do not run it twice.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import yaml

from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run.records import parse_time
from sbx.pipelines.run.runner import RunOptions, RunResult, run_file
from sbx.sandbox.archive import pack_files

HERE = Path(__file__).parent
ATTACK_SCRIPT = HERE / "steps" / "attack.py"
SINK_SCRIPT = HERE / "servers" / "sink.py"
TEST_LABEL = "sbx.test"
# Seconds an event may trail its attempt (NFLOG is read asynchronously; a loaded machine
# delays it). Wide, because an event is matched on its content and claimed by one attempt
# only (`assign`): a neighbour's event cannot stand in for a missing one.
SLACK = 3.0


CONTROL_PORT = 7  # the sink listens on no such port: only its sniffer sees the control


def _is_control(event: dict[str, Any], sport: int) -> bool:
    return (event.get("kind") == "packet" and event.get("dport") == CONTROL_PORT
            and event.get("sport") == sport)


@dataclass
class Sink:
    """A canary that logs every packet addressed to it (see servers/sink.py)."""

    ip: str
    container_id: str
    client: docker.DockerClient

    def seen(self, since: dt.datetime, until: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Packets and connections that reached the sink in [since, until].

        First a positive control: one datagram from this host that the sniffer must log.
        A sniffer that died after it said ready would make every "nothing reached the
        sink" pass; this raises instead.
        """
        control = self.control()
        raw = self.client.api.logs(self.container_id, stdout=True, stderr=False)
        out = []
        for line in raw.decode().splitlines():
            event = json.loads(line)
            if event.get("kind") == "ready" or _is_control(event, control):
                continue
            when = parse_time(event["time"])
            if when >= since and (until is None or when <= until):
                out.append(event)
        return out

    def control(self, wait: float = 30.0) -> int:
        """Send the control datagram (to a port nothing listens on, so only the sniffer
        sees it) and wait until the sink logs it; returns its source port."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", 0))
            sport: int = s.getsockname()[1]
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                s.sendto(b"sbx-sink-control", (self.ip, CONTROL_PORT))
                raw = self.client.api.logs(self.container_id, stdout=True, stderr=False)
                if any(_is_control(json.loads(line), sport) for line in raw.decode().splitlines()):
                    return sport
                time.sleep(0.2)
        raise AssertionError(f"the sink at {self.ip} did not log the control packet: its "
                             "sniffer is not running, so its silence proves nothing")

    def remove(self) -> None:
        """Remove the sink's container."""
        self.client.api.remove_container(self.container_id, force=True)


def start_sink(client: docker.DockerClient, image: str, network: str, ip: str,
               aliases: list[str], script: bytes | None = None) -> Sink:
    """Start the sink on `network` at `ip`, reachable by every name in `aliases`
    (`script`: another sink.py, for the test that shows a dead one is caught)."""
    api = client.api
    cid = api.create_container(
        image, command=["python3", "/srv/sink.py"], name=f"sbx-test-sink-{secrets.token_hex(4)}",
        labels={TEST_LABEL: "redteam"},
        networking_config=api.create_networking_config({
            network: api.create_endpoint_config(aliases=aliases, ipv4_address=ip)}),
        host_config=api.create_host_config(network_mode=network))["Id"]
    try:
        api.put_archive(cid, "/srv", pack_files({"sink.py": script or SINK_SCRIPT.read_bytes()}))
        api.start(cid)
    except docker.errors.APIError:
        api.remove_container(cid, force=True)  # a sink that cannot start is not left behind
        raise
    for _ in range(200):
        if b'"ready"' in api.logs(cid):
            break
        time.sleep(0.05)
    else:
        api.remove_container(cid, force=True)
        raise RuntimeError("the sink did not start")
    return Sink(ip, cid, client)


@dataclass
class Run:
    """A finished sbx run and what the test needs from it."""

    result: RunResult
    events: list[dict[str, Any]]
    started: dt.datetime
    ended: dt.datetime
    workspace: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.result.out_dir

    def step(self, name: str) -> dict[str, Any]:
        """The record of step `name` in run.json."""
        return dict(self.result.record["steps"][name])

    def attack_results(self, step: str, path: str = "out/results.json") -> dict[str, Any]:
        """The per-attack results the attack script wrote as an output of `step`."""
        data = json.loads((self.out / "outputs" / step / path).read_text())
        return dict(data["results"])

    def events_of(self, step: str) -> list[dict[str, Any]]:
        """Events of `step` after its command started (the probes are before)."""
        begin = self.step(step)["step_started"]
        return [e for e in self.events if e.get("step") == step and begin
                and parse_time(e["time"]) >= parse_time(begin)]


def run_spec(workspace: Path, spec: dict[str, Any], files: dict[str, bytes],
             egress_network: str | None) -> Run:
    """Write `spec` (a step or a pipeline) and `files` into `workspace`, run it, read it back."""
    workspace.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_bytes(data)
    path = workspace / "sbx.yaml"
    path.write_text(yaml.safe_dump(spec))
    from rich.console import Console

    started = dt.datetime.now(dt.UTC)
    result = run_file(path, RunOptions(out_dir=workspace.parent / f"{workspace.name}-run",
                                       egress_network=egress_network),
                      LiveView(Console(stderr=True, force_terminal=False, width=120),
                               quiet=True))
    ended = dt.datetime.now(dt.UTC)
    events = [json.loads(line) for line in
              (result.out_dir / "events.jsonl").read_text().splitlines()]
    return Run(result, events, started, ended, workspace)


_CACHE: dict[tuple[str, str], Any] = {}


def cached(key: str, scope: str, make: Callable[[], Any]) -> Any:
    """`make()` once per (key, scope) in this session: test modules share a batch run."""
    if (key, scope) not in _CACHE:
        _CACHE[(key, scope)] = make()
    return _CACHE[(key, scope)]


def attack_step(name: str, attacks: Iterable[dict[str, Any]], allow: list[str],
                image: str = "sbx-step:bookworm", gap: float = 0.08, proxy_env: bool = False,
                **extra: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A step file that runs `attacks` with attack.py, and the files it needs."""
    spec: dict[str, Any] = {
        "name": name, "image": image,
        "run": "python3 attack.py cfg.json out/results.json",
        "inputs": ["attack.py", "cfg.json"], "outputs": ["out/"],
        "egress": {"mode": "enforce", "allow": allow, "proxy_env": proxy_env},
        "resources": {"timeout": 300, "memory": "256m"},
    }
    spec.update(extra)
    cfg = {"attacks": list(attacks), "gap": gap}
    return spec, {"attack.py": ATTACK_SCRIPT.read_bytes(), "cfg.json": json.dumps(cfg).encode()}


# --------------------------------------------------------------------------- matching events


def _ts(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


def in_window(events: list[dict[str, Any]], result: dict[str, Any],
              slack: float = SLACK) -> list[dict[str, Any]]:
    """Events between an attempt's start and its end plus `slack`."""
    lo, hi = _ts(result["t0"] - 0.01), _ts(result["t1"] + slack)
    return [e for e in events if lo <= parse_time(e["time"]) <= hi]


def matches(event: dict[str, Any], want: dict[str, Any]) -> bool:
    """`want` maps field -> value; 'field~' means substring; a list value means any of."""
    for key, value in want.items():
        if key.endswith("~"):
            if str(value) not in str(event.get(key[:-1], "")):
                return False
        elif isinstance(value, list | tuple):
            if event.get(key) not in value:
                return False
        elif event.get(key) != value:
            return False
    return True


def assign(events: list[dict[str, Any]], attempts: list[tuple[str, dict[str, Any],
                                                               list[dict[str, Any]]]],
           ) -> dict[str, list[dict[str, Any]]]:
    """Each attempt's own events: (name, result, wants) in the order they ran; an event
    goes to the first attempt that it matches and that has none yet."""
    taken: set[int] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, result, wants in sorted(attempts, key=lambda a: a[1]["t0"]):
        mine = [e for e in recorded(events, result, wants) if id(e) not in taken]
        out[name] = mine[:1]
        taken.update(id(e) for e in mine[:1])
    return out


def recorded(events: list[dict[str, Any]], result: dict[str, Any],
             wants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempt's events (in its window) that match any of `wants`.

    A TCP attempt through the relay or the proxy is matched on its own connection: the
    gateway records the source port the attack reported, so a neighbour's event with the
    same destination cannot stand in for it.
    """
    if result.get("src_port") is not None:
        wants = [dict(w, src_port=result["src_port"]) if w.get("via") in ("relay", "proxy")
                 else w for w in wants]
    return [e for e in in_window(events, result) if any(matches(e, w) for w in wants)]
