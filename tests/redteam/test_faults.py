"""Faults injected into real runs: the engine, the runtime containers, signals, the disk
and floods. After each: no Docker object of the run is left (or `sbx gc` removes them
once the engine is back), run.json says what happened, and what was signed verifies."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from sbx.attest.signing.interface import Payload, Signed, Signer, SignerKind
from sbx.attest.signing.local import KeyPair
from sbx.errors import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK
from sbx.pipelines.cli import main
from sbx.pipelines.run import evidence as ev
from sbx.sandbox.archive import pack_files
from sbx.sandbox.sandbox import LOG_LIMIT
from tests.conftest import Internet, only_step
from tests.redteam.faults_support import (
    EngineRelay,
    assert_evidence_intact,
    failed_checks,
    read_record,
    run_objects,
    sbx_containers,
    spawn_sbx,
    step_status,
    tmpfs,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.docker
IMAGE = "sbx-step:bookworm"

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Phases a run passes through, in order.
PHASES = ("preparing", "probing", "running", "copying outputs", "signing")

# Every fault the red-team suite injects, and the test that injects it.
FAULTS: tuple[str, ...] = (
    "gateway killed mid-step",
    "agent killed mid-step",
    "sbx killed (SIGKILL), then sbx gc",
    "engine unreachable at start",
    "engine unreachable while preparing",
    "engine unreachable while running",
    *(f"{s.name} while {p}" for s in SIGNALS for p in PHASES),
    "run directory fills up while copying outputs",
    "run directory full from the start",
    "step floods its output (long lines, many lines, 160 MB)",
    "step floods denied flows (events and alerts)",
)
# The test that injects each fault, and the parameters of its case: checked against the
# test's own parametrization, so a fault is counted only while a case injects it.
Case = tuple[str, dict[str, Any]]
_KILL = "test_killed_runtime_container_leaves_no_egress_and_the_run_says_so"
COVERED_BY: dict[str, Case] = {
    "gateway killed mid-step": (_KILL, {"role": "gateway"}),
    "agent killed mid-step": (_KILL, {"role": "agent"}),
    "sbx killed (SIGKILL), then sbx gc": ("test_gc_removes_what_a_killed_run_left", {}),
    "engine unreachable at start": ("test_engine_unreachable_at_start", {}),
    "engine unreachable while preparing": ("test_engine_lost_mid_run", {"phase": "preparing"}),
    "engine unreachable while running": ("test_engine_lost_mid_run", {"phase": "running"}),
    **{f"{s.name} while running": (
        "test_interrupt_while_running_removes_every_object_and_records_it", {"sig": s})
       for s in SIGNALS},
    **{f"{s.name} while {p}": ("test_signal_in_phase", {"sig": s, "phase": p})
       for s in SIGNALS for p in ("preparing", "probing", "copying outputs")},
    **{f"{s.name} while signing": ("test_signal_while_signing", {"sig": s}) for s in SIGNALS},
    "run directory fills up while copying outputs": ("test_run_directory_fills_up", {}),
    "run directory full from the start": ("test_run_directory_full_from_the_start", {}),
    "step floods its output (long lines, many lines, 160 MB)": ("test_output_flood_is_capped",
                                                                {}),
    "step floods denied flows (events and alerts)": ("test_denied_flood_completes", {}),
}


def fault_count() -> int:
    """Faults injected by the suite (the README's security section quotes it)."""
    return len(FAULTS)


def _parametrized(fn: Any, argname: str) -> list[Any]:
    """The values `fn` is parametrized with for `argname` (pytest's own marks)."""
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize" and mark.args[0] == argname:
            return list(mark.args[1])
    return []


@pytest.mark.parametrize("fault", FAULTS)
def test_every_fault_is_injected_by_a_case_of_a_test(fault: str) -> None:
    name, params = COVERED_BY[fault]
    fn = globals().get(name)
    assert name.startswith("test_") and callable(fn), name
    for argname, value in params.items():
        assert value in _parametrized(fn, argname), f"{name} has no {argname}={value!r} case"
    # Every parametrized argument is pinned: the fault names one case, not "some case".
    assert {m.args[0] for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"} \
        == set(params), name


def _has_file(client: docker.DockerClient, cid: str, path: str) -> bool:
    try:
        client.api.get_archive(cid, path)[0].close()
    except docker.errors.NotFound:
        return False
    return True


# -- the runtime containers --------------------------------------------------------------
@pytest.mark.parametrize("role", ["gateway", "agent"])
def test_killed_runtime_container_leaves_no_egress_and_the_run_says_so(
        run_step: Any, internet: Internet, docker_client: docker.DockerClient,
        signing_key: KeyPair, role: str) -> None:
    script = """
mkdir -p out
curl -fsS http://web.sbx.test:8080/before > out/before.json
touch /tmp/first-done
while [ ! -e /tmp/killed ]; do sleep 0.1; done
curl -sS --max-time 5 http://web.sbx.test:8080/after > out/after.json 2> out/after.err \
  || echo failed > out/after.status
"""
    name = f"{role}kill"
    killed: list[float] = []

    def kill() -> None:
        # On the step's own markers, not on time: after its first request, and the step
        # makes its second only once the test says the kill is done.
        step = wait_for(lambda: sbx_containers(docker_client, "step", name))[0]
        wait_for(lambda: _has_file(docker_client, step["Id"], "/tmp/first-done"),
                 what="the first request")
        victim = sbx_containers(docker_client, role, name)[0]
        assert victim["Labels"]["sbx.run"] == step["Labels"]["sbx.run"]
        docker_client.api.kill(victim["Id"])
        wait_for(lambda: not sbx_containers(docker_client, role, name), what="the kill")
        killed.append(time.time())
        docker_client.api.put_archive(step["Id"], "/tmp", pack_files({"killed": b""}))

    killer = threading.Thread(target=kill)
    killer.start()
    run = run_step({"name": name, "image": IMAGE, "run": script, "outputs": ["out/"],
                    "egress": {"allow": ["web.sbx.test:8080"]}})
    killer.join()
    assert killed
    assert json.loads(run.output("out/before.json").splitlines()[0])["server"] == "web"
    assert run.output("out/after.status").strip() == "failed"
    # The canary saw the first request and nothing from the step after the kill.
    paths = [h.get("path") for h in internet.web.hits(run.started)]
    assert "/before" in paths and "/after" not in paths
    assert not any(h.get("path") == "/after" for h in internet.other.hits(run.started))
    step = run.step
    assert run.result.exit_code == 1 and step["status"] == "failed"
    assert any(f"{role} exited during the step" in f for f in step["faults"]), step["faults"]
    assert role in step["reason"]
    assert any(e.get("kind") == role and e.get("phase") == "crashed" for e in run.events)
    assert_evidence_intact(run.out, signing_key)


# -- the Docker engine -------------------------------------------------------------------
def test_engine_unreachable_at_start(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "ws", {"name": "noengine", "image": IMAGE, "run": "true"})
    out = tmp_path / "run"
    proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet"],
                     {"DOCKER_HOST": "unix:///nonexistent.sock"})
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == EXIT_ENVIRONMENT, text
    assert text.count("\n") == 1 and "Traceback" not in text
    assert "no Docker engine answers" in text and "DOCKER_HOST" in text
    assert not out.exists(), "nothing is created before the engine answers"


@pytest.mark.parametrize("phase", ["preparing", "running"])
def test_engine_lost_mid_run(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                             docker_client: docker.DockerClient, phase: str) -> None:
    relay = EngineRelay(tmp_path / "engine.sock").start()
    spec = write_spec(tmp_path / "ws", {"name": "lost", "image": IMAGE,
                                        "run": "echo started; sleep 60"})
    out = tmp_path / "run"
    proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                      "--egress-network", internet.network],
                     {"DOCKER_HOST": relay.docker_host})
    run_id = ""
    try:
        wait_for(lambda: step_status(out, "lost") == phase, what=f"phase {phase}")
        record = read_record(out)
        assert record is not None
        run_id = record["run_id"]
        if phase == "running":
            wait_for(lambda: sbx_containers(docker_client, "step", "lost"))
        relay.cut()
        began = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if run_id and proc.returncode != EXIT_ENVIRONMENT:  # leave nothing for others
            main(["gc", "--run", run_id])
    text = err.decode()
    assert proc.returncode == EXIT_ENVIRONMENT, text
    assert text.count("\n") == 1 and "Traceback" not in text, text
    assert "Docker engine stopped answering" in text and "sbx gc" in text
    assert took < 30, f"sbx took {took:.0f} s to give up on a vanished engine"
    record = read_record(out)
    assert record is not None and record["status"] == "error" and record["ended"]
    assert "Docker engine stopped answering" in record["reason"]
    assert f"sbx gc --run {run_id}" in record["leftovers"]
    step = only_step(record)
    assert step["status"] == "error" and "Docker engine" in step["reason"]
    # Signing needs no engine: the Statements of what was seen are signed and verify.
    assert_evidence_intact(out, signing_key)
    # The engine is back (the real socket): gc finds and removes everything of the run.
    assert main(["gc", "--run", run_id]) == EXIT_OK
    assert run_objects(docker_client, run_id) == []


