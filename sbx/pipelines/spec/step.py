"""The step file: pydantic models, validation and one-line errors.

`load_step(path)` is the entry point: it loads the YAML safely
(`sbx.pipelines.spec.loader`), validates it against `StepSpec` and turns the first
problem into a `SpecError` naming the file, line, dotted field and the fix.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from sbx.errors import SpecError
from sbx.pipelines.spec.egress import AllowEntry, allow_rule
from sbx.pipelines.spec.errors import _kind, to_spec_error
from sbx.pipelines.spec.loader import LoadedDoc, load_yaml
from sbx.sandbox import policy as pol
from sbx.sandbox.pull import ImageError, ImageRef, PullPolicy

# --------------------------------------------------------------------------- refusals

_FORBIDDEN_ROOTS: Final = ("/proc", "/sys", "/dev", "/run", "/var/run")
_DOCKER_SOCKETS: Final = frozenset({"docker.sock", "containerd.sock", "podman.sock"})
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_ENV_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Docker image reference: loose on purpose (the engine is the authority) but no
# whitespace, no leading '-' (never an option to a CLI) and bounded length.
_IMAGE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_USER_PART: Final = r"(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})"
_USER_RE: Final = re.compile(rf"^{_USER_PART}(?::{_USER_PART})?$")
_MEMORY_RE: Final = re.compile(r"^([0-9]{1,15})([kmg]?)$", re.IGNORECASE)
_GLOB_CHARS: Final = frozenset("*?[]")

MIB: Final = 1024 * 1024
MEMORY_MIN: Final = 6 * MIB  # Docker refuses less than 6 MiB.
MEMORY_MAX: Final = 256 * 1024 * MIB
DISK_MIN: Final = 16 * MIB
DISK_MAX: Final = 64 * 1024 * 1024 * MIB  # 64 TiB: a bound, however generous


def _size(n: int) -> str:
    for unit, scale in (("g", 1024 * MIB), ("m", MIB), ("k", 1024)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


# --------------------------------------------------------------------------- field checks


def _check_container_path(value: str) -> str:
    """An absolute, normalised path inside the container that is safe to use or mount."""
    if "\x00" in value or any(ord(c) < 32 for c in value):
        raise ValueError("contains a control character; remove it")
    if any(part in _DOCKER_SOCKETS for part in value.split("/")):
        raise ValueError(
            f"{value!r} is a container-engine socket; sbx never gives a step the Docker socket"
        )
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is relative; write an absolute path such as /workspace")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} contains '..'; write the path without it")
    if posixpath.normpath(value) != value or value.startswith("//"):
        raise ValueError(
            f"{value!r} is not normalised; write {posixpath.normpath(value)!r} "
            "(no '.', '//' or trailing '/')"
        )
    if value == "/":
        raise ValueError("'/' is the container root; use a directory such as /workspace")
    for root in _FORBIDDEN_ROOTS:
        if value == root or value.startswith(root + "/"):
            raise ValueError(
                f"{value!r} is under {root}, which belongs to the kernel or runtime; "
                "use a directory such as /workspace"
            )
    if ":" in value or "," in value:
        # Both are separators in Docker's mount syntax.
        raise ValueError(f"{value!r} contains ':' or ','; rename the directory")
    return value


def _check_workspace_path(value: str, *, globs: bool) -> str:
    """A path relative to the workspace that cannot escape it."""
    if not value:
        raise ValueError("is empty; write a path relative to the workspace, e.g. src/")
    if any(ord(c) < 32 for c in value) or "\\" in value:
        raise ValueError(f"{value!r} contains a control character or '\\'; use '/' paths")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; write it relative to the workspace, e.g. src/")
    if value.startswith("~"):
        raise ValueError(f"{value!r} starts with '~'; write it relative to the workspace")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} contains '..'; paths must stay inside the workspace")
    if not globs and _GLOB_CHARS & set(value):
        raise ValueError(f"{value!r} is a glob; outputs are exact paths, e.g. dist/")
    return value


def _input_path(value: str) -> str:
    return _check_workspace_path(value, globs=True)


def _output_path(value: str) -> str:
    return _check_workspace_path(value, globs=False)


def _env_name(value: str) -> str:
    if not _ENV_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid variable name; use letters, digits and '_', "
            "not starting with a digit"
        )
    if value.upper().startswith("SBX_"):
        raise ValueError(f"{value!r} starts with SBX_, which sbx reserves; rename the variable")
    return value


def _env_value(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which no environment can hold; remove it")
    return value


InputPath = Annotated[str, Field(strict=True), AfterValidator(_input_path)]
OutputPath = Annotated[str, Field(strict=True), AfterValidator(_output_path)]
ContainerPath = Annotated[str, Field(strict=True), AfterValidator(_check_container_path)]
EnvName = Annotated[str, Field(strict=True), AfterValidator(_env_name)]
EnvValue = Annotated[str, Field(strict=True), AfterValidator(_env_value)]


def _run_value(value: Any) -> Any:
    """Accept a non-empty script string or a non-empty list of non-empty argv lists."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("no command given; write a shell script or a list of argv lists")
        if "\x00" in value:
            raise ValueError("contains a NUL byte; remove it")
        return value
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"must be a script string or a list of argv lists, not {_kind(value)}; "
            'write run: "make" or run: [["make", "all"]]'
        )
    if not value:
        raise ValueError("no command given; write a shell script or a list of argv lists")
    commands: list[tuple[str, ...]] = []
    for i, argv in enumerate(value):
        if isinstance(argv, str):
            raise ValueError(
                f"item {i} is a string, so run mixes forms; write a single script string "
                'or a list of argv lists like [["make", "all"]]'
            )
        if not isinstance(argv, list | tuple) or not argv:
            raise ValueError(f'item {i} must be a non-empty argv list like ["make", "all"]')
        for j, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise ValueError(
                    f"item {i} argument {j} is {_kind(arg)}; quote it so it is a string"
                )
            if "\x00" in arg:
                raise ValueError(f"item {i} argument {j} contains a NUL byte; remove it")
        if not argv[0]:
            raise ValueError(f"item {i} has an empty program name; name the program")
        commands.append(tuple(argv))
    return tuple(commands)



