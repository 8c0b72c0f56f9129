"""The one error family whose `diagnostics()` reaches the user.

Every layer raises a subclass of `SbxError`; the CLI prints `diagnostics()` as
one line and exits with `exit_code`. Tracebacks are shown only with `-v`.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130


class SbxError(Exception):
    """Base of every error sbx reports to a user."""

    exit_code: ClassVar[int] = EXIT_ENVIRONMENT

    def diagnostics(self) -> str:
        """One line for the user: what went wrong and how to fix it."""
        return str(self)


class InputError(SbxError):
    """The user's input (a file, a field, a flag) is invalid."""

    exit_code = EXIT_INPUT


class SpecError(InputError):
    """A field of a spec file is invalid; names the file, the field and the fix."""

    def __init__(self, file: str, field: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.reason = reason
        self.line = line
        where = f"{file}:{line}" if line else file
        super().__init__(one_line(f"{where}: {field}: {reason}" if field else f"{where}: {reason}"))


MAX_MESSAGE = 600


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` as one bounded line: a hostile file's values (a key with a newline, a
    900 KB name) must not turn one error line into many or into megabytes."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(flat) <= limit:
        return flat
    keep = (limit - 30) // 2
    return f"{flat[:keep]} ...[{len(flat) - 2 * keep} characters cut]... {flat[-keep:]}"


class EnvironmentFailure(SbxError):
    """The environment failed: no Docker engine, an image missing and unbuildable."""

    exit_code = EXIT_ENVIRONMENT


class RunDirFailure(EnvironmentFailure):
    """The run directory cannot be written: a full disk, a read-only or vanished folder."""


# errno values that mean "the disk under the run directory", not a bug in sbx.
DISK_ERRNOS = frozenset({28, 122, 30, 5})  # ENOSPC, EDQUOT, EROFS, EIO


def is_disk_failure(exc: BaseException) -> bool:
    """True for an OSError that the run directory's file system raised."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def run_dir_failure(out: object, exc: OSError, doing: str) -> RunDirFailure:
    """One line naming the run directory, what sbx was doing and the fix."""
    return RunDirFailure(
        f"cannot write the run directory {out} while {doing}: {exc.strerror or exc}; "
        "free space there or pass --out on another disk")