# -- signals -----------------------------------------------------------------------------
def _copying(out: Path) -> bool:
    record = read_record(out)
    if record is None:
        return False
    step = only_step(record)
    # The command has exited (exit code recorded) and the outputs are not out yet.
    return step["status"] == "running" and step["exit_code"] is not None


@pytest.mark.parametrize("phase", ["preparing", "probing", "copying outputs"])
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_in_phase(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                         docker_client: docker.DockerClient, sig: signal.Signals,
                         phase: str) -> None:
    # 256 MiB of output make copying out take a second or more: a wide, real window.
    run = ("mkdir -p out && head -c 268435456 /dev/zero > out/big"
           if phase == "copying outputs" else "echo ran > ran.txt")
    spec = write_spec(tmp_path / "ws", {"name": "sig", "image": IMAGE, "run": run,
                                        "outputs": ["out/" if phase == "copying outputs"
                                                    else "ran.txt"]})
    out = tmp_path / "run"
    proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                      "--egress-network", internet.network])
    try:
        if phase == "copying outputs":
            wait_for(lambda: _copying(out), interval=0.01, what="copying outputs")
        else:
            wait_for(lambda: step_status(out, "sig") == phase, interval=0.01, what=phase)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    assert proc.returncode == EXIT_INTERRUPTED, text  # SIGTERM too: see README, exit codes
    assert "Traceback" not in text
    record = read_record(out)
    assert record is not None
    assert record["interrupted"] is True and record["status"] == "interrupted"
    assert record["reason"] == f"interrupted by {sig.name} while sig {phase}"
    step = only_step(record)
    assert step["status"] == "interrupted" and step["reason"] == f"interrupted while {phase}"
    # Nothing half-copied is recorded: an output is listed only once it is complete.
    for o in step["outputs"]:
        assert (out / "outputs" / "sig" / o["path"]).stat().st_size == o["size"]
    assert run_objects(docker_client, record["run_id"]) == []
    # An interrupted run is signed too: everything verifies except "it succeeded".
    failed = assert_evidence_intact(out, signing_key)
    assert "steps-succeeded" in failed