def parse_memory(value: str | int, low: int = 0, high: int = 0) -> int:
    """Bytes for a size: an integer (bytes) or digits with a k/m/g suffix, within
    `low`..`high` (default: the memory bounds, MEMORY_MIN..MEMORY_MAX)."""
    low, high = low or MEMORY_MIN, high or MEMORY_MAX
    if isinstance(value, bool):
        raise ValueError("must be a size like 512m or 1g, not a boolean")
    if isinstance(value, int):
        size = value
    else:
        match = _MEMORY_RE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size; write e.g. 512m or 2g (k, m, g suffixes)")
        size = (
            int(match.group(1))
            * {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB}[match.group(2).lower()]
        )
    if not low <= size <= high:
        raise ValueError(f"{value!r} is outside {_size(low)}..{_size(high)}; "
                         "choose a size in that range")
    return size


# --------------------------------------------------------------------------- models


class EgressMode(StrEnum):
    """`enforce` denies and records; `audit` allows and records a would-deny violation."""

    ENFORCE = "enforce"
    AUDIT = "audit"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EgressSpec(_Model):
    """Where the step may connect; everything else is denied (or recorded, in audit mode)."""

    mode: EgressMode = EgressMode.ENFORCE
    allow: tuple[AllowEntry, ...] = ()
    proxy_env: bool = Field(default=False, strict=True)
    # A PEM file of CAs the gateway trusts for upstream TLS of inspected hosts, besides the
    # system store (internal mirrors); relative to the step file.
    upstream_ca: StrictStr | None = None


class Resources(_Model):
    """Limits for the step container; defaults suit a typical build step."""

    cpus: float = Field(default=2.0, strict=True, ge=0.05, le=256)
    memory: StrictStr | StrictInt = "1g"
    pids: int = Field(default=512, strict=True, ge=16, le=65536)
    timeout: int = Field(default=3600, strict=True, ge=1, le=7 * 24 * 3600)
    # What the step may write to its container's writable layer (the host's disk).
    disk: StrictStr | StrictInt = "10g"

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int) -> str | int:
        parse_memory(value)
        return value

    @field_validator("disk")
    @classmethod
    def _disk(cls, value: str | int) -> str | int:
        parse_memory(value, low=DISK_MIN, high=DISK_MAX)
        return value

    @property
    def disk_bytes(self) -> int:
        """`disk` in bytes."""
        return parse_memory(self.disk, low=DISK_MIN, high=DISK_MAX)

    @property
    def memory_bytes(self) -> int:
        """`memory` in bytes."""
        return parse_memory(self.memory)


