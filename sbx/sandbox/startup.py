"""Start a step's egress gateway and namespace agent and follow what they report."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from docker.errors import APIError

from sbx.errors import EnvironmentFailure
from sbx.sandbox.engine import ENGINE_ERRORS
from sbx.sandbox.network import STEP_POOL, create_egress_network, create_step_network
from sbx.sandbox.objects import (
    DNS_TCP_PORT,
    DNS_UDP_PORT,
    NFLOG_GROUP,
    NOBODY,
    PROXY_PORT,
    RELAY_PORT,
    SandboxFailure,
    utcnow,
)
from sbx.sandbox.recorder import Recorder


class RuntimeStart(Recorder):
    """Create the network, gateway and agent; turn their output into events."""

    def prepare(self) -> None:
        """Create the network, then the gateway and agent at once; wait until both are ready."""
        with self.timed("network"), ThreadPoolExecutor(max_workers=2) as pool:
            # Both networks at once: the engine serves the two calls side by side.
            egress = self.options.egress_network
            made = None
            if egress is None:
                egress = self._name("egress")
                made = pool.submit(create_egress_network, self.client, egress,
                                   self._labels("network"))
            self.egress_network = egress
            net = create_step_network(self.client, self._name("net"), self._labels("network"))
            self.network = net
            if made is not None:
                made.result()
        policy = self.step.policy
        relay_token = secrets.token_hex(16)
        gw_cfg = {"step": self.step.name, "policy": policy.to_dict(), "listen_ip": net.gateway_ip,
                  "proxy_port": PROXY_PORT, "dns_port": 53,
                  "refused": [f"{ip}/32" if ":" not in ip else f"{ip}/128"
                              for ip in self.options.host_ips] + [str(STEP_POOL)],
                  "relay_token": relay_token, "upstream_ca": self.step.upstream_ca}
        agent_cfg = {"step": self.step.name, "gateway_ip": net.gateway_ip, "own_ip": net.agent_ip,
                     "bridge_ip": net.bridge_ip, "proxy_port": PROXY_PORT,
                     "relay_port": RELAY_PORT, "dns_udp_port": DNS_UDP_PORT,
                     "dns_tcp_port": DNS_TCP_PORT, "nflog_group": NFLOG_GROUP,
                     "relay_token": relay_token}
        image = self.options.runtime_image

        def gateway() -> None:
            if self.options.egress_ready is not None:
                self.options.egress_ready()
            cid = self._create(
                "gateway", image=image, user=NOBODY,
                command=["python3", "-m", "sbx.sandbox.runtime.gateway"],
                environment={"SBX_CONFIG": json.dumps(gw_cfg)},
                host_config=self._runtime_host_config(
                    network_mode=egress,
                    sysctls={"net.ipv4.ip_forward": "0",
                             "net.ipv4.ip_unprivileged_port_start": "0"}))
            self.api.connect_container_to_network(cid, net.id, ipv4_address=net.gateway_ip)
            self._start("gateway", cid)

        def agent() -> None:
            cid = self._create(
                "agent", image=image, user="0:0",
                command=["python3", "-m", "sbx.sandbox.runtime.agent"],
                environment={"SBX_CONFIG": json.dumps(agent_cfg)},
                networking_config=self.api.create_networking_config(
                    {net.name: self.api.create_endpoint_config(
                        ipv4_address=net.agent_ip,
                        aliases=sorted(self.dns_canaries.values()))}),
                host_config=self._runtime_host_config(
                    network_mode=net.name, cap_add=["NET_ADMIN", "SETPCAP", "SETUID", "SETGID"],
                    sysctls={"net.ipv6.conf.all.disable_ipv6": "0"}))
            self._start("agent", cid)

        with self.timed("runtime_start"), ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(gateway), pool.submit(agent)]
            for future in futures:
                future.result()
        self._runtime_started()  # the probes' process starts while the runtime gets ready
        with self.timed("runtime_ready"):
            deadline = time.monotonic() + self.options.ready_timeout
            for role, ready in self._ready.items():
                while not ready.wait(0.05):
                    if role in self._failed:
                        raise SandboxFailure(f"the {role} failed to start: {self._failed[role]}")
                    if time.monotonic() > deadline:
                        raise SandboxFailure(f"the {role} was not ready within "
                                             f"{self.options.ready_timeout:.0f} s")
        self._start_watchdog()

    def _start(self, role: str, cid: str) -> None:
        try:
            # Attached before it starts: see `_attach`.
            output = self._attach(cid, stderr=False)
            self.api.start(cid)
        except APIError as exc:
            raise EnvironmentFailure(f"cannot start the {role}: {exc.explanation}") from None
        follower = threading.Thread(target=self._follow, args=(role, cid, output), daemon=True)
        follower.start()
        self._followers.append(follower)
        self._follower_of[role] = follower

    def _attach(self, cid: str, stderr: bool) -> Iterator[bytes]:
        """The container's live output, attached before it starts.

        Not `logs(follow=True)`: that reads the engine's log files, and an engine
        that rotates them (log-opts max-size, as here) silently skips whatever was
        rotated away before the reader got to it: a flood could hide what follows.
        An attached stream gets every byte, with backpressure.
        """
        stream: Iterator[bytes] = self.api.attach(cid, stdout=True, stderr=stderr, stream=True,
                                                  logs=True)
        return stream

    def _follow(self, role: str, cid: str, output: Iterator[bytes]) -> None:
        """Turn the runtime's standard output into events as they happen.

        Whatever stops this loop other than the stream's end is a fault that fails
        the step closed: every later event of the role would be missing.
        """
        buf = b""
        try:
            for chunk in output:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._on_line(role, line)
        except ENGINE_ERRORS:  # the engine went away: the run notices on its next call
            pass
        except Exception as exc:
            self._recorder_fault(role, f"event follower stopped ({type(exc).__name__}: "
                                       f"{str(exc)[:200]})")
            return
        if role in self._ready and not self._ready[role].is_set():
            self._failed.setdefault(role, "exited before it was ready")
        elif not self._closed:
            self._crashed(role, cid)

    def _crashed(self, role: str, cid: str) -> None:
        try:
            state = self.api.inspect_container(cid)["State"]
        except ENGINE_ERRORS:
            return
        if state.get("Running") or self._closed:
            return
        fault = (f"the {role} exited during the step (code {state.get('ExitCode')}): "
                 "the step had no egress from then on")
        self.faults.append(fault)
        self.on_event({"time": utcnow(), "kind": role, "step": self.step.name, "phase": "crashed",
                       "reason": fault, "source": "sbx"})

    def _on_line(self, role: str, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        event.setdefault("source", role)
        event["step"] = self.step.name
        if event.get("kind") == "heartbeat":
            self._heartbeat(role, event)
            if not event.get("final"):
                return  # liveness, not a record: only the last beat's counters are kept
        self._itemized_by_firewall(event)
        record = self._probe_record
        if record is not None:
            record.add(event, role)
        if event.get("kind") == role:
            if event.get("phase") == "ready":
                if role == "agent":
                    self.agent_caps = dict(event.get("caps", {}))
                elif isinstance(event.get("ca_cert"), str):
                    self.run_ca = (str(event["ca_cert"]), str(event.get("ca_fingerprint", "")))
                    del event["ca_cert"]  # the fingerprint names it in the record
                self._ready[role].set()
            elif event.get("phase") == "failed":
                self._failed[role] = str(event.get("reason", "unknown failure"))
        self.on_event(event)
