"""Step images from a registry: pulled on the host side, before any sandbox exists.

A step names any image reference (``python:3.12-slim``, ``registry.example/team/app:1.4``,
``app@sha256:...``). The pull policy is GitLab's: ``always`` pulls every time,
``if-not-present`` (the default) only when the engine lacks the image, ``never`` uses only
what the engine has. The engine does the pulling, so registry credentials come from the usual
Docker configuration (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, credential
helpers included), read by the docker SDK.

What a step then runs is the image's id as resolved here, not its name: a tag that moves
while the run goes cannot change what runs. A reference with a digest runs exactly that
digest or fails. The result carries the repo digest (the registry's manifest digest) and the
platform, for the step's link Statement.

Progress and errors are decided from the engine's messages alone (``PullTracker``,
``classify``), so both are testable without an engine.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from sbx.errors import EXIT_INPUT, EnvironmentFailure, one_line
from sbx.sandbox.engine import UNREACHABLE

__all__ = [
    "ImageError",
    "ImageMissing",
    "ImageNotFoundInRegistry",
    "ImageRef",
    "ImageReferenceError",
    "InvalidReference",
    "PullPolicy",
    "PullProgress",
    "PullTracker",
    "RegistryAuthRefused",
    "RegistryUnreachable",
    "ResolvedImage",
    "classify",
    "resolve_image",
]


class PullPolicy(enum.StrEnum):
    """When sbx asks the engine to pull a step's image (GitLab's ``pull_policy`` values)."""

    ALWAYS = "always"
    IF_NOT_PRESENT = "if-not-present"
    NEVER = "never"


class ImageError(EnvironmentFailure):
    """The step's image could not be had (exit 3 unless a subclass says otherwise)."""


class ImageReferenceError(ImageError):
    """The step's image reference is wrong: fix the step file (exit 2)."""

    exit_code = EXIT_INPUT


class ImageNotFoundInRegistry(ImageReferenceError):
    """The registry answered and has no such image."""


class InvalidReference(ImageReferenceError):
    """The engine does not accept the reference (upper case in a repository name ...)."""


class ImageMissing(ImageError):
    """``pull: never`` and the engine does not have the image."""


class RegistryAuthRefused(ImageError):
    """The registry refused the credentials (or wanted some and got none)."""


class RegistryUnreachable(ImageError):
    """No registry answered at the reference's host."""


class DigestMismatch(ImageError):
    """The image the engine holds is not the digest the step named."""


_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """An image reference split into repository, tag and digest."""

    text: str
    repository: str  # as written: `python`, `localhost:5000/team/app`
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Split ``repo[:tag][@sha256:hex]``; the engine stays the authority on the rest."""
        name, at, digest = text.partition("@")
        if at and not _DIGEST_RE.match(digest):
            raise ImageError(f"image {text}: the digest after @ must be sha256: and 64 "
                             "lowercase hex digits")
        slash = name.rfind("/")
        colon = name.rfind(":")
        tag = None
        if colon > slash:  # a colon after the last slash is a tag, before it a port
            name, tag = name[:colon], name[colon + 1:]
        return cls(text, name, tag, digest or None)

    @property
    def familiar(self) -> str:
        """The repository as the engine lists it in RepoDigests (``python``, not
        ``docker.io/library/python``)."""
        repo = self.repository
        for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
            if repo.startswith(prefix):
                repo = repo[len(prefix):]
                if repo.startswith("library/") and repo.count("/") == 1:
                    repo = repo[len("library/"):]
                break
        return repo

    @property
    def pull_tag(self) -> str:
        """What the engine's pull call takes as `tag`: the digest if there is one."""
        return self.digest or self.tag or "latest"

    @property
    def registry(self) -> str:
        """The registry host the reference points at."""
        first, slash, _ = self.repository.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"


@dataclass(frozen=True)
class ResolvedImage:
    """The image a step runs, as the engine has it."""

    ref: str
    id: str  # sha256:... of the image config: what the step container is created from
    repo_digest: str | None  # repository@sha256:... from the registry; None for local builds
    platform: str  # os/architecture[/variant]
    pulled: bool


@dataclass(frozen=True)
class PullProgress:
    """How far a pull is, summed over its layers."""

    ref: str
    layers: int
    layers_done: int
    current: int
    total: int


@dataclass
class PullTracker:
    """Folds the engine's pull messages into progress, the pulled digest and an error."""

    ref: str
    _layers: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    digest: str | None = None
    error: str | None = None

    def feed(self, message: Mapping[str, Any]) -> None:
        """Take one decoded JSON message of the engine's pull stream."""
        if message.get("error"):
            self.error = str(message.get("error"))
            return
        status = str(message.get("status") or "")
        if status.startswith("Digest: "):
            self.digest = status.removeprefix("Digest: ").strip()
            return
        layer = message.get("id")
        if not isinstance(layer, str) or not layer or status.startswith("Pulling from"):
            return
        current, total, done = self._layers.get(layer, (0, 0, False))
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            current = int(detail.get("current") or current)
            total = int(detail.get("total") or total)
        elif status in ("Download complete", "Pull complete", "Already exists"):
            done, current = True, max(current, total)
        self._layers[layer] = (current, total, done)

    def progress(self) -> PullProgress:
        """The pull so far."""
        values = self._layers.values()
        return PullProgress(self.ref, len(self._layers), sum(1 for v in values if v[2]),
                            sum(v[0] for v in values), sum(v[1] for v in values))


