"""One step's sandbox on a Docker engine: create, prove, run, copy out, remove.

Objects, all labelled with the run id: the internal step network, the egress
gateway, the namespace agent, a short-lived probe container and the step
container. `close()` removes every one of them whatever happened before.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound

from sbx.errors import EnvironmentFailure, SbxError
from sbx.sandbox import labels as L
from sbx.sandbox.archive import ArchiveError, OutputFile, pack_inputs, unpack_output
from sbx.sandbox.config import ProbeResult, SandboxFacts, SandboxOptions, StepConfig
from sbx.sandbox.engine import ENGINE_ERRORS, is_unreachable
from sbx.sandbox.network import (
    STEP_POOL,
    StepNetwork,
    create_egress_network,
    create_step_network,
)

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


class Sandbox:
    """The Docker objects of one step and their lifecycle."""

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
        self._lock = threading.Lock()
        self._ready = {role: threading.Event() for role in ("gateway", "agent")}
        self._failed: dict[str, str] = {}
        self._followers: list[threading.Thread] = []
        self._closed = False  # the runtime is being stopped (stop())
        self._removed = False  # the objects are being removed (close())
        self.faults: list[str] = []
        self.log_stats: dict[str, Any] = {"bytes": 0, "truncated": False, "dropped_bytes": 0}
        self._log_writer: threading.Thread | None = None
        # Seconds per phase of this sandbox's life, for run.json and `make bench`.
        self.timings: dict[str, float] = {}
        self._last_event = {"gateway": 0.0, "agent": 0.0}  # monotonic time of the last line

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

    # -- objects ---------------------------------------------------------------------------
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

    def prepare(self) -> None:
        """Create the network, then the gateway and agent at once; wait until both are ready."""
        with self.timed("network"):
            egress = self.options.egress_network
            if egress is None:
                egress = self._name("egress")
                create_egress_network(self.client, egress, self._labels("network"))
            self.egress_network = egress
            net = create_step_network(self.client, self._name("net"), self._labels("network"))
            self.network = net
        policy = self.step.policy
        relay_token = secrets.token_hex(16)
        gw_cfg = {"step": self.step.name, "policy": policy.to_dict(), "listen_ip": net.gateway_ip,
                  "proxy_port": PROXY_PORT, "dns_port": 53,
                  "refused": [f"{ip}/32" if ":" not in ip else f"{ip}/128"
                              for ip in self.options.host_ips] + [str(STEP_POOL)],
                  "relay_token": relay_token}
        agent_cfg = {"step": self.step.name, "gateway_ip": net.gateway_ip, "own_ip": net.agent_ip,
                     "bridge_ip": net.bridge_ip, "proxy_port": PROXY_PORT,
                     "relay_port": RELAY_PORT, "dns_udp_port": DNS_UDP_PORT,
                     "dns_tcp_port": DNS_TCP_PORT, "nflog_group": NFLOG_GROUP,
                     "relay_token": relay_token}
        image = self.options.runtime_image

        def gateway() -> None:
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
                    {net.name: self.api.create_endpoint_config(ipv4_address=net.agent_ip)}),
                host_config=self._runtime_host_config(
                    network_mode=net.name, cap_add=["NET_ADMIN", "SETPCAP", "SETUID", "SETGID"],
                    sysctls={"net.ipv6.conf.all.disable_ipv6": "0"}))
            self._start("agent", cid)

        with self.timed("runtime_start"), ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(gateway), pool.submit(agent)]
            for future in futures:
                future.result()
        with self.timed("runtime_ready"):
            deadline = time.monotonic() + self.options.ready_timeout
            for role, ready in self._ready.items():
                while not ready.wait(0.05):
                    if role in self._failed:
                        raise SandboxFailure(f"the {role} failed to start: {self._failed[role]}")
                    if time.monotonic() > deadline:
                        raise SandboxFailure(f"the {role} was not ready within "
                                             f"{self.options.ready_timeout:.0f} s")

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
        """Turn the runtime's standard output into events as they happen."""
        buf = b""
        try:
            for chunk in output:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._on_line(role, line)
        except ENGINE_ERRORS:  # the engine went away: the run notices on its next call
            pass
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
        self._last_event[role] = time.monotonic()
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        event.setdefault("source", role)
        event["step"] = self.step.name
        if event.get("kind") == role:
            if event.get("phase") == "ready":
                if role == "agent":
                    self.agent_caps = dict(event.get("caps", {}))
                self._ready[role].set()
            elif event.get("phase") == "failed":
                self._failed[role] = str(event.get("reason", "unknown failure"))
        self.on_event(event)

    # -- probes ----------------------------------------------------------------------------
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
               "proxy": f"{net.gateway_ip}:{PROXY_PORT}"}
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
        except (ValueError, IndexError, KeyError, TypeError):
            raise SandboxFailure(f"the probes did not report (exit {code})") from None
        results = tuple(ProbeResult(name=str(p["name"]), kind=str(p["kind"]),
                                    target=str(p["target"]), blocked=bool(p["blocked"]),
                                    detail=str(p["detail"])) for p in raw)
        for r in results:
            self.on_event({"time": utcnow(), "kind": "probe", "step": self.step.name,
                           "source": "sbx", "probe": r.name, "protocol": r.kind,
                           "dst": r.target, "verdict": "blocked" if r.blocked else "reached",
                           "reason": r.detail, "violation": (not r.blocked) or None})
        return results

    def _egress_side_ips(self) -> list[str]:
        """The host bridge of the egress network and the gateway's own egress address."""
        info = self.api.inspect_container(self.containers["gateway"])
        nets = info["NetworkSettings"]["Networks"]
        egress: dict[str, Any] = nets.get(self.egress_network) or next(
            (v for k, v in nets.items() if k != self._need_network().name), {})
        return [egress.get("Gateway", ""), egress.get("IPAddress", "")]

    # -- the step --------------------------------------------------------------------------
    def run_step(self, log_path: Path, mask: Callable[[bytes], bytes]) -> tuple[str, int | None]:
        """Run the command; returns (status, exit code). Logs stream to `log_path`."""
        step = self.step
        net = self._need_network()
        env = dict(step.env)
        env.update({"SBX_STEP": step.name, "SBX_RUN_ID": self.run_id,
                    "SBX_PROXY": f"http://{net.gateway_ip}:{PROXY_PORT}"})
        if step.proxy_env:
            proxy = env["SBX_PROXY"]
            for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[key] = proxy
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
        env.update(dict(step.secrets))
        uid, gid = _numeric_user(step.user)
        began = time.monotonic()
        mounts = []
        if step.read_only_rootfs:
            vol = self.api.create_volume(name=self._name("work"), labels=self._labels("volume"))
            mounts.append(docker.types.Mount(step.workdir, vol["Name"], type="volume"))
        cid = self._create(
            "step", image=step.image, command=list(step.command), environment=env,
            working_dir=step.workdir, user=step.user or "",
            host_config=self.api.create_host_config(
                network_mode=f"container:{self.containers['agent']}",
                cap_drop=["ALL"], security_opt=list(STEP_SECURITY_OPT), privileged=False,
                read_only=step.read_only_rootfs, pids_limit=step.limits.pids,
                mem_limit=step.limits.memory, memswap_limit=step.limits.memory,
                nano_cpus=int(step.limits.cpus * 1e9), ipc_mode="private", init=True,
                tmpfs={p: "rw,nosuid,nodev,size=268435456" for p in step.tmpfs},
                mounts=mounts))
        began = self._add_time("step_create", began)
        if step.read_only_rootfs:
            archive = pack_inputs(step.inputs, ".", uid, gid)
            self.api.put_archive(cid, step.workdir, archive)
        else:
            self.api.put_archive(cid, "/", pack_inputs(step.inputs, step.workdir, uid, gid))
        began = self._add_time("copy_in", began)
        output = self._attach(cid, stderr=True)
        self.api.start(cid)
        writer = threading.Thread(target=self._write_log, args=(output, log_path, mask),
                                  daemon=True)
        writer.start()
        status = "succeeded"
        try:
            code: int | None = self.api.wait(cid, timeout=step.limits.timeout)["StatusCode"]
        except Exception as exc:  # requests' ReadTimeout: the step ran out of time
            if "timed out" not in str(exc).lower() and "timeout" not in type(exc).__name__.lower():
                raise
            self.api.kill(cid)
            self.api.wait(cid, timeout=30)
            status, code = "timeout", None
        writer.join(timeout=10)
        self._log_writer = writer
        self._add_time("step", began)
        if status == "succeeded" and code != 0:
            status = "failed"
        return status, code

    def _write_log(self, output: Iterator[bytes], path: Path,
                   mask: Callable[[bytes], bytes]) -> None:
        """Stream the step's output to `path`, masked, keeping at most LOG_LIMIT bytes.

        Beyond the limit the stream is still drained (so the step never blocks on a
        full pipe) but only counted: a step that floods its output cannot fill the
        run directory. The cut is marked in the file and counted in `log_stats`.
        """
        stats = self.log_stats
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                for chunk in output:
                    if stats["truncated"]:
                        stats["dropped_bytes"] += len(chunk)
                        continue
                    data = mask(chunk)
                    room = LOG_LIMIT - stats["bytes"]
                    if len(data) > room:
                        stats["truncated"] = True
                        stats["dropped_bytes"] += len(data) - room
                        data = data[:room] + LOG_TRUNCATED
                    fh.write(data)
                    fh.flush()
                    stats["bytes"] += min(len(data), room)
        except ENGINE_ERRORS:
            pass  # the engine went away: run_step's wait reports it
        except OSError as exc:  # the run directory is full or gone: say so in run.json
            self.faults.append(f"the step's log could not be written to {path}: "
                               f"{exc.strerror or exc}")

    def collect_outputs(self, dest: Path) -> list[OutputFile]:
        """Copy the declared outputs out of the stopped step container."""
        cid = self.containers["step"]
        state = self.api.inspect_container(cid)["State"]
        if state.get("Running"):
            raise SandboxFailure("the step container is still running; outputs are not read")
        found: list[OutputFile] = []
        used = [0, 0]
        for rel in self.step.outputs:
            path = f"{self.step.workdir.rstrip('/')}/{rel.rstrip('/')}"
            response = self._archive(cid, path, rel)
            try:
                stat = docker.utils.decode_json_header(
                    response.headers.get("x-docker-container-path-stat") or "e30=")
                if stat.get("linkTarget"):
                    raise ArchiveError(f"output {rel} is a link to {stat['linkTarget']}: refused")
                found += unpack_output(iter(response.iter_content(1 << 20, False)), rel, dest,
                                       self.options.output_limits, used)
            finally:
                # A refusal or a full disk stops reading mid-stream. The engine holds the
                # container's lock until it has written the whole archive, so an unread
                # stream would hang every later call on the container (inspect, remove):
                # close the connection instead.
                response.close()
        return found

    def _archive(self, cid: str, path: str, rel: str) -> Any:
        """GET the archive of `path` as a streamed response the caller must close.

        docker-py's get_archive hides the response behind a generator that cannot
        close it, hence the same request made here.
        """
        response = self.api._get(self.api._url("/containers/{0}/archive", cid),
                                 params={"path": path}, stream=True,
                                 headers={"Accept-Encoding": "identity"})
        try:
            self.api._raise_for_status(response)
        except NotFound:
            response.close()
            raise ArchiveError(f"output {rel} was not produced") from None
        except BaseException:
            response.close()
            raise
        # As docker-py does for raw streams: a big output may pause longer than the
        # client's timeout between chunks.
        self.api._disable_socket_timeout(self.api._get_raw_response_socket(response))
        return response

    def image_digest(self) -> str:
        """The step image's id (content digest) as the engine knows it."""
        try:
            return str(self.api.inspect_image(self.step.image)["Id"])
        except NotFound:
            raise EnvironmentFailure(
                f"image {self.step.image} is not on this engine: build it (make images) "
                "or docker load it") from None

    def facts(self, engine_version: str) -> SandboxFacts:
        """The sandbox as built, read back from the engine, not from what was asked."""
        net = self._need_network()
        inspected = self.api.inspect_network(net.id)
        step_cfg = self.api.inspect_container(self.containers["step"])["HostConfig"] \
            if "step" in self.containers else {}
        return SandboxFacts(
            network_id=net.id, network_name=net.name, subnet=net.subnet,
            internal=bool(inspected.get("Internal")), bridge_ip=net.bridge_ip,
            gateway_ip=net.gateway_ip, agent_ip=net.agent_ip, containers=dict(self.containers),
            step_cap_drop=tuple(step_cfg.get("CapDrop") or ()),
            step_security_opt=tuple(step_cfg.get("SecurityOpt") or ()),
            agent_caps=dict(self.agent_caps), policy_digest=self.step.policy.digest(),
            engine_version=engine_version,
            attached=tuple(sorted((inspected.get("Containers") or {}).keys())),
            step_cap_add=tuple(step_cfg.get("CapAdd") or ()),
            step_privileged=bool(step_cfg.get("Privileged")),
            egress_network=self.egress_network)

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

    def _save_runtime_log(self, role: str) -> None:
        cid = self.containers.get(role)
        if cid is None:
            return
        try:
            text = self.api.logs(cid, stdout=False, stderr=True)
        except ENGINE_ERRORS:
            return
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / f"{self.step.name}.{role}.log").write_bytes(text[-LOG_LIMIT:])
        except OSError:
            pass  # diagnostics only; a full run directory is reported by the records

    def stop(self) -> None:
        """Stop the gateway and agent once their last events are in; the objects stay
        until `close()`. After this every decision of the step is recorded, so its
        verdict can be given while the objects are still being removed. Safe to repeat."""
        if self._closed:  # also tells the followers the exit is on purpose, not a crash
            return
        self._closed = True
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self._stop_runtime, ("gateway", "agent")))
        # Both have exited, so their log streams end: this waits only for the last lines.
        for follower in self._followers:
            follower.join(timeout=3)
        for role in ("gateway", "agent"):
            self._save_runtime_log(role)

    def close(self) -> None:
        """Remove every object of this sandbox; safe to call twice and after any failure."""
        if self._removed:
            return
        self._removed = True
        self.stop()

        def remove(role: str) -> None:
            try:
                self._remove(role)
            except ENGINE_ERRORS as exc:
                if not is_unreachable(exc):
                    self.faults.append(f"could not remove the {role}: {exc}")

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(remove, ("step", "probe", "agent", "gateway")))
        try:
            remove_by_label(self.client, {L.RUN: self.run_id, L.STEP: self.step.name})
        except ENGINE_ERRORS as exc:
            if not is_unreachable(exc):
                raise
            self.faults.append("the Docker engine stopped answering: this sandbox's objects "
                               "are left for `sbx gc`")
        writer = self._log_writer
        if writer is not None:  # its stream ended with the container: the last bytes land
            writer.join(timeout=5)

    def _quiesce(self, role: str, quiet: float = 0.2, limit: float = 2.0) -> None:
        """Give the role's last decisions (a NFLOG denial read just as the step ended)
        time to arrive: wait until nothing came from it for `quiet` seconds since the call."""
        began = time.monotonic()
        while (now := time.monotonic()) < began + limit:
            if now - max(self._last_event[role], began) >= quiet:
                return
            time.sleep(0.02)

    def _stop_runtime(self, role: str) -> None:
        cid = self.containers.get(role)
        if cid is None:
            return
        try:
            if role == "gateway":  # SIGTERM lets the gateway report the bytes of open flows
                self.api.stop(cid, timeout=2)
            else:  # the agent writes each event as it happens: nothing is left to flush
                if self._followers:
                    self._quiesce("agent")
                self.api.kill(cid)
        except ENGINE_ERRORS:
            pass


