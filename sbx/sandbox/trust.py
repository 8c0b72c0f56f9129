"""The run CA in the step: a bundle file (the image's own CAs plus the run CA) and the
variables common clients read it from. Only for a step whose gateway inspects TLS."""

from __future__ import annotations

import io
import posixpath
import tarfile
from typing import Any, Final

from docker.errors import APIError, NotFound

# The image's bundle, where Debian, Ubuntu and Alpine keep it (the first one found is used).
IMAGE_BUNDLES: Final = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                        "/etc/ssl/cert.pem")
BUNDLE: Final = "/etc/ssl/certs/sbx-run-ca-bundle.pem"
CA_VARIABLES: Final = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
                       "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CARGO_HTTP_CAINFO")
_MAX_BUNDLE: Final = 4 << 20


def bundle_path(workdir: str, read_only_rootfs: bool) -> str:
    """Where the bundle goes: beside the image's bundle, or in the workdir when the root
    file system is read-only (the engine refuses to write into it)."""
    return posixpath.join(workdir, ".sbx-ca-bundle.pem") if read_only_rootfs else BUNDLE


def ca_env(path: str) -> dict[str, str]:
    """The variables that point clients at the bundle."""
    return {name: path for name in CA_VARIABLES}


def _image_bundle(api: Any, cid: str) -> bytes:
    for path in IMAGE_BUNDLES:
        try:
            stream, _ = api.get_archive(cid, path)
        except (NotFound, APIError):
            continue
        raw = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.next()
            if member is None or not member.isfile() or member.size > _MAX_BUNDLE:
                continue
            extracted = tar.extractfile(member)
            if extracted is not None:
                return extracted.read()
    return b""


def install_bundle(api: Any, cid: str, path: str, ca_pem: str, uid: int, gid: int) -> None:
    """Write the image's CAs plus the run CA to `path` in the created (not started) step."""
    data = _image_bundle(api, cid).rstrip(b"\n") + b"\n" + ca_pem.encode("ascii")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(posixpath.basename(path))
        info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, gid
        tar.addfile(info, io.BytesIO(data))
    api.put_archive(cid, posixpath.dirname(path), buf.getvalue())
