"""The fail-closed probes, run from inside the step's namespace before its command."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from sbx.sandbox.config import ProbeResult
from sbx.sandbox.objects import (
    NOBODY,
    PROXY_PORT,
    RUNTIME_LIMITS,
    STEP_SECURITY_OPT,
    SandboxFailure,
    SandboxObjects,
    utcnow,
)
from sbx.sandbox.probe_verdicts import GatewayRecord, judge


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
               "proxy": f"{net.gateway_ip}:{PROXY_PORT}", "dns_canaries": self.dns_canaries}
        record = self._probe_record = GatewayRecord()
        try:
            raw = self._run_probes(cfg)
            # Some verdicts are the gateway's: wait for its record of each probe.
            record.wait_for(raw)
        finally:
            self._probe_record = None
        results = judge(raw, record.events())
        for r in results:
            self.on_event({"time": utcnow(), "kind": "probe", "step": self.step.name,
                           "source": "sbx", "probe": r.name, "protocol": r.kind,
                           "dst": r.target, "verdict": "blocked" if r.blocked else "reached",
                           "reason": r.detail, "violation": (not r.blocked) or None})
        return results

    def _run_probes(self, cfg: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the probe container in the agent's namespace; its raw JSON results."""
        cid = self._create(
            "probe", image=self.options.runtime_image, user=NOBODY,
            command=["python3", "-m", "sbx.sandbox.runtime.probe"],
            environment={"SBX_CONFIG": json.dumps(cfg)},
            host_config=self.api.create_host_config(
                cap_drop=["ALL"], security_opt=list(STEP_SECURITY_OPT), read_only=True,
                network_mode=f"container:{self.containers['agent']}", **RUNTIME_LIMITS))
        self.api.start(cid)
        code = self.api.wait(cid, timeout=60)["StatusCode"]
        out = self.api.logs(cid, stdout=True, stderr=False).decode("utf-8", "replace")
        self._remove("probe")
        try:
            raw = json.loads(out.strip().splitlines()[-1])["probes"]
            if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
                raise TypeError
        except (ValueError, IndexError, KeyError, TypeError):
            raise SandboxFailure(f"the probes did not report (exit {code})") from None
        return raw

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

