"""What the sandbox layer is asked to run: plain frozen values, no YAML, no pydantic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sbx.sandbox.archive import OutputLimits
from sbx.sandbox.policy import Policy


@dataclass(frozen=True)
class Limits:
    """Resource limits of the step container."""

    cpus: float = 2.0
    memory: int = 1 << 30
    pids: int = 512
    timeout: float = 3600.0
    disk: int = 10 << 30  # bytes the step may write to its writable layer (see storage)


@dataclass(frozen=True)
class StepConfig:
    """One step, resolved: command argv, host input files and the egress policy."""

    name: str
    image: str
    command: tuple[str, ...]
    workdir: str
    policy: Policy
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    read_only_rootfs: bool = False
    tmpfs: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    proxy_env: bool = False
    inputs: tuple[tuple[Path, str], ...] = ()
    outputs: tuple[str, ...] = ()
    # The image id (sha256:...) the reference resolved to when it was pulled: the step runs
    # this, so a tag that moves during the run cannot change what runs.
    image_id: str | None = None
    # PEM CAs the gateway trusts for upstream TLS of inspected hosts, besides the system store.
    upstream_ca: str = ""


@dataclass(frozen=True)
class SandboxOptions:
    """How sandboxes are built on this engine."""

    runtime_image: str
    egress_network: str | None = None  # None: a fresh egress network per step
    # Returns once `egress_network` exists (raising if it could not be made): the run
    # creates it while its sandboxes create their own networks.
    egress_ready: Callable[[], object] | None = None
    host_ips: tuple[str, ...] = ()
    # How long a probe waits for an answer that would prove a way out. An answer on
    # these local links (a reset, an ICMP error, made by the kernel) takes well under a
    # millisecond, and one that arrived while the probe was not scheduled is still read;
    # a silent drop is not taken on the timeout's word but on the firewall's record of
    # it (probe_verdicts), so a longer wait would prove nothing more.
    probe_timeout: float = 0.15
    ready_timeout: float = 20.0
    output_limits: OutputLimits = field(default_factory=OutputLimits)


@dataclass(frozen=True)
class ProbeResult:
    """One fail-closed probe: what it tried, whether it was blocked, what counted as reached."""

    name: str
    kind: str
    target: str
    blocked: bool
    detail: str
    reached_if: str = ""


@dataclass(frozen=True)
class SandboxFacts:
    """What the sandbox was, for the run record and the isolation evidence."""

    network_id: str
    network_name: str
    subnet: str
    internal: bool
    bridge_ip: str
    gateway_ip: str
    agent_ip: str
    containers: dict[str, str]
    step_cap_drop: tuple[str, ...]
    step_security_opt: tuple[str, ...]
    agent_caps: dict[str, str]
    policy_digest: str
    engine_version: str
    attached: tuple[str, ...] = ()  # container ids the engine lists on the step network
    step_cap_add: tuple[str, ...] = ()
    step_privileged: bool = False
    egress_network: str | None = None
