"""Connecting to the Docker engine, with failures turned into one clear line."""

from __future__ import annotations

from dataclasses import dataclass

import docker
import requests
import urllib3
from docker.errors import DockerException

from sbx.errors import EnvironmentFailure

# What docker-py lets through when the engine's socket goes away mid-call: requests'
# connection errors (refused, reset, missing socket file), a stream cut half-way, and
# the OS error underneath when the connection dies between requests.
UNREACHABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError, ConnectionError)
# Every error a best-effort Docker call (clean-up, diagnostics) may swallow.
ENGINE_ERRORS: tuple[type[BaseException], ...] = (DockerException, *UNREACHABLE)


class EngineUnreachable(EnvironmentFailure):
    """The Docker engine stopped answering during the run (exit 3)."""


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` means the engine itself is gone, not that a call was refused."""
    return isinstance(exc, UNREACHABLE)


def lost(exc: BaseException) -> EngineUnreachable:
    """The one line for an engine that went away mid-run."""
    return EngineUnreachable(
        f"the Docker engine stopped answering ({_short(exc)}): the run could not finish; "
        "once dockerd is back, `sbx gc` removes what the run left")


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
