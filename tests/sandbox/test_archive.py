"""Copying inputs in and outputs out as tar streams (no Docker)."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbx.sandbox.archive import (
    ArchiveError,
    OutputFile,
    OutputLimits,
    pack_files,
    pack_inputs,
    unpack_output,
)

# --------------------------------------------------------------------------- pack_inputs


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "src" / "pkg" / "a.py").write_text("print('a')\n")
    (ws / "build.sh").write_text("#!/bin/sh\n")
    (ws / "build.sh").chmod(0o750)
    return ws


def test_pack_inputs_puts_files_under_the_workdir(workspace: Path) -> None:
    files = [
        (workspace / "src", "src"),
        (workspace / "src" / "pkg", "src/pkg"),
        (workspace / "src" / "pkg" / "a.py", "src/pkg/a.py"),
        (workspace / "build.sh", "build.sh"),
    ]
    data = pack_inputs(files, "/workspace/job", uid=1000, gid=1001)
    members = _members(data)
    assert set(members) == {
        "workspace",
        "workspace/job",
        "workspace/job/src",
        "workspace/job/src/pkg",
        "workspace/job/src/pkg/a.py",
        "workspace/job/build.sh",
    }
    assert all(m.isdir() or m.isfile() for m in members.values())
    assert _content(data, "workspace/job/src/pkg/a.py") == b"print('a')\n"
    assert members["workspace/job/build.sh"].mode == 0o755
    assert members["workspace/job/src/pkg/a.py"].mode == 0o644
    assert {(m.uid, m.gid) for m in members.values()} == {(1000, 1001)}


def test_pack_inputs_creates_missing_parent_directories(workspace: Path) -> None:
    data = pack_inputs([(workspace / "src" / "pkg" / "a.py", "src/pkg/a.py")], "workspace")
    members = _members(data)
    assert members["workspace/src"].isdir() and members["workspace/src/pkg"].isdir()
    # Each directory appears once, before anything inside it.
    names = list(members)
    assert names.index("workspace/src/pkg") < names.index("workspace/src/pkg/a.py")


def test_pack_inputs_into_the_workdir_itself(workspace: Path) -> None:
    """Root "." is for extracting into the workdir of a read-only root filesystem."""
    data = pack_inputs([(workspace / "build.sh", "build.sh")], ".")
    names = set(_members(data))
    assert names <= {".", "./build.sh"} and "./build.sh" in names


def test_pack_inputs_refuses_symlinks(workspace: Path) -> None:
    (workspace / "link").symlink_to(workspace / "build.sh")
    with pytest.raises(ArchiveError, match="link"):
        pack_inputs([(workspace / "link", "link")], "workspace")


def test_pack_inputs_refuses_a_symlink_to_a_directory(workspace: Path, tmp_path: Path) -> None:
    (workspace / "etc").symlink_to(tmp_path)
    with pytest.raises(ArchiveError):
        pack_inputs([(workspace / "etc", "etc")], "workspace")


# --------------------------------------------------------------------------- unpack_output


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _chunks(data: bytes, sizes: tuple[int, ...] = (7, 1, 513, 3, 4096)) -> Iterator[bytes]:
    """The engine's stream, cut at odd places."""
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unpack(
    data: bytes,
    requested: str,
    dest: Path,
    limits: OutputLimits | None = None,
    used: list[int] | None = None,
) -> list[OutputFile]:
    return unpack_output(
        _chunks(data),
        requested,
        dest,
        limits or OutputLimits(),
        used if used is not None else [0, 0],
    )


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def test_regular_files_land_under_dest_with_their_digests(tmp_path: Path) -> None:
    big = os.urandom(300_000)
    data = _tar(
        _dir("dist"),
        _file("dist/app.whl", b"wheel"),
        _dir("dist/sub"),
        _file("dist/sub/big.bin", big),
        _file("dist/empty", b""),
    )
    dest = tmp_path / "out"
    found = _unpack(data, "dist/", dest)
    assert found == [
        OutputFile("dist/app.whl", _sha(b"wheel"), 5),
        OutputFile("dist/sub/big.bin", _sha(big), len(big)),
        OutputFile("dist/empty", _sha(b""), 0),
    ]
    assert (dest / "dist" / "sub" / "big.bin").read_bytes() == big
    assert (dest / "dist" / "empty").read_bytes() == b""
    assert _files_under(dest) == {
        "dist",
        "dist/app.whl",
        "dist/sub",
        "dist/sub/big.bin",
        "dist/empty",
    }


def test_nested_output_keeps_its_parent_path(tmp_path: Path) -> None:
    """get_archive of build/out names entries out/...; they belong under build/out."""
    data = _tar(_dir("out"), _file("out/report.txt", b"ok"))
    found = _unpack(data, "build/out", tmp_path)
    assert [f.path for f in found] == ["build/out/report.txt"]
    assert (tmp_path / "build" / "out" / "report.txt").read_bytes() == b"ok"


def test_single_file_output(tmp_path: Path) -> None:
    found = _unpack(_tar(_file("report.json", b"{}")), "reports/report.json", tmp_path)
    assert found == [OutputFile("reports/report.json", _sha(b"{}"), 2)]


