"""How an sbx image is made: Debian recipes (mmdebstrap + ``docker import``) and build contexts.

The parts of `sbx.sandbox.images` that talk to mmdebstrap and the engine's build API; which
image to build, and its tag, is decided there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from sbx.errors import EnvironmentFailure
from sbx.sandbox.archive import pack_files

Log = Callable[[str], None]

MANAGED_LABEL = "sbx.managed"
RECIPE_LABEL = "sbx.recipe"

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "SBX_DEBIAN_MIRROR"

# Part of every base recipe hash: changing how the root filesystem is made changes the tag.
_MMDEBSTRAP_OPTIONS: tuple[str, ...] = (
    "--variant=apt",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _short_hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class _DebianRecipe:
    """A Debian root filesystem made by mmdebstrap and imported as an image."""

    repo: str
    packages: tuple[str, ...]
    cmd: tuple[str, ...]
    suite: str = SUITE

    @property
    def digest(self) -> str:
        return _short_hash(
            self.suite.encode(),
            "\n".join(sorted(self.packages)).encode(),
            "\n".join(_MMDEBSTRAP_OPTIONS).encode(),
            json.dumps(list(self.cmd)).encode(),
        )

    def changes(self) -> list[str]:
        return [
            f"LABEL {MANAGED_LABEL}=1",
            f"LABEL {RECIPE_LABEL}={self.digest}",
            f"ENV {_PATH}",
            "ENV LANG=C.UTF-8",
            f"CMD {json.dumps(list(self.cmd))}",
        ]



# --------------------------------------------------------------------------- helpers


def _image_labels(client: docker.DockerClient, tag: str) -> dict[str, str] | None:
    """The image's labels, or None if there is no such image."""
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise EnvironmentFailure(f"cannot inspect image {tag}: {exc}") from exc
    labels: dict[str, str] = image.labels or {}
    return labels


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Serialise builds of one image between processes (parallel test workers, CI jobs)."""
    path = Path(tempfile.gettempdir()) / f"sbx-images-{name}-{os.getuid()}.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tar_context(files: Sequence[tuple[str, bytes]]) -> io.BytesIO:
    """An in-memory, reproducible docker build context."""
    return io.BytesIO(pack_files(dict(files)))


def _build_from_context(
    client: docker.DockerClient,
    tag: str,
    files: Sequence[tuple[str, bytes]],
    *,
    labels: dict[str, str],
    offline: bool,
    buildargs: dict[str, str] | None = None,
) -> None:
    kwargs: dict[str, Any] = {}
    if offline:
        kwargs["network_mode"] = "none"
    try:
        client.images.build(
            fileobj=_tar_context(files),
            custom_context=True,
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            labels=labels,
            buildargs=buildargs or {},
            **kwargs,
        )
    except docker.errors.BuildError as exc:
        tail = " | ".join(
            str(chunk.get("stream") or chunk.get("error") or "").strip()
            for chunk in list(exc.build_log)[-3:]
            if isinstance(chunk, dict)
        )
        raise EnvironmentFailure(f"building image {tag} failed: {exc.msg} ({tail})") from exc
    except docker.errors.DockerException as exc:
        raise EnvironmentFailure(f"building image {tag} failed: {exc}") from exc


def _mmdebstrap() -> str:
    path = shutil.which("mmdebstrap")
    if path is None:
        raise EnvironmentFailure(
            "mmdebstrap is not installed: apt-get install mmdebstrap (then make images), or "
            "set SBX_IMAGE_BASE (or pass --base) to a registry image such as python:3.12-slim "
            "to build sbx's images from it"
        )
    return path


def _build_debian_image(
    client: docker.DockerClient, recipe: _DebianRecipe, tag: str, log: Log
) -> None:
    """mmdebstrap a root filesystem into a temp dir and ``docker import`` it as ``tag``."""
    mmdebstrap = _mmdebstrap()
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    with tempfile.TemporaryDirectory(prefix="sbx-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        command = [
            mmdebstrap,
            "--quiet",
            *_MMDEBSTRAP_OPTIONS,
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(rootfs),
            mirror,  # explicit: without it mmdebstrap reads sources from a non-tty stdin
        ]
        started = time.monotonic()
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "TMPDIR": tmp},
            )
        except OSError as exc:
            raise EnvironmentFailure(f"cannot run mmdebstrap: {exc}") from exc
        if result.returncode != 0:
            lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
            detail = " | ".join(lines[-3:]) or f"exit status {result.returncode}"
            raise EnvironmentFailure(
                f"mmdebstrap failed building {tag} from {mirror} ({detail}): check that the "
                f"Debian mirror is reachable (set {MIRROR_ENV} to use another one)"
            )
        log(f"sbx: root filesystem for {tag} made in {time.monotonic() - started:.0f} s")
        repository, _, image_tag = tag.rpartition(":")
        try:
            output = client.api.import_image_from_file(
                str(rootfs), repository=repository, tag=image_tag, changes=recipe.changes()
            )
        except docker.errors.DockerException as exc:
            raise EnvironmentFailure(f"docker import of {tag} failed: {exc}") from exc
        for line in str(output).splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("error"):
                    raise EnvironmentFailure(f"docker import of {tag} failed: {message['error']}")
    if _image_labels(client, tag) is None:
        raise EnvironmentFailure(f"docker import of {tag} produced no image")