class _SignalOnSign:
    """A local signer that gets `sig` from outside after its first signature."""

    def __init__(self, inner: Signer, sig: signal.Signals) -> None:
        self.inner = inner
        self.sig = sig
        self.kind: SignerKind = inner.kind
        self.calls = 0

    def describe(self) -> str:
        return self.inner.describe()

    def sign(self, payload: Payload) -> Signed:
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), self.sig)  # delivered to the main thread, which signs
            time.sleep(0.5)
        return self.inner.sign(payload)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_while_signing(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                              docker_client: docker.DockerClient,
                              monkeypatch: pytest.MonkeyPatch, sig: signal.Signals) -> None:
    # The signing phase lasts milliseconds with a local key: the signal is sent from
    # inside it (a real signal to this process), not raced from outside.
    real = ev.make_signer
    monkeypatch.setattr(ev, "make_signer",
                        lambda *a, **k: _SignalOnSign(real(*a, **k), sig))
    spec = write_spec(tmp_path / "ws", {"name": "sig", "image": IMAGE, "run": "true"})
    out = tmp_path / "run"
    before = signal.getsignal(sig)
    code = main(["run", str(spec), "--out", str(out), "--quiet",
                 "--egress-network", internet.network])
    assert signal.getsignal(sig) == before, "run_file must restore the caller's handlers"
    assert code == EXIT_INTERRUPTED
    record = read_record(out)
    assert record is not None
    assert record["interrupted"] is True and record["status"] == "interrupted"
    assert record["reason"] == f"interrupted by {sig.name} while signing the evidence"
    assert only_step(record)["status"] == "succeeded"  # the step itself was done
    assert "unsigned" in record["evidence"]["error"]
    kept = sorted(p.name for p in (out / "attestations").iterdir())
    assert "provenance.statement.json" in kept and "sig.link.statement.json" in kept
    assert run_objects(docker_client, record["run_id"]) == []


