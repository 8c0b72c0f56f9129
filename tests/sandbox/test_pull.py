"""Step images from a registry: references, pull policy, progress, errors, digests.

The integration tests pull from a real registry on this machine (tests/registry.py):
Debian's docker-registry, with and without htpasswd auth.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from sbx.errors import EXIT_ENVIRONMENT, EXIT_INPUT
from sbx.sandbox.pull import (
    DigestMismatch,
    ImageError,
    ImageMissing,
    ImageNotFoundInRegistry,
    ImageRef,
    InvalidReference,
    PullPolicy,
    PullProgress,
    PullTracker,
    RegistryAuthRefused,
    RegistryUnreachable,
    classify,
    resolve_image,
)

DIGEST = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(("text", "repository", "tag", "digest", "registry", "familiar"), [
    ("python:3.12-slim", "python", "3.12-slim", None, "docker.io", "python"),
    ("python", "python", None, None, "docker.io", "python"),
    ("docker.io/library/python:3", "docker.io/library/python", "3", None, "docker.io",
     "python"),
    ("docker.io/team/app", "docker.io/team/app", None, None, "docker.io", "team/app"),
    ("localhost:5000/team/app", "localhost:5000/team/app", None, None, "localhost:5000",
     "localhost:5000/team/app"),
    ("localhost:5000/app:v1", "localhost:5000/app", "v1", None, "localhost:5000",
     "localhost:5000/app"),
    (f"registry.example/app:v1@{DIGEST}", "registry.example/app", "v1", DIGEST,
     "registry.example", "registry.example/app"),
    (f"app@{DIGEST}", "app", None, DIGEST, "docker.io", "app"),
])
def test_references_split_into_repository_tag_and_digest(
        text: str, repository: str, tag: str | None, digest: str | None, registry: str,
        familiar: str) -> None:
    ref = ImageRef.parse(text)
    assert (ref.repository, ref.tag, ref.digest) == (repository, tag, digest)
    assert (ref.registry, ref.familiar) == (registry, familiar)
    assert ref.pull_tag == (digest or tag or "latest")


@pytest.mark.parametrize("text", ["app@sha256:abc", "app@md5:" + "a" * 32,
                                  "app@sha256:" + "AB" * 32, "app@"])
def test_a_malformed_digest_is_refused(text: str) -> None:
    with pytest.raises(ImageError, match="sha256: and 64"):
        ImageRef.parse(text)


# --------------------------------------------------------------------------- progress


def test_the_tracker_sums_layers_and_keeps_the_digest() -> None:
    tracker = PullTracker("app:v1")
    for message in [
        {"status": "Pulling from app", "id": "v1"},
        {"status": "Pulling fs layer", "id": "l1"},
        {"status": "Pulling fs layer", "id": "l2"},
        {"status": "Already exists", "id": "l3"},
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 50, "total": 200}},
        {"status": "Downloading", "id": "l2", "progressDetail": {"current": 10, "total": 100}},
        {"status": "Download complete", "id": "l2"},
        {"status": "Pull complete", "id": "l2"},
        {"status": f"Digest: {DIGEST}"},
        {"status": "Status: Downloaded newer image for app:v1"},
    ]:
        tracker.feed(message)
    assert tracker.progress() == PullProgress("app:v1", 3, 2, 150, 300)
    assert tracker.digest == DIGEST and tracker.error is None


def test_the_tracker_keeps_an_error_from_the_stream() -> None:
    tracker = PullTracker("app:v1")
    tracker.feed({"errorDetail": {"message": "x"}, "error": "manifest unknown"})
    assert tracker.error == "manifest unknown"


@pytest.mark.parametrize(("message", "kind", "code"), [
    ("manifest for localhost:5000/a:b not found: manifest unknown: manifest unknown",
     ImageNotFoundInRegistry, EXIT_INPUT),
    ("pull access denied for nope, repository does not exist or may require 'docker login'",
     ImageNotFoundInRegistry, EXIT_INPUT),
    ('Head "http://localhost:5000/v2/a/manifests/b": no basic auth credentials',
     RegistryAuthRefused, EXIT_ENVIRONMENT),
    ("unauthorized: authentication required", RegistryAuthRefused, EXIT_ENVIRONMENT),
    ('Get "http://localhost:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
     RegistryUnreachable, EXIT_ENVIRONMENT),
    ("Get https://nowhere.invalid/v2/: dial tcp: lookup nowhere.invalid: no such host",
     RegistryUnreachable, EXIT_ENVIRONMENT),
    ("invalid reference format: repository name must be lowercase", InvalidReference,
     EXIT_INPUT),
    ("something else entirely", ImageError, EXIT_ENVIRONMENT),
])
def test_engine_messages_become_one_line_errors_with_their_exit_code(
        message: str, kind: type[ImageError], code: int) -> None:
    error = classify(ImageRef.parse("localhost:5000/a:b"), message + "\nsecond line")
    assert type(error) is kind and error.exit_code == code
    line = error.diagnostics()
    assert "\n" not in line and line.startswith("image localhost:5000/a:b")


# --------------------------------------------------------------------------- real registry


@pytest.fixture(scope="module")
def pushed(registry: Any, sbx_images: tuple[str, str]) -> dict[str, str]:
    """The step image pushed as sbx-test/step:v1; its repo digest."""
    return {"v1": registry.push(sbx_images[1], "sbx-test/step:v1")}


@pytest.fixture
def fresh(registry: Any) -> Iterator[str]:
    """A repository name of this test's own; its local images go afterwards."""
    name = f"sbx-test/t{secrets.token_hex(3)}"
    yield name
    registry.forget(f"{name}:x")


