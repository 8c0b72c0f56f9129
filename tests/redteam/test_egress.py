"""Egress bypass from inside a step: raw IPs, ignored proxy variables, UDP and QUIC,
ICMP, IPv6, TLS without SNI, SNI/Host/CONNECT mismatches, an allowed name that
resolves to an internal address. Each attempt is blocked (the canaries saw nothing,
the step got nothing back) and recorded (a matching event in its time window)."""

from __future__ import annotations

import docker
import pytest

from tests.conftest import Internet
from tests.redteam import netattacks as na
from tests.redteam.batches import Batch, lan_batch, net_batch

pytestmark = pytest.mark.docker

DUMMY = ("198.18.0.10", "198.18.0.20")
NAMES = [n.name for n in na.egress(*DUMMY)]
LAN_NAMES = [n.name for n in na.internal("10.99.0.20", "10.99.0.1")]
COVERS = frozenset(NAMES + LAN_NAMES)


@pytest.fixture
def batch(internet: Internet, docker_client: docker.DockerClient, sbx_images: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return net_batch(internet, docker_client, sbx_images[1], tmp_path_factory)


@pytest.fixture
def lan(docker_client: docker.DockerClient, sbx_images: tuple[str, str],
        tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return lan_batch(docker_client, sbx_images[1], tmp_path_factory)


@pytest.mark.parametrize("name", NAMES)
def test_egress_attack_is_blocked_and_recorded(batch: Batch, name: str) -> None:
    assert batch.judge(name) == []


def test_no_egress_attack_reached_a_canary(batch: Batch) -> None:
    assert batch.sink_seen == [], "a packet reached the sink"
    assert batch.other_hits == [], "a request reached other.sbx.test"
    # The mismatches (another name inside CONNECT, two Host headers) reach nothing at all.
    assert not {h["path"] for h in batch.web_hits} & {"/inner-sni", "/dup"}
    # Enforce mode: the step's command finished, the run failed on its denied flows.
    assert batch.run.step("netbatch")["exit_code"] == 0
    assert batch.run.result.exit_code == 1


@pytest.mark.parametrize("name", LAN_NAMES)
def test_allowed_name_resolving_to_an_internal_address_is_refused(lan: Batch, name: str) -> None:
    assert lan.judge(name) == []


def test_internal_address_of_an_allowed_name_never_reached(lan: Batch) -> None:
    assert lan.sink_seen == [], f"a packet reached the internal canary: {lan.sink_seen}"


def test_a_refusal_tells_the_step_nothing_about_internal_addresses(lan: Batch) -> None:
    """The 403 once said "internal.sbx.test resolves only to internal addresses
    ['10.99.x.20']", mapping the CI host's internal DNS for the step; the detail is
    for the record only."""
    result = lan.results["egress/allowed-name-resolving-internal-absolute-uri"]
    assert result["body"].startswith("HTTP/1.1 403"), result
    assert "denied by policy" in result["body"] and "10.99." not in result["body"]
    [event] = lan._assigned(lan.run.events_of(lan.step))[
        "egress/allowed-name-resolving-internal-absolute-uri"]
    assert "10.99." in event["reason"]  # the detail stays in the evidence