class StepSpec(_Model):
    """One build step: what runs, in which image, with which files, network and limits."""

    name: str = Field(strict=True, pattern=_NAME_RE.pattern)
    image: str = Field(strict=True, pattern=_IMAGE_RE.pattern)
    # When sbx pulls the image, on the host side before the sandbox exists (GitLab's values).
    pull: PullPolicy = PullPolicy.IF_NOT_PRESENT
    run: Annotated[str | tuple[tuple[str, ...], ...], BeforeValidator(_run_value)]
    workdir: ContainerPath = "/workspace"
    inputs: tuple[InputPath, ...] = ()
    outputs: tuple[OutputPath, ...] = ()
    egress: EgressSpec = Field(default_factory=EgressSpec)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    secrets: tuple[EnvName, ...] = ()
    resources: Resources = Field(default_factory=Resources)
    user: Annotated[StrictStr, Field(pattern=_USER_RE.pattern)] | None = None
    read_only_rootfs: bool = Field(default=False, strict=True)
    tmpfs: tuple[ContainerPath, ...] = ()

    # Where the file and each allow entry came from, set by load_step (not part of the data).
    _source_file: str = PrivateAttr(default="")
    _allow_lines: tuple[int | None, ...] = PrivateAttr(default=())

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a name twice; list each secret once")
        clash = sorted(set(value) & set(info.data.get("env") or {}))
        if clash:
            raise ValueError(f"{clash[0]} is both in env and in secrets; keep it in one of them")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        try:
            ImageRef.parse(value)
        except ImageError:
            raise ValueError(f"{value!r}: the digest after @ must be sha256: and 64 lowercase "
                             "hex digits (as `docker inspect` prints it)") from None
        return value

    @field_validator("tmpfs")
    @classmethod
    def _tmpfs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("lists a path twice; list each path once")
        return value

    def policy(self, source_file: str | None = None) -> pol.Policy:
        """The egress `Policy` for this step; each rule's source is "file:line" when known.

        `source_file` defaults to the file `load_step` read this spec from.
        """
        file = self._source_file if source_file is None else source_file
        rules = []
        for i, entry in enumerate(self.egress.allow):
            line = self._allow_lines[i] if i < len(self._allow_lines) else None
            source = f"{file}:{line}" if file and line else file
            rules.append(allow_rule(entry, source))
        return pol.Policy(mode=self.egress.mode.value, rules=tuple(rules))



# --------------------------------------------------------------------------- entry points


def validate_step(loaded: LoadedDoc) -> StepSpec:
    """Validate a loaded document as a step; raise `SpecError` for the first problem."""
    try:
        spec = StepSpec.model_validate(loaded.data)
    except ValidationError as exc:
        raise to_spec_error(loaded, StepSpec, exc) from None
    spec._source_file = str(loaded.path)
    spec._allow_lines = tuple(
        loaded.line_of(("egress", "allow", i)) for i in range(len(spec.egress.allow))
    )
    if spec.egress.upstream_ca is not None:
        read_upstream_ca(spec.egress.upstream_ca, loaded.path,
                         loaded.line_of(("egress", "upstream_ca")))
    return spec


def read_upstream_ca(value: str, step_file: Path, line: int | None = None,
                     field: str = "egress.upstream_ca") -> str:
    """The PEM text of `egress.upstream_ca` (relative to the step file); `SpecError` when it
    cannot be read or holds no certificate."""
    from cryptography import x509

    path = (Path(step_file).parent / value) if not Path(value).is_absolute() else Path(value)
    try:
        data = path.read_bytes()[: 1 << 20]
    except OSError as exc:
        raise SpecError(str(step_file), field, f"cannot read {value!r} ({exc.strerror}); "
                        "name a PEM file of CA certificates, relative to the step file",
                        line) from None
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise SpecError(str(step_file), field, f"{value!r} holds no PEM certificate; give the "
                        "CA certificates as PEM (-----BEGIN CERTIFICATE-----)", line)
    return data.decode("ascii", "replace")


def load_step(path: Path) -> StepSpec:
    """Load and validate a step file; every refusal is a one-line `SpecError` (exit 2)."""
    return validate_step(load_yaml(Path(path)))


def spec_digest(loaded: LoadedDoc) -> str:
    """``sha256:<hex>`` of the file's raw bytes, as recorded in evidence."""
    return "sha256:" + hashlib.sha256(loaded.raw).hexdigest()


def step_json_schema() -> dict[str, Any]:
    """JSON Schema of a step file, for ``sbx schema``."""
    return StepSpec.model_json_schema()