pytestmark_docker = pytest.mark.docker


@pytestmark_docker
def test_a_tag_is_pulled_when_missing_and_then_reused(
        docker_client: docker.DockerClient, registry: Any, sbx_images: tuple[str, str],
        fresh: str) -> None:
    from registry import variant_image

    # A layer of its own, gone from the engine after the push: the pull must download it.
    image = variant_image(docker_client, sbx_images[1], "pulled", secrets.token_hex(3))
    digest = registry.push(image, f"{fresh}:x")
    docker_client.api.remove_image(image, force=True)
    registry.forget(f"{fresh}:x")
    ref = f"{registry.host}/{fresh}:x"
    seen: list[PullProgress] = []
    first = resolve_image(docker_client, ref, on_progress=seen.append)
    assert first.pulled and first.id == image
    assert seen and seen[-1].layers >= 1 and seen[-1].layers_done == seen[-1].layers
    assert first.repo_digest == f"{registry.host}/{fresh}@{digest}"
    assert first.platform.startswith("linux/")
    again = resolve_image(docker_client, ref)
    assert not again.pulled and again.id == first.id and again.repo_digest == first.repo_digest
    always = resolve_image(docker_client, ref, PullPolicy.ALWAYS)
    assert always.pulled and always.id == first.id


@pytestmark_docker
def test_a_digest_runs_exactly_that_image_even_after_the_tag_moved(
        docker_client: docker.DockerClient, registry: Any, sbx_images: tuple[str, str],
        fresh: str) -> None:
    from registry import variant_image

    first = registry.push(sbx_images[1], f"{fresh}:x")
    first_id = docker_client.api.inspect_image(sbx_images[1])["Id"]
    other = variant_image(docker_client, sbx_images[1], "moved", secrets.token_hex(3))
    try:
        moved = registry.push(other, f"{fresh}:x")
        assert moved != first
        registry.forget(f"{fresh}:x")
        by_tag = resolve_image(docker_client, f"{registry.host}/{fresh}:x", PullPolicy.ALWAYS)
        assert by_tag.id == other and by_tag.repo_digest.endswith(moved)
        # The tag now names `other`, locally too: the digest still gets the first image.
        pinned = resolve_image(docker_client, f"{registry.host}/{fresh}@{first}")
        assert pinned.id == first_id and pinned.id != by_tag.id
        assert pinned.repo_digest == f"{registry.host}/{fresh}@{first}"
    finally:
        docker_client.api.remove_image(other, force=True)