# -- the disk ----------------------------------------------------------------------------
def test_run_directory_fills_up(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                                docker_client: docker.DockerClient) -> None:
    spec = write_spec(tmp_path / "ws", {
        "name": "full", "image": IMAGE, "outputs": ["out/"],
        "run": "mkdir -p out && head -c 8388608 /dev/urandom > out/big"})
    with tmpfs(tmp_path / "small", "2m") as out:
        proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                          "--egress-network", internet.network])
        _, err = proc.communicate(timeout=180)
        text = err.decode()
        assert proc.returncode == EXIT_ENVIRONMENT, text
        assert text.count("\n") == 1 and "Traceback" not in text, text
        assert f"cannot write the run directory {out}" in text
        assert "No space left on device" in text
        record = read_record(out)
        assert record is not None and record["status"] == "error"
        assert "No space left on device" in record["reason"]
        step = only_step(record)
        assert step["status"] == "error" and "partial outputs were removed" in step["reason"]
        assert not any((out / "outputs" / "full").glob("**/big"))
        assert run_objects(docker_client, record["run_id"]) == []
        # The records fit once the partial outputs were dropped: the evidence is signed.
        assert_evidence_intact(out, signing_key)


def test_run_directory_full_from_the_start(tmp_path: Path, internet: Internet,
                                           docker_client: docker.DockerClient) -> None:
    spec = write_spec(tmp_path / "ws", {"name": "nospace", "image": IMAGE, "run": "true"})
    before = {c["Id"] for c in docker_client.api.containers(all=True)}
    with tmpfs(tmp_path / "small", "64k") as out:
        fd = os.open(out / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                          "--egress-network", internet.network])
        _, err = proc.communicate(timeout=120)
        text = err.decode()
        assert proc.returncode == EXIT_ENVIRONMENT, text
        assert text.count("\n") == 1 and "Traceback" not in text, text
        assert f"cannot write the run directory {out}" in text
        assert "No space left on device" in text
        assert not (out / "run.json").exists()
    labelled = docker_client.api.containers(all=True, filters={"label": "sbx.step=nospace"})
    # Nothing new from this sbx (the engine is shared: other sessions' containers come and go).
    new = [c for c in docker_client.api.containers(all=True) if c["Id"] not in before
           and f"/{proc.pid}/" in (c.get("Labels") or {}).get("sbx.owner", "")]
    assert labelled == [] and new == []


