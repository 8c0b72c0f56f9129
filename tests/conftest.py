"""Shared fixtures: the Docker engine, sbx's images and a simulated internet.

The "internet" is a Docker network on 198.18.x.0/24 (the benchmarking range,
never routed on the real internet) holding test hosts this suite starts itself.
Nothing a test does sends traffic off this machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from docker.errors import DockerException

from sbx.attest.signing.local import KeyPair, keygen
from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run.records import parse_time
from sbx.pipelines.run.runner import RunOptions, RunResult, run_file
from sbx.sandbox import images
from sbx.sandbox import labels as L
from sbx.sandbox.archive import pack_files

TEST_LABEL = "sbx.test"
SERVER_SCRIPT = Path(__file__).parent / "sandbox" / "servers" / "canary.py"


def _engine_error() -> str | None:
    """Why no Docker engine answers, or None. Retried: one slow ping on a loaded machine
    must not turn the whole integration suite into skips."""
    error = ""
    for attempt in range(3):
        try:
            docker.from_env(timeout=10).ping()
            return None
        except DockerException as exc:
            error = str(exc)
            time.sleep(1 + attempt)
    return error


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("docker" in item.keywords for item in items):
        return
    error = _engine_error()
    if error is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        # CI always has an engine: skipping would report a green run that tested nothing.
        raise pytest.UsageError(f"CI=true but no Docker engine answers ({error}); the "
                                "integration tests need one")
    reason = f"no Docker engine answers ({error}); start dockerd to run the integration tests"
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyPair]:
    """One Ed25519 key for the session, via SBX_SIGNING_KEY as a user would set it, so
    no test writes a per-project key into the working tree."""
    pair = keygen(tmp_path_factory.mktemp("keys"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBX_SIGNING_KEY", str(pair.private))
        yield pair


@pytest.fixture
def sigstore_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Sigstore-compatible instance on loopback (OIDC, Fulcio-like CA, Rekor-like log)."""
    from fakes.sigstore_instance import SigstoreInstance

    with SigstoreInstance(tmp_path / "sigstore") as instance:
        for name, value in instance.environ.items():
            monkeypatch.setenv(name, value)
        yield instance


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    return docker.from_env(timeout=120)


@pytest.fixture(scope="session")
def sbx_images(docker_client: docker.DockerClient) -> tuple[str, str]:
    """(runtime image, step image), built offline on first use."""
    runtime = images.ensure_runtime_image(docker_client)
    step = images.ensure_step_image(docker_client)
    return runtime, step


@dataclass
class Host:
    """A test host on the simulated internet."""

    name: str
    ip: str
    container_id: str
    client: docker.DockerClient

    def hits(self, since: dt.datetime) -> list[dict[str, Any]]:
        """What reached this host since `since`, one dict per request or datagram."""
        raw = self.client.api.logs(self.container_id, stdout=True, stderr=False)
        hits = []
        for line in raw.decode().splitlines():
            event = json.loads(line)
            if event.get("kind") != "ready" and parse_time(event["time"]) >= since:
                hits.append(event)
        return hits


@dataclass
class Internet:
    """The network the gateway reaches the outside through, and its hosts."""

    network: str
    subnet: str
    bridge_ip: str
    web: Host
    other: Host
    ca_pem: bytes


