"""The red-team sink's positive control: its silence counts only while its sniffer runs."""

from __future__ import annotations

import datetime as dt

import docker
import pytest

from tests.conftest import Internet
from tests.redteam.batches import _sink_ip
from tests.redteam.harness import SINK_SCRIPT, start_sink

pytestmark = pytest.mark.docker


def test_a_live_sink_logs_the_control_and_reports_nothing_else(
        internet: Internet, docker_client: docker.DockerClient,
        sbx_images: tuple[str, str]) -> None:
    since = dt.datetime.now(dt.UTC)
    sink = start_sink(docker_client, sbx_images[1], internet.network,
                      _sink_ip(internet.subnet, 30), [])
    try:
        assert sink.seen(since) == []  # the control packets are not attacks
    finally:
        sink.remove()


def test_a_sink_whose_sniffer_died_is_caught(
        internet: Internet, docker_client: docker.DockerClient,
        sbx_images: tuple[str, str]) -> None:
    script = SINK_SCRIPT.read_text()
    dead = script.replace("def sniff() -> None:\n", "def sniff() -> None:\n    return\n", 1)
    assert dead != script
    sink = start_sink(docker_client, sbx_images[1], internet.network,
                      _sink_ip(internet.subnet, 31), [], script=dead.encode())
    try:
        with pytest.raises(AssertionError, match="sniffer is not running"):
            sink.control(wait=3)
    finally:
        sink.remove()
