"""Connecting to the Docker engine, with failures turned into one clear line."""

from __future__ import annotations

from dataclasses import dataclass

import docker
from docker.errors import DockerException

from sbx.errors import EnvironmentFailure


@dataclass(frozen=True)
class EngineInfo:
    """The engine facts that go into the isolation evidence."""

    version: str
    api_version: str
    os: str
    kernel: str


def connect(timeout: int = 60) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (or the local socket)."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise EnvironmentFailure(
            f"no Docker engine answers ({_short(exc)}): start dockerd or set DOCKER_HOST"
        ) from None
    return client


def info(client: docker.DockerClient) -> EngineInfo:
    """Version facts of the connected engine."""
    v = client.version()
    return EngineInfo(version=str(v.get("Version", "")), api_version=str(v.get("ApiVersion", "")),
                      os=str(v.get("Os", "")), kernel=str(v.get("KernelVersion", "")))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
