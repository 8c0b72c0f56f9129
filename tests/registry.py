"""A real container registry on this machine, for the image-pull tests.

Debian's ``docker-registry`` package (the CNCF distribution registry) in an image made the
way sbx makes its own (mmdebstrap + ``docker import``, no registry needed to get it), run
with a config of its own: ``http.addr: :5000``, filesystem storage, and either no auth or
htpasswd auth. Its port is published on 127.0.0.1 only; the engine pushes to and pulls from
``localhost:PORT`` without TLS (127.0.0.0/8 is an insecure registry by default).

Everything a registry creates (its container, the images pushed to it and pulled from it)
carries ``sbx.test=<tag>`` and is removed by ``close()``. The registry image itself is kept,
like sbx's own images: it is made once per machine and reused.
"""

from __future__ import annotations

import io
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import docker
from docker.errors import APIError, NotFound

from sbx.sandbox import image_build as images
from sbx.sandbox.archive import pack_files

REGISTRY_REPO = "sbx-test-registry"
TEST_LABEL = "sbx.test"
USER, PASSWORD = "sbx", "correct horse battery staple"

_RECIPE = images._DebianRecipe(  # built exactly like sbx's base images
    REGISTRY_REPO, ("docker-registry", "apache2-utils"),
    ("/usr/bin/docker-registry", "serve", "/etc/sbx-registry/config.yml"))

_CONFIG = """\
version: 0.1
log:
  level: info
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: /srv/registry}
  delete: {enabled: true}
http:
  addr: :5000
"""
_AUTH = """\
auth:
  htpasswd:
    realm: sbx-test
    path: /srv/registry/htpasswd
"""


def registry_image(client: docker.DockerClient) -> str:
    """``sbx-test-registry:<recipe>``, built with mmdebstrap on first use."""
    tag = f"{REGISTRY_REPO}:{_RECIPE.digest}"
    with images._build_lock(REGISTRY_REPO):
        if images._image_labels(client, tag) is None:
            images._build_debian_image(client, _RECIPE, tag, print)
    return tag


@dataclass
class Registry:
    """A running registry; ``host`` is ``localhost:PORT``."""

    client: docker.DockerClient
    auth: bool = False
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    host: str = ""
    container_id: str = ""
    pushed: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return {TEST_LABEL: self.tag, "sbx.role": "test-registry"}

    def start(self) -> Registry:
        api = self.client.api
        image = registry_image(self.client)
        config = _CONFIG + (_AUTH if self.auth else "")
        script = "exec /usr/bin/docker-registry serve /etc/sbx-registry/config.yml"
        if self.auth:  # bcrypt, as the registry requires: made by the image's own htpasswd
            script = (f"htpasswd -Bbn '{USER}' '{PASSWORD}' > /srv/registry/htpasswd && "
                      + script)
        self.container_id = api.create_container(
            image, command=["/bin/sh", "-ec", script], user="65534:65534",
            name=f"sbx-test-{self.tag}-registry", labels=self.labels,
            ports=[5000],
            host_config=api.create_host_config(
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                port_bindings={5000: ("127.0.0.1", None)},
                tmpfs={"/srv/registry": "rw,mode=1777,size=2g"}))["Id"]
        try:
            api.put_archive(self.container_id, "/etc",
                            pack_files({"config.yml": config.encode()}, prefix="sbx-registry"))
            api.start(self.container_id)
            port = api.port(self.container_id, 5000)[0]["HostPort"]
            self.host = f"localhost:{port}"
            self._wait()
        except BaseException:
            self.close()
            raise
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # htpasswd: up, and asking for credentials
                    return
            except OSError:
                pass
            state = self.client.api.inspect_container(self.container_id)["State"]
            if not state.get("Running"):
                logs = self.client.api.logs(self.container_id).decode(errors="replace")
                raise RuntimeError(f"the registry exited: {logs[-500:]}")
            time.sleep(0.2)
        raise RuntimeError("the registry did not answer within 30 s")

    def push(self, source: str, ref: str, *, login: bool = False) -> str:
        """Tag ``source`` as ``HOST/ref`` and push it; returns the pushed repo digest."""
        repository, _, tag = f"{self.host}/{ref}".rpartition(":")
        api = self.client.api
        api.tag(source, repository, tag)
        self.pushed.append(f"{repository}:{tag}")
        auth = {"username": USER, "password": PASSWORD} if login else None
        digest = ""
        for chunk in api.push(repository, tag, stream=True, decode=True, auth_config=auth):
            if chunk.get("error"):
                raise RuntimeError(f"push of {repository}:{tag} failed: {chunk['error']}")
            aux = chunk.get("aux") or {}
            digest = aux.get("Digest", digest)
        if not digest:
            raise RuntimeError(f"push of {repository}:{tag} reported no digest")
        return str(digest)

    def forget(self, ref: str) -> None:
        """Remove every local image of ``HOST/ref`` so the next use must pull."""
        repository = f"{self.host}/{ref}".rpartition(":")[0]
        for image in self.client.api.images(name=repository):
            for name in (image.get("RepoTags") or []) + (image.get("RepoDigests") or []):
                try:
                    self.client.api.remove_image(name, force=True, noprune=False)
                except NotFound:
                    pass

    def close(self) -> None:
        """Remove the registry container and every local image of its repositories."""
        api = self.client.api
        if self.host:
            for image in api.images():
                names = (image.get("RepoTags") or []) + (image.get("RepoDigests") or [])
                for name in names:
                    if name.startswith(f"{self.host}/"):
                        try:
                            api.remove_image(name, force=True, noprune=False)
                        except (NotFound, APIError):
                            pass
        if self.container_id:
            try:
                api.remove_container(self.container_id, force=True, v=True)
            except NotFound:
                pass


def variant_image(client: docker.DockerClient, base: str, marker: str, tag: str) -> str:
    """``base`` plus one file, built offline: the same content as ``base`` except the file,
    so a tag moved to it names another digest. Labelled for removal by the caller."""
    dockerfile = f"FROM {base}\nCOPY marker /etc/sbx-marker\nLABEL {TEST_LABEL}={tag}\n"
    context = io.BytesIO(pack_files({"Dockerfile": dockerfile.encode(),
                                     "marker": marker.encode()}))
    image, _ = client.images.build(fileobj=context, custom_context=True, pull=False, rm=True,
                                   forcerm=True, network_mode="none",
                                   tag=f"sbx-test-variant:{tag}-{marker}")
    return str(image.id)
