"""What a run takes from the host: the addresses that lead to it, and its egress network."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import docker
import psutil

from sbx.sandbox import labels
from sbx.sandbox.engine import ENGINE_ERRORS
from sbx.sandbox.network import create_egress_network

# The step label of the run's own objects (its egress network): not a step name, since
# those begin with a letter or digit, so no step's clean-up sweeps it away.
RUN_SCOPE = "_run"


def run_egress_name(run_id: str) -> str:
    """The name of the run's own egress network."""
    return labels.object_name(run_id, RUN_SCOPE, "egress")


def create_run_egress(client: docker.DockerClient, run_id: str) -> str:
    """One egress network for all the run's gateways, not one per step.

    ICC is off on it, so no two gateways exchange a packet there (as on a shared
    `--egress-network`), and each gateway refuses every internal address anyway. One
    bridge, and one set of engine iptables rules, instead of one per step: the engine
    serializes network creation, which made many steps slow to start, and its default
    address pools hold about 30 such networks, too few for a 64-step pipeline.
    """
    name = run_egress_name(run_id)
    create_egress_network(client, name, labels.for_object(run_id, RUN_SCOPE, "network"))
    return name


class RunEgress:
    """The run's egress network, made in the background while the sandboxes make their
    own networks: `wait` is what a gateway calls before it is created on it."""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        self._client, self._run_id = client, run_id
        self._made: Future[str] = Future()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Begin creating the network."""
        def make() -> None:
            try:
                self._made.set_result(create_run_egress(self._client, self._run_id))
            except BaseException as exc:  # handed to every gateway that waits for it
                self._made.set_exception(exc)

        self._spawn(make)

    def remove(self) -> None:
        """Begin removing the network (once no container is attached to it); whatever
        fails here is left to the run's final clean-up by label."""
        def remove() -> None:
            try:
                self._client.api.remove_network(run_egress_name(self._run_id))
            except ENGINE_ERRORS:  # the engine gone too: the final clean-up says so
                pass

        self._spawn(remove)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name="sbx-run-egress", daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self) -> str:
        """The network's name once it exists; raises what its creation raised."""
        return self._made.result()

    def join(self) -> None:
        """Return once creation and removal have ended, so a clean-up after them finds
        whatever is left."""
        for thread in self._threads:
            thread.join()


def host_addresses(client: docker.DockerClient) -> tuple[str, ...]:
    """Addresses that lead to the host: its interfaces and every Docker bridge gateway."""
    found: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name in ("AF_INET", "AF_INET6"):
                found.add(a.address.split("%")[0])
    for net in client.api.networks():
        for cfg in (net.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                found.add(cfg["Gateway"])
    return tuple(sorted(found))