@pytestmark_docker
def test_an_unknown_digest_tag_or_repository_is_exit_2(
        docker_client: docker.DockerClient, registry: Any, pushed: dict[str, str]) -> None:
    for ref in (f"{registry.host}/sbx-test/step@sha256:{'0' * 64}",
                f"{registry.host}/sbx-test/step:no-such-tag",
                f"{registry.host}/sbx-test/no-such-repo:v1"):
        with pytest.raises(ImageNotFoundInRegistry) as caught:
            resolve_image(docker_client, ref)
        assert caught.value.exit_code == EXIT_INPUT and ref in caught.value.diagnostics()


@pytestmark_docker
def test_pull_never_uses_only_what_the_engine_has(
        docker_client: docker.DockerClient, registry: Any, pushed: dict[str, str],
        sbx_images: tuple[str, str]) -> None:
    registry.forget("sbx-test/step:v1")
    with pytest.raises(ImageMissing, match="pull policy is never") as caught:
        resolve_image(docker_client, f"{registry.host}/sbx-test/step:v1", PullPolicy.NEVER)
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    local = resolve_image(docker_client, sbx_images[1], PullPolicy.NEVER)
    assert not local.pulled and local.repo_digest is None  # built here, never pushed


@pytestmark_docker
def test_no_registry_at_the_address_is_one_line_exit_3(
        docker_client: docker.DockerClient) -> None:
    import socket

    with socket.socket() as sock:  # a port on loopback that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RegistryUnreachable) as caught:
        resolve_image(docker_client, f"localhost:{port}/sbx-test/step:v1")
    assert caught.value.exit_code == EXIT_ENVIRONMENT
    assert f"no registry answers at localhost:{port}" in caught.value.diagnostics()


def _docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    folder = tmp_path / "docker-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return folder


@pytestmark_docker
def test_credentials_come_from_the_docker_config_and_a_refused_login_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth_registry: Any,
        sbx_images: tuple[str, str]) -> None:
    from registry import PASSWORD, USER

    auth_registry.push(sbx_images[1], "sbx-test/private:v1", login=True)
    auth_registry.forget("sbx-test/private:v1")
    ref = f"{auth_registry.host}/sbx-test/private:v1"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    with pytest.raises(RegistryAuthRefused) as no_login:
        resolve_image(docker.from_env(timeout=120), ref)
    monkeypatch.setenv("DOCKER_CONFIG",
                       str(_docker_config(tmp_path, auth_registry.host, USER, "wrong")))
    with pytest.raises(RegistryAuthRefused) as wrong:
        resolve_image(docker.from_env(timeout=120), ref)
    for caught in (no_login, wrong):
        assert caught.value.exit_code == EXIT_ENVIRONMENT
        assert f"docker login {auth_registry.host}" in caught.value.diagnostics()
    monkeypatch.setenv("DOCKER_CONFIG",
                       str(_docker_config(tmp_path, auth_registry.host, USER, PASSWORD)))
    image = resolve_image(docker.from_env(timeout=120), ref)
    assert image.pulled and image.repo_digest is not None


def test_a_digest_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the engine ever held another image under the pinned reference, nothing runs."""
    class Api:
        def inspect_image(self, ref: str) -> dict[str, Any]:
            return {"Id": "sha256:" + "cd" * 32, "Os": "linux", "Architecture": "amd64",
                    "RepoDigests": [f"localhost:5000/app@sha256:{'ef' * 32}"]}

    class Client:
        api = Api()

    with pytest.raises(DigestMismatch, match="refusing to run"):
        resolve_image(Client(), f"localhost:5000/app@{DIGEST}")  # type: ignore[arg-type]
