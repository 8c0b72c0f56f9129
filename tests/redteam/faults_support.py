"""Helpers for the fault-injection tests: an engine socket that can be cut, sbx as a
subprocess, and the checks every fault ends with (no objects, records, evidence)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import yaml

from sbx.attest.signing.local import KeyPair, load_public_key
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run

REAL_SOCKET = "/var/run/docker.sock"
T = TypeVar("T")


class EngineRelay:
    """A unix socket that forwards to the real engine until `cut()`.

    sbx is pointed at it with DOCKER_HOST, so the test can make "the engine"
    vanish mid-run without stopping the dockerd other things depend on. `cut()`
    closes the listener and every open connection at once, which is what a
    client sees when dockerd dies: refused connects and reset streams.
    """

    def __init__(self, path: Path, upstream: str = REAL_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def docker_host(self) -> str:
        """The DOCKER_HOST value that leads to this relay."""
        return f"unix://{self.path}"

    def start(self) -> EngineRelay:
        """Listen and forward; safe to call again after `cut()` (the engine is back)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    # cut() ran while this connection was being set up: it must not live on
                    # (a step's wait on it would see the real engine until the step ended).
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
                self.requests += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    peers[src].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """The engine is gone: no new connections, every open one reset."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def wait_for(predicate: Callable[[], T | None], timeout: float = 90.0,
             interval: float = 0.02, what: str = "condition") -> T:
    """Poll until `predicate` returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


def read_record(out: Path) -> dict[str, Any] | None:
    """run.json as it is now, or None while it does not exist yet."""
    try:
        data: dict[str, Any] = json.loads((out / "run.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def step_status(out: Path, step: str) -> str | None:
    """The step's status in run.json right now."""
    record = read_record(out)
    return None if record is None else record["steps"][step]["status"]


def write_spec(ws: Path, spec: dict[str, Any], name: str = "step.yaml") -> Path:
    """A step or pipeline file in a fresh workspace."""
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / name
    path.write_text(yaml.safe_dump(spec))
    return path


def spawn_sbx(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m sbx ARGS` as a user would run it, in its own process group."""
    return subprocess.Popen([sys.executable, "-m", "sbx", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def run_objects(client: docker.DockerClient, run_id: str) -> list[str]:
    """Every container, network and volume labelled with this run."""
    f = {"label": f"sbx.run={run_id}"}
    return ([f"container {c['Names'][0]}" for c in client.api.containers(all=True, filters=f)]
            + [f"network {n['Name']}" for n in client.api.networks(filters=f)]
            + [f"volume {v['Name']}"
               for v in client.api.volumes(filters=f).get("Volumes") or []])


def sbx_containers(client: docker.DockerClient, role: str, step: str | None = None,
                   running: bool = True) -> list[dict[str, Any]]:
    """sbx's containers of a role (gateway, agent, probe, step)."""
    labels = [f"sbx.role={role}"] + ([f"sbx.step={step}"] if step else [])
    filters: dict[str, Any] = {"label": labels}
    if running:
        filters["status"] = "running"
    found: list[dict[str, Any]] = client.api.containers(all=not running, filters=filters)
    return found


def failed_checks(out: Path, key: KeyPair) -> dict[str, str]:
    """`sbx verify`'s failed checks by name, with the session's key trusted."""
    report = verify_run(out, KeyTrust([load_public_key(key.public)]), DEFAULT_POLICY)
    return {r.check.value: r.reason for r in report.failed()}


def assert_evidence_intact(out: Path, key: KeyPair) -> dict[str, str]:
    """What was signed verifies: signatures, Statements and the files they name."""
    failed = failed_checks(out, key)
    for check in ("signatures", "statements", "run-binding"):
        assert check not in failed, failed
    return failed


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `path` (the tests run as root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def interrupt(proc: subprocess.Popen[bytes], sig: signal.Signals,
              timeout: float = 120) -> tuple[int, str]:
    """Send `sig` and wait: (exit code, stderr)."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")
