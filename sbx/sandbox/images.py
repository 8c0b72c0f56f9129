"""Find or build the images sbx runs: the runtime image and the test step image.

Two images, both labelled ``sbx.managed=1``:

* **runtime image** ``sbx-runtime:<hash>`` — what the egress gateway, the namespace agent and
  the probes run (``python3 -m sbx.sandbox.runtime.gateway`` ...). It is a thin layer that
  copies the runtime code (``sbx/__init__.py``, ``sbx/sandbox/__init__.py``,
  ``sbx/sandbox/policy/*.py``, ``sbx/sandbox/runtime/**/*.py``) into ``/opt/sbx`` on top of a base
  image ``sbx-base-runtime:<hash>`` holding Debian's python3, python3-dnslib, iptables and
  iproute2. The tag hashes the code's bytes and the base tag, so any code change yields a new
  tag and an unchanged tree reuses the image.
* **step image** ``sbx-step:bookworm`` — a Debian bookworm with python3, git, curl,
  ca-certificates and openssl, used by the tests and the examples.

No registry is needed: base images are root filesystems made by ``mmdebstrap`` (which fetches
Debian packages from a Debian mirror; set ``SBX_DEBIAN_MIRROR`` to use another one) and turned
into images with ``docker import``. The thin runtime layer is a Dockerfile that copies the code
and compiles it to bytecode (so no container start compiles it), built with ``pull=False`` and
``network_mode="none"``, so nothing inside a build touches the network.

On machines with a registry, ``build_images(client, base="python:3.12-slim")`` (or
``SBX_IMAGE_BASE=python:3.12-slim``, which ``ensure_runtime_image`` honours too) builds the
runtime image from ``images/runtime.Dockerfile`` instead, and the step image from
``images/step.Dockerfile``.

Run ``python -m sbx.sandbox.images`` (``make images``) to build everything and print the tags.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import docker.errors

from sbx.errors import EnvironmentFailure, SbxError
from sbx.sandbox.image_build import (
    MANAGED_LABEL,
    RECIPE_LABEL,
    SUITE,
    Log,
    _build_debian_image,
    _build_from_context,
    _build_lock,
    _DebianRecipe,
    _image_labels,
    _short_hash,
)
from sbx.sandbox.pull import PullPolicy, resolve_image

__all__ = [
    "MANAGED_LABEL",
    "RUNTIME_REPO",
    "STEP_IMAGE",
    "build_images",
    "ensure_runtime_image",
    "ensure_step_image",
    "prune_runtime_images",
    "runtime_image_tag",
]

BASE_ENV = "SBX_IMAGE_BASE"
DEFAULT_STEP_REGISTRY_BASE = "debian:bookworm-slim"

BASE_RUNTIME_REPO = "sbx-base-runtime"
RUNTIME_REPO = "sbx-runtime"
STEP_REPO = "sbx-step"
STEP_IMAGE = f"{STEP_REPO}:{SUITE}"

# python3-h11 reads every HTTP request head and request the gateway checks; python3-idna
# normalizes names; python3-cryptography mints the run CA and its leaves for TLS inspection.
RUNTIME_PACKAGES: tuple[str, ...] = ("python3", "python3-dnslib", "python3-h11", "python3-idna",
                                     "python3-cryptography", "iptables", "iproute2")
STEP_PACKAGES: tuple[str, ...] = ("python3", "python3-pip", "python3-setuptools", "python3-wheel",
                                  "git", "curl", "ca-certificates", "openssl")

# The sbx package directory (…/sbx). Tests monkeypatch it to a fake tree.
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# The source checkout (holds images/*.Dockerfile); absent in a wheel install.
_SOURCE_ROOT = _PACKAGE_ROOT.parent
# Runtime files, relative to the directory that contains the sbx package.
# Named one by one, so a missing policy module fails the build instead of the gateway.
_RUNTIME_FIXED = (
    "sbx/__init__.py",
    "sbx/sandbox/__init__.py",
    "sbx/sandbox/policy/__init__.py",
    "sbx/sandbox/policy/actions.py",
    "sbx/sandbox/policy/addresses.py",
    "sbx/sandbox/policy/errors.py",
    "sbx/sandbox/policy/model.py",
    "sbx/sandbox/policy/names.py",
    "sbx/sandbox/policy/rules.py",
)
_RUNTIME_GLOB = "sandbox/runtime/**/*.py"

_BUILD_HINT = "run `make images` (or `python -m sbx.sandbox.images`)"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- recipes

_RUNTIME_BASE = _DebianRecipe(BASE_RUNTIME_REPO, RUNTIME_PACKAGES, ("python3",))
_STEP_BASE = _DebianRecipe(STEP_REPO, STEP_PACKAGES, ("/bin/bash",))


def base_runtime_image_tag() -> str:
    """Tag of the Debian base under the runtime image: ``sbx-base-runtime:<hash>``."""
    return f"{BASE_RUNTIME_REPO}:{_RUNTIME_BASE.digest}"


def runtime_files() -> list[tuple[str, Path]]:
    """The runtime code copied into ``/opt/sbx``: (path inside /opt/sbx, file on disk).

    Sorted by path. Raises EnvironmentFailure if a required file is missing.
    """
    root = _PACKAGE_ROOT
    files: dict[str, Path] = {}
    for rel in _RUNTIME_FIXED:
        path = root.parent / rel
        if not path.is_file():
            raise EnvironmentFailure(
                f"runtime file {rel} is missing from {root}: reinstall sbx (pip install -e .)"
            )
        files[rel] = path
    for path in root.glob(_RUNTIME_GLOB):
        if path.is_file():
            files[f"sbx/{path.relative_to(root).as_posix()}"] = path
    return sorted(files.items())


def _registry_base() -> str | None:
    return os.environ.get(BASE_ENV) or None


def _base_source(explicit: bool) -> str:
    """Why a registry base is used, for the line that says so."""
    why = "--base" if explicit else f"{BASE_ENV} is set"
    if shutil.which("mmdebstrap") is None:
        why += ", mmdebstrap is not installed"
    return why


def _dockerfile(name: str) -> Path:
    path = _SOURCE_ROOT / "images" / name
    if not path.is_file():
        raise EnvironmentFailure(
            f"images/{name} not found next to {_PACKAGE_ROOT}: building from a registry base "
            "needs a source checkout (git clone, then pip install -e .)"
        )
    return path


def runtime_image_tag(base: str | None = None) -> str:
    """Tag of the runtime image for the installed code: ``sbx-runtime:<hash>``.

    The hash covers every runtime file's path and bytes and how the image is made: the thin
    Dockerfile naming the mmdebstrap base tag, or (when ``base`` or ``SBX_IMAGE_BASE`` names
    a registry image) that image and ``images/runtime.Dockerfile``.
    """
    base = base or _registry_base()
    parts: list[bytes] = []
    for rel, path in runtime_files():
        parts += [rel.encode(), path.read_bytes()]
    if base is None:
        parts.append(_thin_runtime_dockerfile(base_runtime_image_tag()))
    else:
        parts += [b"registry-base", base.encode(), _dockerfile("runtime.Dockerfile").read_bytes()]
    return f"{RUNTIME_REPO}:{_short_hash(*parts)}"


def _missing(tag: str, what: str) -> EnvironmentFailure:
    return EnvironmentFailure(f"the {what} image {tag} is missing: {_BUILD_HINT}")


# --------------------------------------------------------------------------- runtime image


def _ensure_base_runtime(client: docker.DockerClient, *, force: bool, log: Log) -> str:
    tag = base_runtime_image_tag()
    if force or _image_labels(client, tag) is None:
        log(f"sbx: building the base image {tag} with mmdebstrap (~30 s)")
        _build_debian_image(client, _RUNTIME_BASE, tag, log)
    return tag


def _runtime_context(dockerfile: bytes) -> list[tuple[str, bytes]]:
    files = [("Dockerfile", dockerfile)]
    files += [(rel, path.read_bytes()) for rel, path in runtime_files()]
    return files


# Every gateway, agent and probe start would otherwise compile every sbx module it imports
# (PYTHONDONTWRITEBYTECODE keeps it from caching them): compile once, with the image's own
# python3. Hash-based pycs stay valid whatever mtime the layer gives the sources, and python
# checks each against its source's bytes, so a .pyc can never stand in for other code.
COMPILE_RUNTIME = ("python3 -m compileall -q --invalidation-mode checked-hash "
                   "/opt/sbx/sbx")


def _thin_runtime_dockerfile(base_tag: str) -> bytes:
    return (
        f"FROM {base_tag}\n"
        "COPY sbx /opt/sbx/sbx\n"
        f"RUN {COMPILE_RUNTIME}\n"
        "ENV PYTHONPATH=/opt/sbx PYTHONDONTWRITEBYTECODE=1\n"
    ).encode()  # CMD and the sbx.managed label come from the base; build() adds the label too


def _build_runtime(
    client: docker.DockerClient, tag: str, *, base: str | None, force: bool, log: Log
) -> None:
    if base is None:
        base_tag = _ensure_base_runtime(client, force=force, log=log)
        _build_from_context(
            client,
            tag,
            _runtime_context(_thin_runtime_dockerfile(base_tag)),
            labels={MANAGED_LABEL: "1"},
            offline=True,
        )
    else:
        _build_from_context(
            client,
            tag,
            _runtime_context(_dockerfile("runtime.Dockerfile").read_bytes()),
            labels={MANAGED_LABEL: "1"},
            offline=False,
            buildargs={"BASE": base},
        )


def ensure_runtime_image(
    client: docker.DockerClient,
    *,
    build: bool = True,
    log: Log = _stderr,
    base: str | None = None,
    force: bool = False,
) -> str:
    """Return the runtime image's tag, building it first if it is missing.

    ``build=False`` raises EnvironmentFailure instead of building. ``base`` (default: the
    ``SBX_IMAGE_BASE`` environment variable) selects the registry-based Dockerfile build.
    """
    explicit = base is not None
    base = base or _registry_base()
    tag = runtime_image_tag(base)
    if not force and _image_labels(client, tag) is not None:
        return tag
    if not build:
        raise _missing(tag, "gateway")
    with _build_lock(RUNTIME_REPO):
        if not force and _image_labels(client, tag) is not None:
            return tag  # another process built it while we waited
        started = time.monotonic()
        first = base is None and _image_labels(client, base_runtime_image_tag()) is None
        if base is None:
            log(f"sbx: building the gateway image {tag}"
                + (" (first use, ~40 s)" if first else ""))
        else:
            log(f"sbx: building the gateway image {tag} FROM {base} "
                f"({_base_source(explicit)}; images/runtime.Dockerfile)")
            # On the host side, before the build: one-line errors for a missing image, a
            # refused login or no registry, and progress for a large base.
            resolve_image(client, base, PullPolicy.IF_NOT_PRESENT)
        _build_runtime(client, tag, base=base, force=force, log=log)
        log(f"sbx: built {tag} in {time.monotonic() - started:.1f} s")
    return tag


# --------------------------------------------------------------------------- step image


def _step_recipe(base: str | None) -> str:
    if base is None:
        return _STEP_BASE.digest
    return _short_hash(b"registry-base", base.encode(), _dockerfile("step.Dockerfile").read_bytes())


def ensure_step_image(
    client: docker.DockerClient,
    *,
    build: bool = True,
    log: Log = _stderr,
    base: str | None = None,
    force: bool = False,
) -> str:
    """Return ``sbx-step:bookworm``, building it if missing or made from another recipe.

    ``base`` names a registry image for ``images/step.Dockerfile``
    (default ``debian:bookworm-slim`` when ``SBX_IMAGE_BASE`` is set, else mmdebstrap).
    """
    if base is None and _registry_base() is not None:
        base = DEFAULT_STEP_REGISTRY_BASE
    recipe = _step_recipe(base)
    labels = _image_labels(client, STEP_IMAGE)
    if not force and labels is not None and labels.get(RECIPE_LABEL) == recipe:
        return STEP_IMAGE
    if not build:
        raise _missing(STEP_IMAGE, "step")
    with _build_lock(STEP_REPO):
        labels = _image_labels(client, STEP_IMAGE)
        if not force and labels is not None and labels.get(RECIPE_LABEL) == recipe:
            return STEP_IMAGE
        started = time.monotonic()
        log(f"sbx: building the step image {STEP_IMAGE} (~40 s)"
            + ("" if base is None else f" FROM {base} (images/step.Dockerfile)"))
        if base is not None:
            resolve_image(client, base, PullPolicy.IF_NOT_PRESENT)
        if base is None:
            _build_debian_image(client, _STEP_BASE, STEP_IMAGE, log)
        else:
            _build_from_context(
                client,
                STEP_IMAGE,
                [("Dockerfile", _dockerfile("step.Dockerfile").read_bytes())],
                labels={MANAGED_LABEL: "1", RECIPE_LABEL: recipe},
                offline=False,
                buildargs={"BASE": base},
            )
        log(f"sbx: built {STEP_IMAGE} in {time.monotonic() - started:.1f} s")
    return STEP_IMAGE


# --------------------------------------------------------------------------- all


def build_images(
    client: docker.DockerClient,
    *,
    force: bool = False,
    log: Log = _stderr,
    base: str | None = None,
    step_base: str | None = None,
) -> list[str]:
    """Build (or reuse) every image sbx needs; return their tags.

    ``force`` rebuilds even when the tags exist. ``base`` (e.g. ``python:3.12-slim``) builds
    the runtime image from ``images/runtime.Dockerfile`` on that registry image instead of
    mmdebstrap; ``step_base`` does the same for ``images/step.Dockerfile``
    (default ``debian:bookworm-slim`` when ``base`` is given).
    """
    base = base or _registry_base()
    if base is not None and step_base is None:
        step_base = DEFAULT_STEP_REGISTRY_BASE
    # Both builds wait mostly on the Debian mirror and dpkg: run them side by side.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sbx-image") as pool:
        runtime = pool.submit(ensure_runtime_image, client, log=log, base=base, force=force)
        step = pool.submit(ensure_step_image, client, log=log, base=step_base, force=force)
        return [runtime.result(), step.result()]


def prune_runtime_images(
    client: docker.DockerClient, *, keep: Sequence[str] = (), log: Log = _stderr
) -> list[str]:
    """Remove ``sbx-runtime:*`` tags other than ``keep``; return the removed tags.

    Images still used by a container stay (the engine refuses to remove them).
    """
    removed: list[str] = []
    try:
        candidates = client.images.list(name=RUNTIME_REPO, filters={"label": f"{MANAGED_LABEL}=1"})
    except docker.errors.DockerException as exc:
        raise EnvironmentFailure(f"cannot list images: {exc}") from exc
    for image in candidates:
        for tag in image.tags:
            if not tag.startswith(f"{RUNTIME_REPO}:") or tag in keep:
                continue
            try:
                client.images.remove(tag, noprune=False)
            except docker.errors.APIError as exc:
                log(f"sbx: kept {tag}: {exc.explanation or exc}")
                continue
            removed.append(tag)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sbx.sandbox.images",
        description="Build (or reuse) the sbx runtime and step images and print their tags.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the tags exist")
    parser.add_argument(
        "--base",
        help=f"registry image for images/runtime.Dockerfile (default: ${BASE_ENV} or mmdebstrap)",
    )
    parser.add_argument("--step-base", help="registry image for images/step.Dockerfile")
    parser.add_argument(
        "--prune", action="store_true", help="remove sbx-runtime tags of older code afterwards"
    )
    args = parser.parse_args(argv)
    try:
        try:
            client = docker.from_env()
            client.ping()
        except docker.errors.DockerException as exc:
            raise EnvironmentFailure(
                f"no Docker engine answers ({exc}): start dockerd or set DOCKER_HOST"
            ) from exc
        tags = build_images(client, force=args.force, base=args.base, step_base=args.step_base)
        if args.prune:
            for tag in prune_runtime_images(client, keep=tags):
                print(f"sbx: removed {tag}", file=sys.stderr)
    except SbxError as exc:
        print(f"sbx: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    for tag in tags:
        print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