@pytest.mark.parametrize("sizes", [(1,), (2, 3), (511, 513), (10_000,)])
def test_chunk_boundaries_do_not_matter(tmp_path: Path, sizes: tuple[int, ...]) -> None:
    payload = bytes(range(256)) * 9
    data = _tar(_dir("dist"), _file("dist/x", payload))
    found = unpack_output(_chunks(data, sizes), "dist", tmp_path, OutputLimits(), [0, 0])
    assert found[0].sha256 == _sha(payload)


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_special("dist/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_special("dist/rel", tarfile.SYMTYPE, "../../x"), "link"),
        (_special("dist/hard", tarfile.LNKTYPE, "dist/app.whl"), "link"),
        (_special("dist/tty", tarfile.CHRTYPE), "not a regular file"),
        (_special("dist/disk", tarfile.BLKTYPE), "not a regular file"),
        (_special("dist/fifo", tarfile.FIFOTYPE), "not a regular file"),
        (_file("dist/../../escape", b"x"), "leaves the output"),
        (_file("dist/../sibling", b"x"), "leaves the output"),
        (_file("../escape", b"x"), "leaves the output"),
        (_file("/etc/cron.d/evil", b"x"), "leaves the output"),
        (_file("/dist/abs", b"x"), "leaves the output"),
        (_file("other/file", b"x"), "leaves the output"),
        (_file("distractor/file", b"x"), "leaves the output"),
    ],
    ids=[
        "symlink-abs",
        "symlink-rel",
        "hardlink",
        "chardev",
        "blockdev",
        "fifo",
        "dotdot",
        "dotdot-sibling",
        "leading-dotdot",
        "absolute",
        "absolute-same-name",
        "other-top",
        "prefix-lookalike",
    ],
)
def test_unsafe_members_are_refused_and_nothing_escapes(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], why: str
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    data = _tar(_dir("dist"), _file("dist/app.whl", b"wheel"), member)
    with pytest.raises(ArchiveError, match=why):
        _unpack(data, "dist", dest)
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    assert _files_under(tmp_path) <= {"out", "out/dist", "out/dist/app.whl"}


def test_size_limit_is_enforced(tmp_path: Path) -> None:
    data = _tar(_dir("dist"), _file("dist/a", b"x" * 60), _file("dist/b", b"y" * 60))
    with pytest.raises(ArchiveError, match="100 bytes"):
        _unpack(data, "dist", tmp_path, OutputLimits(max_bytes=100))
    assert not (tmp_path / "dist" / "b").exists()


def test_size_limit_exactly_reached_is_fine(tmp_path: Path) -> None:
    data = _tar(_file("dist", b"x" * 100))
    assert len(_unpack(data, "dist", tmp_path, OutputLimits(max_bytes=100))) == 1


def test_file_count_limit_is_enforced(tmp_path: Path) -> None:
    data = _tar(_dir("dist"), *(_file(f"dist/{i}", b"") for i in range(3)))
    with pytest.raises(ArchiveError, match="2 files"):
        _unpack(data, "dist", tmp_path, OutputLimits(max_files=2))


def test_directories_do_not_count_as_files(tmp_path: Path) -> None:
    data = _tar(_dir("dist"), *(_dir(f"dist/d{i}") for i in range(5)), _file("dist/f", b""))
    assert len(_unpack(data, "dist", tmp_path, OutputLimits(max_files=1))) == 1


def test_limits_hold_across_outputs(tmp_path: Path) -> None:
    """`used` carries the total over every output of a step."""
    limits = OutputLimits(max_bytes=100, max_files=10)
    used = [0, 0]
    _unpack(_tar(_file("a.bin", b"x" * 70)), "a.bin", tmp_path, limits, used)
    assert used == [70, 1]
    with pytest.raises(ArchiveError):
        _unpack(_tar(_file("b.bin", b"x" * 31)), "b.bin", tmp_path, limits, used)


def test_truncated_stream_is_an_error_not_a_partial_success(tmp_path: Path) -> None:
    data = _tar(_dir("dist"), _file("dist/a", os.urandom(4096)))
    with pytest.raises((ArchiveError, tarfile.TarError)):
        _unpack(data[: 1024 + 512], "dist", tmp_path)


@pytest.mark.parametrize("cut", [0, 100, 1536], ids=["empty", "in-header", "in-data"])
def test_truncated_stream_is_reported_as_an_archive_error(tmp_path: Path, cut: int) -> None:
    data = _tar(_dir("dist"), _file("dist/a", os.urandom(4096)))
    with pytest.raises(ArchiveError):
        _unpack(data[:cut], "dist", tmp_path)


def test_pack_files_is_reproducible_and_honours_the_prefix() -> None:
    files = {"a.py": b"print(1)\n", "cfg.json": b"{}"}
    packed = pack_files(files, prefix="srv")
    assert packed == pack_files(dict(files), prefix="srv")  # same bytes every time
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mode, m.mtime, m.isfile()) for m in members] == [
            ("srv/a.py", 0o644, 0, True), ("srv/cfg.json", 0o644, 0, True)]
        extracted = tar.extractfile("srv/a.py")
        assert extracted is not None and extracted.read() == b"print(1)\n"
