"""The benchmark's own small internet: a 198.18.x.0/24 network and one server on it.

198.18.0.0/15 is the benchmarking range: never routed on the internet, and not one of
the ranges the gateway refuses, so a step may be allowed to reach it. Every object is
labelled like sbx's own (`sbx.run=<bench id>`), so `sbx gc` finds it if the bench is
killed, and `close()` removes it all.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sbx.sandbox import labels as L
from sbx.sandbox.archive import pack_files
from sbx.sandbox.sandbox import remove_by_label

PAYLOAD = Path(__file__).parent / "payload"
SERVER_NAME = "bench.sbx.test"
HTTP_PORT, HTTPS_PORT = 8080, 8443


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_cert(host: str) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a server certificate for `host`: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("sbx bench CA"))
          .issuer_name(_name("sbx bench CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@dataclass
class Internet:
    """The network, its server and the CA that signed the server's certificate."""

    client: docker.DockerClient
    bench_id: str
    image: str
    network: str = ""
    server_ip: str = ""
    ca_pem: bytes = b""
    _containers: list[str] = field(default_factory=list)

    def labels(self, role: str) -> dict[str, str]:
        """sbx's labels for one of the bench's objects."""
        return L.for_object(self.bench_id, "bench", role)

    def start(self) -> Internet:
        """Create the network and start the server; returns self once it answers."""
        api = self.client.api
        last: Exception | None = None
        for _ in range(20):
            third = secrets.randbelow(250) + 1
            try:
                self.network = api.create_network(
                    f"sbx-{self.bench_id}-internet", driver="bridge",
                    labels=self.labels("network"),
                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                        subnet=f"198.18.{third}.0/24", gateway=f"198.18.{third}.1")]))["Id"]
                break
            except docker.errors.APIError as exc:  # the subnet is taken: try another
                last = exc
        else:
            raise RuntimeError(f"no free 198.18.x.0/24 for the bench network: {last}")
        self.server_ip = f"198.18.{third}.10"
        ca, cert, key = make_ca_and_cert(SERVER_NAME)
        self.ca_pem = ca
        cid = api.create_container(
            self.image, command=["python3", "/srv/server.py", "/srv"],
            name=f"sbx-{self.bench_id}-server", labels=self.labels("server"),
            networking_config=api.create_networking_config({
                self.network: api.create_endpoint_config(aliases=[SERVER_NAME],
                                                         ipv4_address=self.server_ip)}),
            host_config=api.create_host_config(network_mode=self.network))["Id"]
        self._containers.append(cid)
        api.put_archive(cid, "/srv", pack_files({"server.py": (PAYLOAD / "server.py").read_bytes(),
                                           "cert.pem": cert, "key.pem": key}))
        api.start(cid)
        for _ in range(200):
            if b"ready" in api.logs(cid):
                return self
            time.sleep(0.05)
        raise RuntimeError("the bench server did not start: "
                           + api.logs(cid).decode("utf-8", "replace")[-500:])

    def run_plain(self, command: list[str], files: dict[str, bytes], timeout: float = 600,
                  env: dict[str, str] | None = None) -> str:
        """Run a container on the plain network (no sandbox): the baseline. Returns stdout."""
        api = self.client.api
        cid = api.create_container(
            self.image, command=command, working_dir="/workspace", environment=env,
            labels=self.labels("baseline"),
            host_config=api.create_host_config(network_mode=self.network))["Id"]
        self._containers.append(cid)
        try:
            api.put_archive(cid, "/workspace", pack_files(files))
            api.start(cid)
            code = api.wait(cid, timeout=timeout)["StatusCode"]
            out: bytes = api.logs(cid, stdout=True, stderr=False)
            if code != 0:
                err = api.logs(cid, stdout=False, stderr=True).decode("utf-8", "replace")
                raise RuntimeError(f"baseline container exited {code}: {err[-500:]}")
            return out.decode("utf-8", "replace")
        finally:
            api.remove_container(cid, force=True)
            self._containers.remove(cid)

    def close(self) -> None:
        """Remove every object the bench created, whatever happened."""
        remove_by_label(self.client, {L.RUN: self.bench_id})

    def __enter__(self) -> Internet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()
