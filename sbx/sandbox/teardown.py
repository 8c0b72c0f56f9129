"""Stop a step's runtime once its last events are in, then remove every object."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import docker
from docker.errors import NotFound

from sbx.sandbox import labels as L
from sbx.sandbox.engine import ENGINE_ERRORS, is_unreachable
from sbx.sandbox.objects import LOG_LIMIT
from sbx.sandbox.recorder import Recorder


class Teardown(Recorder):
    """`stop()` the gateway and agent, `close()` to remove everything; both repeatable."""

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

    def close(self, containers_gone: Callable[[], None] | None = None) -> None:
        """Remove every object of this sandbox; safe to call twice and after any failure.

        `containers_gone` is called once its containers are removed, before its networks
        are: from then on nothing of it is attached to a network it shares (the run's
        egress network), so that one can go at the same time."""
        if self._removed:
            return
        self._removed = True
        self.drop_probe_process()
        self.stop()

        def remove(role: str) -> None:
            try:
                self._remove(role)
            except ENGINE_ERRORS as exc:
                if not is_unreachable(exc):
                    self.faults.append(f"could not remove the {role}: {exc}")

        with ThreadPoolExecutor(max_workers=4) as pool:
            step_gone = pool.submit(remove, "step")
            # Their diagnostics (stderr), saved here rather than in `stop`: the verdict
            # does not wait for them, and the engine has finished their exits by now.
            list(pool.map(self._save_runtime_log, ("gateway", "agent")))
            list(pool.map(remove, ("agent", "gateway")))
            step_gone.result()
        if containers_gone is not None:
            containers_gone()
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

    def _stop_runtime(self, role: str) -> None:
        cid = self.containers.get(role)
        if cid is None:
            return
        try:
            if role == "agent":
                # The counters are the kernel's, complete once the step has exited; an exec
                # needs the agent's container, so they are read first (begun as the step
                # exited: `read_counters_soon`). Nothing is waited for after them: the
                # step's last drops were queued in the agent's NFLOG socket as they
                # happened, and on SIGTERM the agent writes every queued record before its
                # final heartbeat.
                reading, self._counters_reading = self._counters_reading, None
                if reading is not None:
                    reading.join()
                else:
                    self.read_firewall_counters()
            # SIGTERM lets the gateway report the bytes of open flows.
            self._terminate(role, cid)
        except ENGINE_ERRORS:
            pass

    def _terminate(self, role: str, cid: str, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds, as `docker stop` does; but done
        once the process has exited (its output stream ended: every line is in), not
        once the engine has also torn the container down, which `close()` waits for."""
        follower = self._follower_of.get(role)
        if follower is None:
            self.api.stop(cid, timeout=int(grace))
            return
        self.api.kill(cid, signal="SIGTERM")
        follower.join(grace)
        if follower.is_alive():
            self.api.kill(cid)

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

