"""Privilege from inside a step: capabilities, raw and packet sockets, routes, rules,
marks, sysctls, mounts, namespaces, devices, the clock, the kernel (modules, keys,
BPF, perf), setuid binaries, the Docker socket.

Root in the step (uid 0, no capabilities) on the runtime image, which has ip and
iptables, tries each; a user tries setuid binaries and user namespaces. Each must
fail with a permission error (any other error proves nothing and fails the test).
What is on record: the step's empty capability sets and no-new-privileges in its
signed isolation Statement, which `sbx verify` checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest

from sbx.attest.signing.local import KeyPair, load_public_key
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run
from sbx.sandbox.runtime.firewall import rules_v4
from tests.conftest import Internet
from tests.redteam.batches import Cross, cross_batch
from tests.redteam.harness import Run, cached, run_spec

pytestmark = pytest.mark.docker
STEPS = Path(__file__).parent / "steps"
ROOT_NAMES = [
    "privilege/capabilities", "privilege/no-new-privileges-and-seccomp", "privilege/raw-socket",
    "privilege/packet-socket", "privilege/netlink-route-add", "privilege/ip-route-add",
    "privilege/ip-addr-add", "privilege/ip-link-down", "privilege/iptables-flush-nat",
    "privilege/iptables-policy-accept", "privilege/ip6tables-flush", "privilege/so-mark",
    "privilege/sysctl-ip-forward", "privilege/sysctl-route-localnet",
    "privilege/sysctl-kernel-hostname",
    "privilege/write-sys", "privilege/mount-tmpfs", "privilege/unshare-user-namespace",
    "privilege/unshare-network-namespace", "privilege/chroot", "privilege/mknod-device",
    "privilege/sethostname", "privilege/settimeofday", "privilege/kernel-module",
    "privilege/keyring", "privilege/bpf", "privilege/perf-event-open", "privilege/docker-socket",
]
USER_NAMES = ["privilege/setuid-binaries", "privilege/unshare-user-namespace-as-user",
              "privilege/capabilities-as-user"]
COVERS = frozenset(ROOT_NAMES + USER_NAMES)


@pytest.fixture
def root_run(sbx_images: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    def make() -> Run:
        spec = {"name": "privs", "image": sbx_images[0], "user": "0:0",
                "run": "python3 privs.py out/privs.json", "inputs": ["privs.py"],
                "outputs": ["out/"], "egress": {"allow": []},
                "resources": {"timeout": 120, "memory": "256m"}}
        return run_spec(tmp_path_factory.mktemp("redteam-privs") / "ws", spec,
                        {"privs.py": (STEPS / "privs.py").read_bytes()}, None)
    return cached("privs", sbx_images[0], make)  # type: ignore[no-any-return]


@pytest.fixture
def cross(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Cross:
    return cross_batch(internet, docker_client, tmp_path_factory)


def _results(run: Run) -> dict[str, Any]:
    data = json.loads((run.out / "outputs/privs/out/privs.json").read_text())
    assert data["uid"] == 0
    return dict(data["results"])


@pytest.mark.parametrize("name", ROOT_NAMES)
def test_root_without_capabilities_is_refused(root_run: Run, name: str) -> None:
    result = _results(root_run)[name]
    assert result["reached"] is False, f"{name}: {result['detail']}"


@pytest.mark.parametrize("name", USER_NAMES)
def test_a_user_gains_nothing_from_setuid_or_namespaces(cross: Cross, name: str) -> None:
    result = cross.privs_user["results"][name]
    assert cross.privs_user["uid"] == 1000
    assert result["reached"] is False, f"{name}: {result['detail']}"


def test_the_refusals_are_explained_by_signed_evidence(root_run: Run,
                                                       signing_key: KeyPair) -> None:
    assert root_run.result.exit_code == 0, root_run.result.record["reason"]
    report = verify_run(root_run.out, KeyTrust([load_public_key(signing_key.public)]),
                        DEFAULT_POLICY)
    assert report.passed, [(r.check, r.reason) for r in report.failed()]
    iso = json.loads(__import__("base64").b64decode(json.loads(
        (root_run.out / "attestations/privs.isolation.dsse.json").read_text())["payload"]))
    text = json.dumps(iso)
    assert "no-new-privileges" in text and '"ALL"' in text


def test_redirected_traffic_bound_to_a_device_is_logged_and_dropped() -> None:
    """Unit test of the agent rule added for egress/so-bindtodevice-eth0."""
    cfg = {"gateway_ip": "10.222.0.2", "bridge_ip": "10.222.0.1", "nflog_group": 7,
           "relay_port": 15001, "dns_udp_port": 15053, "dns_tcp_port": 15054,
           "own_ip": "10.222.0.3", "proxy_port": 3128}
    mangle = rules_v4(cfg).split("*mangle", 1)[1]
    assert "-A POSTROUTING ! -o lo -d 127.0.0.0/8 -j NFLOG --nflog-group 7" in mangle
    assert "-A POSTROUTING ! -o lo -d 127.0.0.0/8 -j DROP" in mangle
