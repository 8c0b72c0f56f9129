"""Reading a run directory for verification: signed documents, files, event lines.

Only I/O lives here. Names from Statements are untrusted: a name that leaves
the run directory, or passes through a symbolic link, counts as missing.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sbx.attest.digests import sha256_file
from sbx.attest.errors import EvidenceInputError

ATTESTATIONS_DIR = "attestations"
BUNDLE_FILE = "attestations.intoto.jsonl"
EVENTS_FILE = "events.jsonl"
DOCUMENT_SUFFIXES = (".dsse.json", ".sigstore.json")
MAX_DOCUMENT = 16 << 20  # a Statement larger than this is not sbx's
MAX_BUNDLE = 256 << 20


@dataclass(frozen=True)
class Document:
    """One signed document as found in the run directory."""

    source: str
    data: bytes


def documents(run_dir: Path) -> list[Document]:
    """The signed documents: attestations/*, else the lines of the JSON Lines bundle."""
    if not run_dir.is_dir():
        raise EvidenceInputError(f"{run_dir}: not a directory: pass the run directory "
                                 "that sbx run printed")
    folder = run_dir / ATTESTATIONS_DIR
    if folder.is_dir():
        found = []
        for path in sorted(folder.iterdir()):
            if path.name.endswith(DOCUMENT_SUFFIXES):
                found.append(Document(f"{ATTESTATIONS_DIR}/{path.name}", _read(path)))
        return found
    bundle = run_dir / BUNDLE_FILE
    if bundle.is_file():
        lines = _read(bundle).splitlines()
        return [Document(f"{BUNDLE_FILE}:{i}", line) for i, line in enumerate(lines, 1)
                if line.strip()]
    raise EvidenceInputError(f"{run_dir}: no {ATTESTATIONS_DIR}/ and no {BUNDLE_FILE}: "
                             "this is not an sbx run directory with evidence")


def bundle_bytes(run_dir: Path) -> bytes | None:
    """The JSON Lines copy of the evidence, None when it is missing (or not a file)."""
    path = run_dir / BUNDLE_FILE
    try:
        if path.is_symlink() or not path.is_file():
            return None
        if path.stat().st_size > MAX_BUNDLE:
            return b"\0 too large"
        return path.read_bytes()
    except OSError:
        return None


def _read(path: Path) -> bytes:
    try:
        if path.is_symlink() or not path.is_file():
            return b""
        if path.stat().st_size > MAX_DOCUMENT:
            return b""
        return path.read_bytes()
    except OSError as exc:
        raise EvidenceInputError(f"{path}: cannot read ({exc.strerror})") from exc


def file_sha256(run_dir: Path, name: str) -> str | None:
    """sha256 of a run-directory file named by a Statement; None if absent or escaping."""
    root = run_dir.resolve()
    path = root / name
    try:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return None
        current = root
        for part in Path(name).parts:
            current = current / part
            if current.is_symlink():
                return None
        if not path.is_file():
            return None
        return sha256_file(path)
    except OSError:
        return None


def artifact_sha256(path: Path) -> str:
    """sha256 of a release artifact given on the command line."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise EvidenceInputError(f"{path}: cannot read the artifact ({exc.strerror}): "
                                 "pass an existing file to --artifact") from exc


def event_digests(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Per step, sha256 and count of its lines in events.jsonl, in file order."""
    path = run_dir / EVENTS_FILE
    hashes: dict[str, hashlib._Hash] = defaultdict(hashlib.sha256)
    counts: dict[str, int] = defaultdict(int)
    try:
        if path.is_symlink() or not path.is_file():
            return {}
        with path.open("rb") as fh:
            for line in fh:
                try:
                    step = json.loads(line).get("step")
                except (ValueError, AttributeError):
                    continue
                if isinstance(step, str):
                    hashes[step].update(line if line.endswith(b"\n") else line + b"\n")
                    counts[step] += 1
    except OSError:
        return {}
    return {step: (h.hexdigest(), counts[step]) for step, h in hashes.items()}
