"""The sandbox a user would build by hand: the step on an internal network, Squid its only
way out (the way GitHub's agent firewall does it), no probes, no evidence.

One no-op run, timed as a whole: create an internal network and an egress network,
start Debian's `squid` (an image built here with mmdebstrap, like sbx's own) on the
egress network with an allowlist, connect it to the internal network, wait until it
accepts, run the step container there without capabilities, then remove everything.
Every object carries `sbx.run=<id>` labels, so `sbx gc` finds what a killed bench leaves.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker

from bench.measure import BenchError
from sbx.sandbox import labels as L
from sbx.sandbox.archive import pack_files
from sbx.sandbox.image_build import _build_debian_image, _DebianRecipe, _image_labels
from sbx.sandbox.sandbox import remove_by_label

_RECIPE = _DebianRecipe("sbx-bench-squid", ("squid",),
                        ("squid", "-N", "-f", "/etc/squid/squid.conf"))
SQUID_IMAGE = f"sbx-bench-squid:{_RECIPE.digest}"
SQUID_PORT = 3128


def squid_conf(allow: tuple[str, ...]) -> bytes:
    """An allowlist proxy: the listed domains on web ports, nothing else, no cache."""
    return "\n".join([
        f"http_port {SQUID_PORT}",
        f"acl allowed dstdomain {' '.join(allow)}",
        "acl web_ports port 80 443 8080 8443",
        "acl CONNECT method CONNECT",
        "http_access deny !web_ports",
        "http_access allow allowed",
        "http_access deny all",
        "cache deny all",
        "pid_filename none",
        "shutdown_lifetime 0 seconds",
        "",
    ]).encode()


def ensure_image(client: docker.DockerClient, log: Callable[[str], None]) -> str:
    """Build the Squid image from Debian packages if this engine lacks it."""
    if _image_labels(client, SQUID_IMAGE) is None:
        log(f"building {SQUID_IMAGE} (Debian squid, mmdebstrap)")
        _build_debian_image(client, _RECIPE, SQUID_IMAGE, log)
    return SQUID_IMAGE


def _wait_accepting(ip: str, port: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"squid did not accept on {ip}:{port} within {limit:.0f} s") from None
            time.sleep(0.02)


def squid_noop(client: docker.DockerClient, step_image: str,
               allow: tuple[str, ...] = ("pypi.org",)) -> float:
    """Wall seconds of one hand-built Squid sandbox running `true`, removal included."""
    api = client.api
    run_id = "bench-squid-" + secrets.token_hex(4)
    labels = {L.RUN: run_id}
    began = time.perf_counter()
    try:
        internal = api.create_network(f"{run_id}-int", driver="bridge", internal=True,
                                      labels=labels)["Id"]
        egress = api.create_network(f"{run_id}-out", driver="bridge", labels=labels)["Id"]
        squid = api.create_container(
            SQUID_IMAGE, name=f"{run_id}-squid", labels=labels,
            host_config=api.create_host_config(network_mode=f"{run_id}-out"))["Id"]
        api.put_archive(squid, "/etc/squid", pack_files({"squid.conf": squid_conf(allow)}))
        api.connect_container_to_network(squid, internal)
        api.start(squid)
        ip = api.inspect_container(squid)["NetworkSettings"]["Networks"][f"{run_id}-out"][
            "IPAddress"]
        _wait_accepting(ip, SQUID_PORT)
        proxy = f"http://{run_id}-squid:{SQUID_PORT}"
        step = api.create_container(
            step_image, command=["true"], labels=labels,
            environment={"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy},
            host_config=api.create_host_config(network_mode=f"{run_id}-int",
                                               cap_drop=["ALL"]))["Id"]
        api.start(step)
        code = api.wait(step, timeout=120)["StatusCode"]
        if code != 0:
            raise BenchError(f"the step in the Squid sandbox exited {code}")
        api.remove_container(step, force=True)
        api.remove_container(squid, force=True)
        api.remove_network(internal)
        api.remove_network(egress)
        return time.perf_counter() - began
    finally:
        remove_by_label(client, labels)


# The same sandbox as a user would script it with the docker CLI: a process from start to
# exit, as `sbx run` is (squid_noop runs inside the bench's own process, so it pays for no
# program start at all).
_SCRIPT = r"""
set -eu
R=$1; IMG=$2; STEP=$3; CONF=$4
docker network create --label sbx.run="$R" --internal "$R-int" >/dev/null
docker network create --label sbx.run="$R" "$R-out" >/dev/null
docker create --label sbx.run="$R" --name "$R-squid" --network "$R-out" "$IMG" >/dev/null
docker cp "$CONF" "$R-squid:/etc/squid/squid.conf"
docker network connect "$R-int" "$R-squid"
docker start "$R-squid" >/dev/null
ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$R-out\").IPAddress}}" "$R-squid")
until (exec 3<>"/dev/tcp/$ip/3128") 2>/dev/null; do sleep 0.02; done
docker run --rm --label sbx.run="$R" --network "$R-int" --cap-drop ALL \
  -e HTTP_PROXY="http://$R-squid:3128" -e HTTPS_PROXY="http://$R-squid:3128" "$STEP" true