def classify(ref: ImageRef, message: str) -> ImageError:
    """The one-line error for an engine's pull failure message."""
    text = one_line(message, 300)
    low = message.lower()
    if any(s in low for s in ("no basic auth credentials", "unauthorized",
                              "authentication required", "incorrect username or password")):
        return RegistryAuthRefused(
            f"image {ref.text}: the registry {ref.registry} refused the login ({text}): "
            f"run `docker login {ref.registry}` (sbx reads the Docker config's credentials)")
    if any(s in low for s in ("connection refused", "no such host", "i/o timeout",
                              "network is unreachable", "no route to host",
                              "request canceled", "tls handshake timeout",
                              "server gave http response to https client",
                              "connection reset")):
        return RegistryUnreachable(
            f"image {ref.text}: no registry answers at {ref.registry} ({text}): check the "
            "registry's address, or load the image (docker load) and use pull: never")
    if "invalid reference format" in low:
        return InvalidReference(f"image {ref.text} is not a valid image reference ({text}): "
                                "fix the step's image (lower-case repository, then :tag or "
                                "@sha256:digest)")
    if any(s in low for s in ("manifest unknown", "not found", "repository does not exist",
                              "name unknown", "pull access denied")):
        return ImageNotFoundInRegistry(
            f"image {ref.text}: the registry {ref.registry} has no such image ({text}): "
            "fix the step's image (repository, tag or digest)")
    return ImageError(f"image {ref.text}: the pull failed: {text}")


def _platform(attrs: Mapping[str, Any]) -> str:
    parts = [str(attrs.get("Os") or "unknown"), str(attrs.get("Architecture") or "unknown")]
    if attrs.get("Variant"):
        parts.append(str(attrs["Variant"]))
    return "/".join(parts)


def _inspect(client: docker.DockerClient, ref: str) -> dict[str, Any] | None:
    try:
        attrs: dict[str, Any] = client.api.inspect_image(ref)
    except (ImageNotFound, NotFound):
        return None
    except APIError as exc:
        if exc.status_code in (400, 404):  # a digest reference the engine never stored
            return None
        raise ImageError(f"image {ref}: the engine cannot inspect it: "
                         f"{one_line(str(exc.explanation or exc), 200)}") from None
    return attrs


def _repo_digest(ref: ImageRef, attrs: Mapping[str, Any], pulled: str | None) -> str | None:
    """The registry digest that names this image: the one just pulled, or the one the
    engine recorded for this repository."""
    if ref.digest:
        return f"{ref.familiar}@{ref.digest}"
    if pulled:
        return f"{ref.familiar}@{pulled}"
    mine = sorted(d for d in attrs.get("RepoDigests") or []
                  if isinstance(d, str) and d.partition("@")[0] == ref.familiar)
    return mine[0] if mine else None


def _pull(client: docker.DockerClient, ref: ImageRef,
          on_progress: Callable[[PullProgress], None] | None) -> str | None:
    """Pull through the engine; returns the manifest digest it reported."""
    tracker = PullTracker(ref.text)
    try:
        stream: Iterable[dict[str, Any]] = client.api.pull(
            ref.repository, tag=ref.pull_tag, stream=True, decode=True)
        last = 0.0
        for message in stream:
            tracker.feed(message)
            if tracker.error:
                break
            now = time.monotonic()
            if on_progress is not None and now - last >= 0.1:
                last = now
                on_progress(tracker.progress())
    except APIError as exc:
        raise classify(ref, str(exc.explanation or exc)) from None
    except UNREACHABLE as exc:
        raise EnvironmentFailure(f"the Docker engine stopped answering while pulling "
                                 f"{ref.text}: {one_line(str(exc), 160)}") from None
    if tracker.error:
        raise classify(ref, tracker.error)
    if on_progress is not None:
        on_progress(tracker.progress())
    return tracker.digest


def resolve_image(client: docker.DockerClient, text: str,
                  policy: PullPolicy = PullPolicy.IF_NOT_PRESENT, *,
                  on_progress: Callable[[PullProgress], None] | None = None) -> ResolvedImage:
    """Make sure the engine has the step's image under ``policy``; say exactly which it is."""
    ref = ImageRef.parse(text)
    attrs = None if policy is PullPolicy.ALWAYS else _inspect(client, text)
    pulled_digest: str | None = None
    pulled = False
    if attrs is None:
        if policy is PullPolicy.NEVER:
            raise ImageMissing(
                f"image {text} is not on this engine and the pull policy is never: "
                "build or docker load it, or use pull: if-not-present")
        pulled_digest = _pull(client, ref, on_progress)
        pulled = True
        # By the digest just pulled: the tag may move again before this line.
        attrs = _inspect(client, f"{ref.repository}@{pulled_digest}" if pulled_digest else text)
        if attrs is None:
            raise ImageError(f"image {text}: the engine reported a pull but has no such image")
    if ref.digest:
        held = {d.partition("@")[2] for d in attrs.get("RepoDigests") or []
                if isinstance(d, str)}
        if ref.digest not in held or (pulled_digest and pulled_digest != ref.digest):
            raise DigestMismatch(
                f"image {text}: the engine's image is not {ref.digest} "
                f"(it has {', '.join(sorted(held)) or 'no registry digest'}): refusing to run")
    return ResolvedImage(ref=text, id=str(attrs["Id"]),
                         repo_digest=_repo_digest(ref, attrs, pulled_digest),
                         platform=_platform(attrs), pulled=pulled)