def remove_by_label(client: docker.DockerClient, match: dict[str, str]) -> list[str]:
    """Remove containers, then networks and volumes, whose labels include `match`."""
    filters = {"label": [f"{k}={v}" for k, v in match.items()]}
    removed: list[str] = []
    for c in client.api.containers(all=True, filters=filters):
        try:
            client.api.remove_container(c["Id"], force=True, v=True)
            removed.append(f"container {c['Names'][0].lstrip('/')}")
        except NotFound:
            pass
    for n in client.api.networks(filters=filters):
        try:
            client.api.remove_network(n["Id"])
            removed.append(f"network {n['Name']}")
        except NotFound:
            pass
    for v in client.api.volumes(filters=filters).get("Volumes") or []:
        try:
            client.api.remove_volume(v["Name"], force=True)
            removed.append(f"volume {v['Name']}")
        except NotFound:
            pass
    return removed


def _global_v6(ips: tuple[str, ...]) -> list[str]:
    """Host IPv6 addresses a probe can aim at: not loopback (that is the step's own)."""
    out = []
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        if addr.version == 6 and not (addr.is_loopback or addr.is_link_local):
            out.append(ip)
    return out


def _numeric_user(user: str | None) -> tuple[int, int]:
    if not user:
        return 0, 0
    uid, _, gid = user.partition(":")
    if uid.isdigit():
        return int(uid), int(gid) if gid.isdigit() else int(uid)
    return 0, 0
