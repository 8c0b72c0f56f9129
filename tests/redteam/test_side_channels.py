"""Side channels between two steps running at the same time: shared files (/tmp,
/dev/shm, the workspace, the victim's own volume), SysV IPC, abstract and path unix
sockets, the other step's processes, its listeners, the host name.

Each check runs in the attacker step while the victim step holds the resource. A
channel that does not exist leaves nothing to record in events; what is on record
is the sandbox that rules it out: each step's own network, containers and
namespaces, in its signed isolation Statement, and `sbx verify`'s isolation checks.
"""

from __future__ import annotations

import docker
import pytest

from sbx.attest.signing.local import KeyPair, load_public_key
from sbx.attest.verify.model import Check, Status
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run
from tests.conftest import Internet
from tests.redteam.batches import Cross, cross_batch

pytestmark = pytest.mark.docker

NAMES = [
    "side-channel/shared-files-anywhere", "side-channel/shared-tmp",
    "side-channel/shared-dev-shm", "side-channel/shared-workspace",
    "side-channel/sysv-shared-memory", "side-channel/sysv-message-queue",
    "side-channel/sysv-semaphore", "side-channel/abstract-unix-socket",
    "side-channel/unix-socket-path", "side-channel/proc-net-unix-listing",
    "side-channel/pid-namespace", "side-channel/network-namespace-listeners",
    "side-channel/uts-hostname",
]
COVERS = frozenset(NAMES)


@pytest.fixture
def cross(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Cross:
    return cross_batch(internet, docker_client, tmp_path_factory)


@pytest.mark.parametrize("name", NAMES)
def test_side_channel_does_not_exist(cross: Cross, name: str) -> None:
    result = cross.side[name]
    assert result["reached"] is False, f"{name} GOT THROUGH: {result['detail']}"
    # The victim held the resource while the attacker looked.
    assert cross.victim["ready"] < result["t0"] and result["t1"] < cross.victim["ended"]


def test_the_victim_really_held_every_resource(cross: Cross) -> None:
    assert len(cross.victim["files"]) == 3 and all(cross.victim["ipc"]), cross.victim
    assert cross.victim["hostname"] != cross.side["side-channel/uts-hostname"]["hostname"]


def test_the_isolation_that_rules_them_out_is_signed_and_verifies(
        cross: Cross, signing_key: KeyPair) -> None:
    report = verify_run(cross.batch.run.out, KeyTrust([load_public_key(signing_key.public)]),
                        DEFAULT_POLICY)
    status = {r.check: r.status for r in report.results}
    for check in (Check.SIGNATURES, Check.INTERNAL_NETWORK, Check.DISTINCT_NETWORKS,
                  Check.CAPABILITIES, Check.PROBES):
        assert status[check] is Status.PASS, report.results
    # The attacker's denied flows are on record, so the run as a whole does not verify.
    assert status[Check.DENIED_FLOWS] is Status.FAIL
