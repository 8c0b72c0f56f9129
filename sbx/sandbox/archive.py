"""Copying files into and out of a step container through the Docker API.

Inputs are packed into a tar that only holds regular files and directories.
Outputs come back as the engine's tar stream and are unpacked here, member by
member, without ever following or creating a link, inside size and count limits.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from sbx.errors import SbxError


class ArchiveError(SbxError):
    """An input or output could not be copied safely; the step fails."""

    exit_code = 1


@dataclass(frozen=True)
class OutputLimits:
    """Bounds on what a step may hand back."""

    max_bytes: int = 1 << 30
    max_files: int = 10_000


@dataclass(frozen=True)
class OutputFile:
    """One file copied out of a step, by its path relative to the workdir."""

    path: str
    sha256: str
    size: int


def pack_inputs(files: Iterable[tuple[Path, str]], root: str, uid: int = 0,
                gid: int = 0) -> bytes:
    """A tar that creates directory `root` and puts each (source, relative name) in it.

    `root` is the workdir without its leading slash when the tar is extracted at
    `/`, or "." when it is extracted into the workdir itself (a read-only rootfs).
    """
    buf = io.BytesIO()
    root = root.strip("/") or "."
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()

        def add_dir(name: str) -> None:
            parts = PurePosixPath(name).parts
            for i in range(1, len(parts) + 1):
                path = "/".join(parts[:i])
                if path not in made:
                    made.add(path)
                    info = tarfile.TarInfo(path)
                    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
                    tar.addfile(info)

        add_dir(root)
        for source, rel in files:
            name = posixpath.join(root, rel)
            if source.is_symlink():
                raise ArchiveError(f"input {rel} is a symbolic link: copy the file it points to")
            if source.is_dir():
                add_dir(name)
                continue
            add_dir(posixpath.dirname(name))
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid = source.stat().st_size, uid, gid
            info.mode = 0o755 if source.stat().st_mode & 0o111 else 0o644
            with source.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def pack_files(files: Mapping[str, bytes], prefix: str = "") -> bytes:
    """A reproducible tar of in-memory files (name -> bytes, mode 0644, mtime 0).

    For the runtime's own scripts and configuration, and build contexts: data sbx
    holds, not a user's workspace (that is `pack_inputs`).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(posixpath.join(prefix, name) if prefix else name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _StreamReader(io.RawIOBase):
    """A file object over the engine's chunk iterator, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def unpack_output(chunks: Iterator[bytes], requested: str, dest_root: Path,
                  limits: OutputLimits, used: list[int]) -> list[OutputFile]:
    """Unpack one output's tar stream under `dest_root`; `used` is [bytes, files] so far."""
    base = posixpath.normpath(requested.rstrip("/"))
    top = posixpath.basename(base)
    parent = posixpath.dirname(base)
    reader = io.BufferedReader(_StreamReader(chunks), buffer_size=1 << 20)
    try:
        return _unpack(reader, requested, top, parent, dest_root, limits, used)
    except tarfile.TarError as exc:
        raise ArchiveError(f"output {requested}: unreadable archive: {exc}") from None


def _unpack(reader: IO[bytes], requested: str, top: str, parent: str, dest_root: Path,
            limits: OutputLimits, used: list[int]) -> list[OutputFile]:
    found: list[OutputFile] = []
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            name = posixpath.normpath(member.name)
            if (name != top and not name.startswith(top + "/")) or ".." in name.split("/"):
                raise ArchiveError(f"output {requested}: entry {member.name!r} leaves the output")
            rel = posixpath.join(parent, name) if parent else name
            if member.issym() or member.islnk():
                raise ArchiveError(
                    f"output {rel} is a link: outputs must be regular files and directories")
            target = dest_root.joinpath(*PurePosixPath(rel).parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise ArchiveError(f"output {rel} is not a regular file")
            used[0] += member.size
            used[1] += 1
            if used[0] > limits.max_bytes:
                raise ArchiveError(f"outputs exceed {limits.max_bytes} bytes at {rel}")
            if used[1] > limits.max_files:
                raise ArchiveError(f"outputs exceed {limits.max_files} files at {rel}")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            digest = hashlib.sha256()
            with target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            found.append(OutputFile(path=rel, sha256=digest.hexdigest(), size=member.size))
    return found
