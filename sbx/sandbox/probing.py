"""The fail-closed probes, run from inside the step's namespace before its command.

They run as a `docker exec` in the agent's container (the namespace the step will
share), as nobody, without capabilities and under no_new_privs, which the probes
report and which is checked: a process start, not a container's create, start and
removal.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Sequence
from typing import Any

from docker.utils.socket import STDOUT, frames_iter

from sbx.sandbox.config import ProbeResult
from sbx.sandbox.engine import ENGINE_ERRORS
from sbx.sandbox.objects import NOBODY, PROXY_PORT, SandboxFailure, SandboxObjects, utcnow
from sbx.sandbox.probe_verdicts import GatewayRecord, identity_problem, judge

# How long to wait for the fence's record once the probes are done (see `probe`).
FENCE_WAIT = 5.0
PROBE_COMMAND = ["python3", "-m", "sbx.sandbox.runtime.probe"]


class Probing(SandboxObjects):
    """Prove the sandbox holds: nothing the step must not reach answers."""

    def probe(self, peer_ips: Sequence[str] = ()) -> tuple[ProbeResult, ...]:
        """Run the fail-closed probes from inside the step's namespace.

        `peer_ips` are other live steps' gateway and agent addresses: reaching one
        would mean two steps could talk.
        """
        net = self._need_network()
        egress_ips = [ip for ip in self._egress_side_ips() if ip]
        cfg = {"timeout": self.options.probe_timeout, "egress_ips": egress_ips,
               "host_ips": [net.bridge_ip],
               "peer_ips": list(peer_ips), "peer_proxy_port": PROXY_PORT,
               "ipv6_ips": _global_v6(self.options.host_ips)[:1] or ["fd00:5b::1"],
               "proxy": f"{net.gateway_ip}:{PROXY_PORT}", "dns_canaries": self.dns_canaries,
               # A port no probe uses, so the fence's record is its own.
               "fence": {"ip": net.bridge_ip, "port": 40000 + secrets.randbelow(20000)}}
        record = self._probe_record = GatewayRecord()
        try:
            report = self._run_probes(cfg)
            raw = report["probes"]
            # Some verdicts are the gateway's or the firewall's: wait for each record.
            record.wait_for(raw)
            # The fence: the firewall's record of a datagram sent after every probe. Once
            # it is in, so is every drop record before it, and with every check above
            # answered the probes have nothing left on its way: the step may start
            # (without it, the executor waits for quiet instead).
            fence = report.get("fence")
            self.fenced = isinstance(fence, dict) and record.wait_for_fence(fence, FENCE_WAIT)
        finally:
            self._probe_record = None
        results = judge(raw, record.events())
        for r in results:
            self.on_event({"time": utcnow(), "kind": "probe", "step": self.step.name,
                           "source": "sbx", "probe": r.name, "protocol": r.kind,
                           "dst": r.target, "verdict": "blocked" if r.blocked else "reached",
                           "reason": r.detail, "violation": (not r.blocked) or None})
        return results

    def _runtime_started(self) -> None:
        self.spawn_probes()

    def spawn_probes(self) -> None:
        """Start the probe process in the agent's container now, as nobody: it starts
        Python and imports while the gateway and agent get ready, then waits for its
        description on stdin, which `probe` sends once both are. Best effort: without
        it, `probe` starts the process itself."""
        try:
            exec_id = self.api.exec_create(
                self.containers["agent"], [*PROBE_COMMAND, "--stdin"], user=NOBODY,
                stdin=True, stdout=True, stderr=False)["Id"]
            self._probe_exec = (exec_id, self.api.exec_start(exec_id, socket=True))
        except ENGINE_ERRORS:
            self._probe_exec = None

    def _run_probes(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Run the probes in the agent's container as nobody; their JSON report."""
        started, self._probe_exec = self._probe_exec, None
        if started is None:
            exec_id = self.api.exec_create(
                self.containers["agent"], PROBE_COMMAND, user=NOBODY,
                environment={"SBX_CONFIG": json.dumps(cfg)}, stdout=True, stderr=False)["Id"]
            out = self.api.exec_start(exec_id).decode("utf-8", "replace")
        else:
            exec_id, sock = started
            try:
                getattr(sock, "_sock", sock).sendall(json.dumps(cfg).encode() + b"\n")
                out = b"".join(data for stream, data in frames_iter(sock, tty=False)
                               if stream == STDOUT).decode("utf-8", "replace")
            except OSError as exc:
                raise SandboxFailure(f"the probes did not report ({exc})") from None
            finally:
                sock.close()
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        try:
            report = json.loads(out.strip().splitlines()[-1])
            raw = report["probes"]
            if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
                raise TypeError
        except (ValueError, IndexError, KeyError, TypeError):
            raise SandboxFailure(f"the probes did not report (exit {code})") from None
        problem = identity_problem(report.get("identity"))
        if problem is not None:
            raise SandboxFailure(f"fail closed: {problem}")
        return dict(report)

    def _egress_side_ips(self) -> list[str]:
        """The host bridge of the egress network and the gateway's own egress address."""
        info = self.api.inspect_container(self.containers["gateway"])
        nets = info["NetworkSettings"]["Networks"]
        egress: dict[str, Any] = nets.get(self.egress_network) or next(
            (v for k, v in nets.items() if k != self._need_network().name), {})
        return [egress.get("Gateway", ""), egress.get("IPAddress", "")]

def _global_v6(ips: tuple[str, ...]) -> list[str]:
    """Host IPv6 addresses a probe can aim at: not loopback (that is the step's own)."""
    out = []
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and not (addr.is_loopback or addr.is_link_local):
            out.append(ip)
    return out

