"""One step's sandbox on a Docker engine: create, prove, run, copy out, remove.

Objects, all labelled with the run id: the internal step network, the egress
gateway, the namespace agent, a short-lived probe container and the step
container. `close()` removes every one of them whatever happened before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import NotFound

from sbx.errors import EnvironmentFailure
from sbx.sandbox import storage, trust
from sbx.sandbox.archive import ArchiveError, OutputFile, pack_inputs, unpack_output
from sbx.sandbox.config import SandboxFacts
from sbx.sandbox.engine import ENGINE_ERRORS
from sbx.sandbox.objects import (
    LOG_LIMIT,
    LOG_TRUNCATED,
    PROXY_PORT,
    STEP_SECURITY_OPT,
    SandboxFailure,
    utcnow,
)
from sbx.sandbox.probing import Probing
from sbx.sandbox.startup import RuntimeStart
from sbx.sandbox.teardown import Teardown, remove_by_label

__all__ = ["LOG_LIMIT", "Sandbox", "SandboxFailure", "remove_by_label", "utcnow"]


class Sandbox(Teardown, Probing, RuntimeStart):
    """The Docker objects of one step and their lifecycle.

    The parts: `objects` (state, container creation), `startup` (gateway and agent),
    `probing` (fail-closed probes), the step itself (here) and `teardown`.
    """

    def create_step(self) -> str:
        """Create the step's container and copy its inputs in; it is not started.

        Done ahead of the start as soon as the inputs are known (while the probes run,
        or while the steps it needs stop): a created container runs nothing
        and is on no network of its own (it joins the agent's namespace when it starts),
        so the probes prove the namespace it will run in either way. Idempotent: a second
        call returns the first call's container.
        """
        if "step" in self.containers:
            return self.containers["step"]
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
        bundle = trust.bundle_path(step.workdir, step.read_only_rootfs) if self.run_ca else None
        if bundle is not None:
            env.update(trust.ca_env(bundle))
        env.update(dict(step.secrets))
        uid, gid = _numeric_user(step.user)
        began = time.monotonic()
        mounts = []
        if step.read_only_rootfs:
            vol = self.api.create_volume(name=self._name("work"), labels=self._labels("volume"))
            mounts.append(docker.types.Mount(step.workdir, vol["Name"], type="volume"))
        def create(storage_opt: dict[str, str] | None) -> str:
            return self._create(
                "step", image=step.image_id or step.image, command=list(step.command),
                environment=env,
                working_dir=step.workdir, user=step.user or "",
                host_config=self.api.create_host_config(
                    network_mode=f"container:{self.containers['agent']}",
                    cap_drop=["ALL"], security_opt=list(STEP_SECURITY_OPT), privileged=False,
                    read_only=step.read_only_rootfs, pids_limit=step.limits.pids,
                    mem_limit=step.limits.memory, memswap_limit=step.limits.memory,
                    nano_cpus=int(step.limits.cpus * 1e9), ipc_mode="private", init=True,
                    tmpfs={p: "rw,nosuid,nodev,size=268435456" for p in step.tmpfs},
                    mounts=mounts, storage_opt=storage_opt))

        # A hard disk bound where the storage driver has one, else a measured one.
        disk = step.limits.disk
        engine = str(getattr(self.api, "base_url", ""))
        cid = None
        if not storage.refused_before(engine):
            try:
                cid = create({"size": str(disk)})
                self.storage = storage.record(disk, storage.HARD, step.read_only_rootfs)
            except EnvironmentFailure as exc:
                if not storage.unsupported(str(exc)):
                    raise
                storage.remember_refusal(engine)
        if cid is None:
            cid = create(None)
            self.storage = storage.record(disk, storage.MEASURED, step.read_only_rootfs)
        began = self._add_time("step_create", began)
        if step.read_only_rootfs:
            archive = pack_inputs(step.inputs, ".", uid, gid)
            self.api.put_archive(cid, step.workdir, archive)
        else:
            self.api.put_archive(cid, "/", pack_inputs(step.inputs, step.workdir, uid, gid))
        if bundle is not None and self.run_ca is not None:
            trust.install_bundle(self.api, cid, bundle, self.run_ca[0], uid, gid)
        self._add_time("copy_in", began)
        return cid

    def run_step(self, log_path: Path, mask: Callable[[bytes], bytes]) -> tuple[str, int | None]:
        """Run the command (creating its container first unless `create_step` did);
        returns (status, exit code). Logs stream to `log_path`."""
        step = self.step
        if self.recorder_failed():
            raise SandboxFailure("not run: " + self.faults[-1])
        cid = self.create_step()
        watch = storage.Watch(self.api, cid, step.limits.disk, self.storage) \
            if self.storage["enforced_by"] == storage.MEASURED else None
        began = time.monotonic()
        output = self._attach(cid, stderr=True)
        self.api.start(cid)
        if watch is not None:
            watch.start()
        if self.recorder_failed():  # failed between the check above and the start
            self.api.kill(cid)
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
        finally:
            if watch is not None:
                watch.stop()
        self.read_counters_soon()  # the step has exited: its firewall counters are final
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
        """The step image's id (content digest) as the engine knows it: the id it was
        resolved to (sbx.sandbox.pull), which must still be there, or the reference's."""
        try:
            return str(self.api.inspect_image(self.step.image_id or self.step.image)["Id"])
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

def _numeric_user(user: str | None) -> tuple[int, int]:
    if not user:
        return 0, 0
    uid, _, gid = user.partition(":")
    if uid.isdigit():
        return int(uid), int(gid) if gid.isdigit() else int(uid)
    return 0, 0