# -- floods ------------------------------------------------------------------------------
_FLOOD = r"""
import sys
out, err = sys.stdout.buffer, sys.stderr.buffer
out.write(b"L" * (24 << 20) + b"\n")          # one 24 MiB line
for _ in range(100):                           # 1.2 M short lines
    out.write(b"line\n" * 12000)
chunk = b"E" * (1 << 20)
for _ in range(128):                           # 128 MiB on stderr, as fast as it goes
    err.write(chunk)
out.flush(); err.flush()
"""


def _peak_rss(proc: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], proc.memory_info().rss)
        except psutil.Error:
            return
        time.sleep(0.05)


def test_output_flood_is_capped(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                                docker_client: docker.DockerClient) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "flood.py").write_text(_FLOOD)
    spec = write_spec(ws, {"name": "flood", "image": IMAGE, "inputs": ["flood.py"],
                           "run": "python3 flood.py"})
    out = tmp_path / "run"
    proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                      "--egress-network", internet.network])
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_rss, args=(psutil.Process(proc.pid), stop, peak))
    watcher.start()
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == EXIT_OK, err.decode()
    # A bound against buffering the flood in memory, not a speed target.
    assert peak[0] < 300 * 1024 * 1024, f"sbx peaked at {peak[0] >> 20} MiB"
    log = out / "logs" / "flood.log"
    size = log.stat().st_size
    assert LOG_LIMIT <= size <= LOG_LIMIT + 4096
    assert log.read_bytes()[-300:].rstrip().endswith(b"counts what was dropped]")
    record = read_record(out)
    assert record is not None
    stats = only_step(record)["log"]
    assert stats["truncated"] is True and stats["bytes"] == LOG_LIMIT
    # Docker frames the output differently, but every byte is accounted for.
    total = (24 << 20) + 1 + 100 * 12000 * 5 + 128 * (1 << 20)
    assert stats["bytes"] + stats["dropped_bytes"] >= total - 4096
    assert failed_checks(out, signing_key) == {}  # the capped log is what was signed
    assert run_objects(docker_client, record["run_id"]) == []


