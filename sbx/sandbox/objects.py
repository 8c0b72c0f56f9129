"""The state every part of a step's sandbox shares, and how one of its containers is made.

`Sandbox` (in `sbx.sandbox.sandbox`) is assembled from this base and its parts: starting the
runtime (`startup`), the fail-closed probes (`probing`), the step itself and clean-up
(`teardown`). Every object is labelled with the run id.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound

from sbx.errors import EnvironmentFailure, SbxError
from sbx.sandbox import labels as L
from sbx.sandbox.config import SandboxOptions, StepConfig
from sbx.sandbox.network import StepNetwork
from sbx.sandbox.probe_verdicts import GatewayRecord

EventSink = Callable[[dict[str, Any]], None]

PROXY_PORT = 3128
RELAY_PORT, DNS_UDP_PORT, DNS_TCP_PORT, NFLOG_GROUP = 15001, 15353, 15354, 7
RUNTIME_LIMITS: dict[str, Any] = {"mem_limit": 96 * 1024 * 1024, "pids_limit": 256}
STEP_SECURITY_OPT = ("no-new-privileges:true",)
NOBODY = "65534:65534"
# A step's own output kept in logs/<step>.log; the rest is drained and counted, not kept.
LOG_LIMIT = 64 * 1024 * 1024
LOG_TRUNCATED = (b"\n[sbx: log truncated: only the first 64 MiB of the step's output are "
                 b"kept; run.json's step `log` counts what was dropped]\n")


class SandboxFailure(SbxError):
    """The sandbox could not be built or proven; the step must not run."""

    exit_code = 1


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SandboxObjects:
    """The Docker objects of one step: their ids, names, labels and timings."""

    def __init__(self, client: docker.DockerClient, run_id: str, step: StepConfig,
                 options: SandboxOptions, on_event: EventSink, log_dir: Path) -> None:
        self.client = client
        self.api = client.api
        self.run_id = run_id
        self.step = step
        self.options = options
        self.on_event = on_event
        self.log_dir = log_dir
        self.network: StepNetwork | None = None
        self.egress_network = options.egress_network
        self.containers: dict[str, str] = {}
        self.agent_caps: dict[str, str] = {}
        # The gateway's run CA certificate (public) and fingerprint, when it inspects TLS.
        self.run_ca: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._ready = {role: threading.Event() for role in ("gateway", "agent")}
        self._failed: dict[str, str] = {}
        self._followers: list[threading.Thread] = []
        self._follower_of: dict[str, threading.Thread] = {}  # role -> its output's follower
        self._closed = False  # the runtime is being stopped (stop())
        self._removed = False  # the objects are being removed (close())
        self.faults: list[str] = []
        self.log_stats: dict[str, Any] = {"bytes": 0, "truncated": False, "dropped_bytes": 0}
        self.storage: dict[str, Any] = {}  # run.json's `storage` (see sbx.sandbox.storage)
        self._log_writer: threading.Thread | None = None
        # Seconds per phase of this sandbox's life, for run.json and `make bench`.
        self.timings: dict[str, float] = {}
        # Names only Docker's embedded DNS answers (the agent's aliases on the step network):
        # the probes' DNS canaries. Short, random labels: container names can pass 63 bytes.
        self.dns_canaries = {proto: f"sbx-canary-{secrets.token_hex(6)}"
                             for proto in ("udp", "tcp")}
        self._probe_record: GatewayRecord | None = None  # the runtime's events while probing
        self.fenced = False  # the probes' fence came back: nothing of theirs is still coming
        # The probe process started ahead (exec id, its attached socket), waiting for its
        # description on stdin (see `Probing.spawn_probes`).
        self._probe_exec: tuple[str, Any] | None = None
        self._counters_reading: threading.Thread | None = None  # see `read_counters_soon`

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[phase]`, even when it raises."""
        began = time.monotonic()
        try:
            yield
        finally:
            self._add_time(phase, began)

    def _add_time(self, phase: str, began: float) -> float:
        """Add the time since `began` (monotonic) to `phase`; returns now."""
        now = time.monotonic()
        with self._lock:
            self.timings[phase] = round(self.timings.get(phase, 0.0) + now - began, 4)
        return now

    def _labels(self, role: str) -> dict[str, str]:
        return L.for_object(self.run_id, self.step.name, role)

    def _name(self, role: str) -> str:
        return L.object_name(self.run_id, self.step.name, role)

    def _create(self, role: str, **kwargs: Any) -> str:
        try:
            cid: str = self.api.create_container(name=self._name(role), labels=self._labels(role),
                                                 **kwargs)["Id"]
        except APIError as exc:
            raise EnvironmentFailure(
                f"cannot create the {role} container: {exc.explanation}") from None
        with self._lock:
            self.containers[role] = cid
        return cid

    def _runtime_host_config(self, **kwargs: Any) -> Any:
        return self.api.create_host_config(
            cap_drop=["ALL"], security_opt=list(STEP_SECURITY_OPT), read_only=True,
            **RUNTIME_LIMITS, **kwargs)

    def _runtime_started(self) -> None:
        """Called once the gateway and agent have started, before they are ready."""

    def drop_probe_process(self) -> None:
        """Close a probe process started ahead that will not be used (it ends on EOF)."""
        started, self._probe_exec = self._probe_exec, None
        if started is not None:
            with contextlib.suppress(OSError):
                started[1].close()

    def _need_network(self) -> StepNetwork:
        if self.network is None:
            raise SandboxFailure("the sandbox was not prepared")
        return self.network

    # -- clean-up --------------------------------------------------------------------------
    def _remove(self, role: str) -> None:
        with self._lock:
            cid = self.containers.get(role)
        if cid is None:
            return
        try:
            self.api.remove_container(cid, force=True, v=True)
        except NotFound:
            pass

