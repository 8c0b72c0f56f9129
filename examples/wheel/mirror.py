"""A package mirror for the wheel example, and the example's one-command runner.

    python examples/wheel/mirror.py [sbx run options...]

starts the mirror (a container on its own Docker network answering as
mirror.sbx.example:8080), runs `sbx run examples/wheel/pipeline.yaml` with that
network as the way out, and removes the mirror again, whatever happened.
`mirror.py start` starts it and prints the network to pass as --egress-network
(or SBX_EGRESS_NETWORK); `mirror.py stop` removes it (so does `sbx gc`).

The mirror's network is in 198.19.0.0/16 (the benchmarking range) because sbx's
gateway refuses private and loopback destinations even for an allowed name: the
mirror stands in for a public one. Its objects carry sbx's labels, so `sbx gc`
removes them if this script is killed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import secrets
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError

from sbx.sandbox import labels as L
from sbx.sandbox.archive import pack_files

HERE = Path(__file__).resolve().parent
PACKAGES = HERE / "packages"
MIRROR_NAME = "mirror.sbx.example"
MIRROR_PORT = 8080
IMAGE = "sbx-step:bookworm"


@dataclass(frozen=True)
class Mirror:
    """A running mirror: the network steps' gateways reach it through."""

    network: str
    ip: str
    files: dict[str, str]  # file name -> sha256


def sdist(name: str, version: str = "1.0") -> bytes:
    """A source tarball of packages/<name>, byte-for-byte reproducible."""
    buf = io.BytesIO()
    root = PACKAGES / name
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in root.rglob("*") if "__pycache__" not in p.parts):
            info = tar.gettarinfo(str(path), f"{name}-{version}/{path.relative_to(root)}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_file():
                tar.addfile(info, io.BytesIO(path.read_bytes()))
            else:
                tar.addfile(info)
    # gzip stamps the current time into its header unless told otherwise.
    return gzip.compress(buf.getvalue(), mtime=0)


def _content() -> dict[str, bytes]:
    files = {f"{n}-1.0.tar.gz": sdist(n) for n in ("greet", "shout")}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(files.items()))
    return {**files, "SHA256SUMS": sums.encode()}


ROLE = "example-mirror"


def start_mirror(client: docker.DockerClient) -> Mirror:
    """Start the mirror and leave it running; `stop_mirrors` removes it."""
    run_id = "example-wheel-" + secrets.token_hex(4)
    # sbx.owner: `sbx gc` (and the tests' leftover check) leave a live mirror alone.
    labels = {"sbx.managed": "1", "sbx.run": run_id, "sbx.role": ROLE, L.OWNER: L.owner()}
    api = client.api
    net_id = cid = None
    try:
        for _ in range(16):
            third = 100 + secrets.randbelow(150)
            subnet = f"198.19.{third}.0/24"
            try:
                net_id = api.create_network(
                    f"sbx-{run_id}", driver="bridge", labels=labels,
                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                        subnet=subnet, gateway=f"198.19.{third}.1")]))["Id"]
                break
            except APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
        if net_id is None:
            raise RuntimeError("no free 198.19.x.0/24 subnet for the mirror")
        ip = f"198.19.{third}.10"
        content = _content()
        cid = api.create_container(
            IMAGE, name=f"sbx-{run_id}-mirror", labels=labels, user="65534:65534",
            command=["python3", "-u", "-m", "http.server", str(MIRROR_PORT), "--directory", "/srv",
                     "--bind", "0.0.0.0"],
            host_config=api.create_host_config(cap_drop=["ALL"]),
            networking_config=api.create_networking_config({net_id: api.create_endpoint_config(
                aliases=[MIRROR_NAME], ipv4_address=ip)}))["Id"]
        api.put_archive(cid, "/", pack_files(content, prefix="srv"))
        api.start(cid)
        _wait_until_serving(api, cid)
    except BaseException:
        if cid is not None:
            api.remove_container(cid, force=True)
        if net_id is not None:
            api.remove_network(net_id)
        raise
    return Mirror(net_id, ip, {n: hashlib.sha256(d).hexdigest() for n, d in content.items()})


def stop_mirrors(client: docker.DockerClient) -> None:
    """Remove every example mirror's container and network."""
    flt = {"label": [f"sbx.role={ROLE}"]}
    for c in client.api.containers(all=True, filters=flt):
        client.api.remove_container(c["Id"], force=True)
    for n in client.api.networks(filters=flt):
        client.api.remove_network(n["Id"])


@contextmanager
def running_mirror(client: docker.DockerClient) -> Iterator[Mirror]:
    """A mirror for the duration of the block."""
    mirror = start_mirror(client)
    try:
        yield mirror
    finally:
        flt = {"label": [f"sbx.role={ROLE}"], "network": [mirror.network]}
        for c in client.api.containers(all=True, filters=flt):
            client.api.remove_container(c["Id"], force=True)
        client.api.remove_network(mirror.network)


def _wait_until_serving(api: docker.APIClient, cid: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        logs = api.logs(cid, stdout=True, stderr=True)
        if b"Serving HTTP" in logs:
            return
        if api.inspect_container(cid)["State"]["Status"] == "exited":
            raise RuntimeError(f"the mirror exited: {logs.decode(errors='replace')}")
        time.sleep(0.1)
    raise RuntimeError("the mirror did not start in 20 s")


def main(argv: list[str]) -> int:
    """Start the mirror, run the pipeline through it, stop the mirror."""
    from sbx.pipelines.cli import main as sbx_main
    from sbx.sandbox import engine, images

    client = engine.connect()
    images.ensure_step_image(client)
    if argv[:1] == ["start"]:
        print(start_mirror(client).network)
        return 0
    if argv[:1] == ["stop"]:
        stop_mirrors(client)
        return 0
    with running_mirror(client) as mirror:
        return sbx_main(["run", str(HERE / "pipeline.yaml"), "--egress-network",
                         mirror.network, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