def test_denied_flood_completes(tmp_path: Path, internet: Internet, signing_key: KeyPair,
                                docker_client: docker.DockerClient) -> None:
    # At the canary's own ports (UDP 9999, TCP 8080): a packet that got out would be seen.
    # The step counts what happened to each attempt instead of hiding the errors.
    flood = (f"import errno, json, os, socket\n"
             f"seen = {{}}\n"
             f"def note(key):\n    seen[key] = seen.get(key, 0) + 1\n"
             f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             f"for i in range(3000):\n"
             f"    try:\n        s.sendto(b'x', ('{internet.other.ip}', 9999))\n"
             f"        note('udp sent')\n"
             f"    except OSError as exc:\n        note(f'udp {{errno.errorcode[exc.errno]}}')\n"
             f"for i in range(300):\n"
             f"    c = socket.socket()\n    c.settimeout(15)\n"
             f"    try:\n        c.connect(('{internet.other.ip}', 8080))\n"
             f"        note('tcp connected')\n"
             f"        c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
             f"        note('tcp data' if c.recv(10) else 'tcp closed')\n"
             f"    except OSError as exc:\n        note(f'tcp {{type(exc).__name__}}')\n"
             f"    c.close()\n"
             f"os.makedirs('out', exist_ok=True)\n"
             f"json.dump(seen, open('out/flood.json', 'w'))\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "flood.py").write_text(flood)
    spec = write_spec(ws, {"name": "denyflood", "image": IMAGE, "inputs": ["flood.py"],
                           "run": "python3 flood.py", "outputs": ["out/"]})
    out = tmp_path / "run"
    started = dt.datetime.now(dt.UTC)
    # A webhook nobody answers (a closed port on loopback): alerts must not hold the run.
    proc = spawn_sbx(["run", str(spec), "--out", str(out), "--quiet",
                      "--egress-network", internet.network,
                      "--alert-webhook", "http://127.0.0.1:9/hook"])
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_rss, args=(psutil.Process(proc.pid), stop, peak))
    watcher.start()
    try:
        _, err = proc.communicate(timeout=600)  # a hang guard; the speed is `make bench`'s
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 1, err.decode()  # denied egress in enforce mode
    assert "Traceback" not in err.decode()
    assert peak[0] < 300 * 1024 * 1024, f"sbx peaked at {peak[0] >> 20} MiB"
    record = read_record(out)
    assert record is not None
    step = only_step(record)
    seen = json.loads((out / "outputs" / "denyflood" / "out" / "flood.json").read_text())
    # Every datagram was dropped inside the namespace (EPERM), none left it.
    assert seen.get("udp EPERM") == 3000, seen
    # Every connection was the relay's and ended in its reset; none got a byte from the
    # canary. (An address no rule covers is refused at once, without waiting for bytes, so
    # the reset can beat connect()'s return: then connect() itself raises it.)
    ended = {k: v for k, v in seen.items() if k.startswith("tcp ") and k != "tcp connected"}
    assert set(ended) <= {"tcp ConnectionResetError", "tcp closed"}, seen
    assert sum(ended.values()) == 300 and "tcp data" not in seen, seen
    assert internet.other.hits(started) == [], "a denied packet reached the canary"
    assert record["alerts"]["sent"] == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    tcp = [e for e in events if e.get("kind") == "tcp" and e.get("verdict") == "denied"
           and e.get("dst_ip") == internet.other.ip and e.get("dst_port") == 8080]
    assert len(tcp) == 300, "every relayed connection is on record"
    # The firewall's log is rate-limited (a flood must not drown the agent): some, not all.
    udp = [e for e in events if e.get("kind") == "udp" and e.get("dst_port") == 9999]
    assert udp and all(e["verdict"] == "denied" for e in udp)
    assert step["flows"]["denied"] == len(tcp) + len(udp), step["flows"]
    failed = failed_checks(out, signing_key)
    assert set(failed) <= {"steps-succeeded", "isolation.denied-flows"}, failed
    assert run_objects(docker_client, record["run_id"]) == []


def _sleepy(tmp_path: Path, internet: Internet) -> tuple[Any, Path]:
    spec = write_spec(tmp_path / "ws", {"name": "sleepy", "image": IMAGE,
                                        "run": "echo started; sleep 60",
                                        "egress": {"allow": ["web.sbx.test:8080"]}})
    out = tmp_path / "run"
    return spawn_sbx(["run", str(spec), "--out", str(out), "--egress-network",
                      internet.network, "--quiet"]), out


@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupt_while_running_removes_every_object_and_records_it(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient,
        sig: signal.Signals) -> None:
    proc, out = _sleepy(tmp_path, internet)
    step = wait_for(lambda: sbx_containers(docker_client, "step", "sleepy"))[0]
    run_id = step["Labels"]["sbx.run"]
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr.decode()
    assert b"Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert record["run_id"] == run_id
    assert record["interrupted"] is True
    assert only_step(record)["status"] == "interrupted"
    assert record["ended"]
    assert run_objects(docker_client, run_id) == []
    assert (out / "events.jsonl").read_text().strip()  # what it saw is kept


def test_gc_removes_what_a_killed_run_left(
        tmp_path: Path, internet: Internet, docker_client: docker.DockerClient) -> None:
    proc, _ = _sleepy(tmp_path, internet)
    step = wait_for(lambda: sbx_containers(docker_client, "step", "sleepy"))[0]
    run_id = step["Labels"]["sbx.run"]
    proc.kill()
    proc.wait(timeout=30)
    assert run_objects(docker_client, run_id), "a killed sbx cannot clean up"
    gc = spawn_sbx(["gc", "--run", run_id])
    stdout, stderr = gc.communicate(timeout=120)
    assert gc.returncode == 0, stderr.decode()
    assert b"removed container" in stdout and b"removed network" in stdout
    assert run_objects(docker_client, run_id) == []