docker rm -f "$R-squid" >/dev/null
docker network rm "$R-int" "$R-out" >/dev/null
"""


def squid_script(client: docker.DockerClient, step_image: str, work: Path,
                 allow: tuple[str, ...] = ("pypi.org",)) -> float:
    """Wall seconds of the same Squid sandbox built by a bash script of docker commands."""
    run_id = "bench-squid-" + secrets.token_hex(4)
    conf = work / f"{run_id}.conf"
    conf.write_bytes(squid_conf(allow))
    began = time.perf_counter()
    try:
        proc = subprocess.run(["bash", "-c", _SCRIPT, "squid-sandbox", run_id, SQUID_IMAGE,
                               step_image, str(conf)], capture_output=True, text=True,
                              timeout=300, check=False)
        took = time.perf_counter() - began
        if proc.returncode != 0:
            raise BenchError(f"the scripted Squid sandbox failed: {proc.stderr[-400:]}")
        return took
    finally:
        remove_by_label(client, {L.RUN: run_id})
        conf.unlink(missing_ok=True)


def squid_download(client: docker.DockerClient, step_image: str, internet_network: str,
                   server_name: str, command: list[str], files: dict[str, bytes],
                   timeout: float = 600) -> str:
    """The step's stdout after running `command` in the hand-built Squid sandbox, with Squid
    on the bench's internet network allowing `server_name` and the step told its address
    in $BENCH_PROXY (download.py then asks it for the absolute URL)."""
    api = client.api
    run_id = "bench-squid-" + secrets.token_hex(4)
    labels = {L.RUN: run_id}
    try:
        internal = api.create_network(f"{run_id}-int", driver="bridge", internal=True,
                                      labels=labels)["Id"]
        squid = api.create_container(
            SQUID_IMAGE, name=f"{run_id}-squid", labels=labels,
            host_config=api.create_host_config(network_mode=internet_network))["Id"]
        api.put_archive(squid, "/etc/squid", pack_files({"squid.conf": squid_conf(
            (server_name,))}))
        api.connect_container_to_network(squid, internal)
        api.start(squid)
        ip = api.inspect_container(squid)["NetworkSettings"]["Networks"][f"{run_id}-int"][
            "IPAddress"]
        _wait_accepting(ip, SQUID_PORT)
        step = api.create_container(
            step_image, command=command, labels=labels, working_dir="/workspace",
            environment={"BENCH_PROXY": f"{ip}:{SQUID_PORT}"},
            host_config=api.create_host_config(network_mode=f"{run_id}-int",
                                               cap_drop=["ALL"]))["Id"]
        api.put_archive(step, "/workspace", pack_files(files))
        api.start(step)
        code = api.wait(step, timeout=timeout)["StatusCode"]
        if code != 0:
            err = api.logs(step, stdout=False, stderr=True).decode("utf-8", "replace")
            raise BenchError(f"the step in the Squid sandbox exited {code}: {err[-500:]}")
        out: bytes = api.logs(step, stdout=True, stderr=False)
        return out.decode("utf-8", "replace")
    finally:
        remove_by_label(client, labels)