def _cert(name: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
          also: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """A leaf for `name` (and every name in `also`) signed by `ca`: PEM cert and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dict.fromkeys((name, *also))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sbx test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="session")
def internet(docker_client: docker.DockerClient, sbx_images: tuple[str, str]) -> Iterator[Internet]:
    """A 198.18.x.0/24 network with two hosts: web.sbx.test and other.sbx.test."""
    api = docker_client.api
    tag = secrets.token_hex(4)
    labels = {TEST_LABEL: tag}
    ca_key, ca = _ca()
    net_id = None
    hosts: list[Host] = []
    try:
        for attempt in range(20):
            third = secrets.randbelow(250) + 1
            subnet = f"198.18.{third}.0/24"
            try:
                net_id = api.create_network(
                    f"sbx-test-{tag}-internet", driver="bridge", labels=labels,
                    # Gateways get addresses from the upper half; the test hosts and sinks
                    # have fixed ones in the lower half, so the two never collide.
                    ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
                        subnet=subnet, iprange=f"198.18.{third}.128/25",
                        gateway=f"198.18.{third}.1")]))["Id"]
                break
            except docker.errors.APIError:
                if attempt == 19:
                    raise
        assert net_id is not None
        for index, name in enumerate(("web", "other"), start=10):
            fqdn = f"{name}.sbx.test"
            ip = f"198.18.{third}.{index}"
            cert, key = _cert(fqdn, ca_key, ca)
            cid = api.create_container(
                sbx_images[1], command=["python3", "/srv/canary.py"], name=f"sbx-test-{tag}-{name}",
                environment={"SERVER_NAME": name}, labels=labels,
                networking_config=api.create_networking_config({
                    net_id: api.create_endpoint_config(aliases=[fqdn], ipv4_address=ip)}),
                host_config=api.create_host_config(network_mode=net_id))["Id"]
            hosts.append(Host(fqdn, ip, cid, docker_client))
            api.put_archive(cid, "/srv", pack_files({"canary.py": SERVER_SCRIPT.read_bytes(),
                                                "cert.pem": cert, "key.pem": key}))
            api.start(cid)
        for host in hosts:
            for _ in range(100):
                if b'"ready"' in api.logs(host.container_id):
                    break
                time.sleep(0.05)
        yield Internet(network=net_id, subnet=subnet, bridge_ip=f"198.18.{third}.1",
                       web=hosts[0], other=hosts[1],
                       ca_pem=ca.public_bytes(serialization.Encoding.PEM))
    finally:
        for host in hosts:
            api.remove_container(host.container_id, force=True)
        if net_id is not None:
            api.remove_network(net_id)


@dataclass
class StepRun:
    """A finished run and its records, read back from disk."""

    result: RunResult
    events: list[dict[str, Any]]
    started: dt.datetime

    @property
    def out(self) -> Path:
        return self.result.out_dir

    @property
    def step(self) -> dict[str, Any]:
        """The run's only step record."""
        return only_step(self.result.record)

    def step_events(self) -> list[dict[str, Any]]:
        """Events after the probes, from the step's own traffic."""
        begin = self.step["step_started"]
        return [e for e in self.events if begin and parse_time(e["time"]) >= parse_time(begin)]

    def output(self, rel: str) -> str:
        return (self.out / "outputs" / self.step["name"] / rel).read_text()


def only_step(record: dict[str, Any]) -> dict[str, Any]:
    """The step record of a one-step run's run.json."""
    steps = list(record["steps"].values())
    assert len(steps) == 1, f"expected one step, got {[s['name'] for s in steps]}"
    return steps[0]


def run_spec(root: Path, spec: dict[str, Any], files: dict[str, bytes] | None = None,
             egress_network: str | None = None) -> StepRun:
    """Write a step file from a dict into `root`/ws with `files` beside it, run it into
    `root`/run, and read its records back."""
    workspace = root / "ws"
    workspace.mkdir(exist_ok=True)
    for name, data in (files or {}).items():
        (workspace / name).write_bytes(data)
    path = workspace / "step.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    started = dt.datetime.now(dt.UTC)
    result = run_file(path, RunOptions(out_dir=root / "run", egress_network=egress_network),
                      LiveView(_console(), quiet=False))
    events = [json.loads(line) for line in
              (result.out_dir / "events.jsonl").read_text().splitlines()]
    return StepRun(result, events, started)


@pytest.fixture
def run_step(tmp_path: Path, internet: Internet) -> Any:
    """Write a step file from a dict into a fresh workspace and run it against the internet."""

    def run(spec: dict[str, Any], files: dict[str, bytes] | None = None,
            egress_network: str | None = "internet") -> StepRun:
        net = internet.network if egress_network == "internet" else egress_network
        return run_spec(tmp_path, spec, files, net)

    return run


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True, force_terminal=False, width=120)


def _sbx_objects(client: docker.DockerClient) -> dict[str, tuple[str, dict[str, str]]]:
    """sbx's containers and networks on the engine: id -> (name, labels)."""
    found = {c["Id"]: (c["Names"][0], c.get("Labels") or {})
             for c in client.api.containers(all=True, filters={"label": L.RUN})}
    found.update({n["Id"]: (n["Name"], n.get("Labels") or {})
                  for n in client.api.networks(filters={"label": L.RUN})})
    return found


def _made_here(labels: dict[str, str]) -> bool:
    """Whether this test process (or an sbx it started) made the object. The engine is
    shared: another session's live run is not this test's leftover."""
    owner = labels.get(L.OWNER, "")
    if not owner:
        return False  # not made by sbx (a test's own helper objects are labelled otherwise)
    if owner == L.owner() or not L.owner_alive(owner):
        return True  # ours, or left by a process that is gone (a killed sbx of this test)
    try:
        creator = psutil.Process(int(owner.split("/")[1]))
        return os.getpid() in {p.pid for p in creator.parents()}
    except (psutil.Error, ValueError, IndexError):
        return True


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every Docker test must leave no sbx containers or networks behind."""
    if "docker" not in request.keywords:
        yield
        return
    client = docker.from_env(timeout=30)
    before = set(_sbx_objects(client))
    yield
    left = [name for oid, (name, labels) in _sbx_objects(client).items()
            if oid not in before and _made_here(labels)]
    assert not left, f"left behind: {left}"


@pytest.fixture(scope="session")
def registry(docker_client: docker.DockerClient, sbx_images: tuple[str, str]) -> Iterator[Any]:
    """A real registry (Debian's docker-registry) without auth, at ``registry.host``."""
    from registry import Registry

    reg = Registry(docker_client).start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def auth_registry(docker_client: docker.DockerClient,
                  sbx_images: tuple[str, str]) -> Iterator[Any]:
    """A real registry with htpasswd auth (user and password in tests/registry.py)."""
    from registry import Registry

    reg = Registry(docker_client, auth=True).start()
    try:
        yield reg
    finally:
        reg.close()
