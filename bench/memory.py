"""Peak memory of a sandbox's gateway and agent, read from the host while a step runs.

sbx runs as root in the host's PID namespace, so a container's processes are visible:
`docker inspect` gives the main process, /proc/<pid>/status its VmHWM (the peak
resident set the kernel has seen for it). The figure for a role is the sum of VmHWM
over the container's processes, the largest seen while sampling.
"""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import psutil
from docker.errors import DockerException

from sbx.sandbox import labels as L

ROLES = ("gateway", "agent")


def vm_hwm(pid: int) -> int:
    """Peak resident set of one process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_hwm(pid: int) -> int:
    """VmHWM summed over a process and its descendants."""
    try:
        pids = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        pids = [pid]
    return sum(vm_hwm(p) for p in pids)


class MemorySampler:
    """Samples, in a thread, every sandbox whose step is named `step`; keeps the peaks."""

    def __init__(self, client: docker.DockerClient, step: str, interval: float = 0.1) -> None:
        self.client = client
        self.step = step
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(ROLES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._pids: dict[str, int] = {}

    def _sample(self) -> None:
        filters = {"label": [f"{L.STEP}={self.step}", f"{L.MANAGED}=1"]}
        for c in self.client.api.containers(filters=filters):
            role = c["Labels"].get(L.ROLE, "")
            if role not in ROLES:
                continue
            pid = self._pids.get(c["Id"])
            if pid is None:
                try:
                    pid = int(self.client.api.inspect_container(c["Id"])["State"]["Pid"])
                except DockerException:
                    continue
                self._pids[c["Id"]] = pid
            if pid:
                self.peak[role] = max(self.peak[role], tree_hwm(pid))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except DockerException:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
