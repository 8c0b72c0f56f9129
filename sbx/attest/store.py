"""Where evidence goes in a run directory.

    attestations/<step>.link.dsse.json         one file per Statement (local key), or
    attestations/<step>.link.sigstore.json     a Sigstore bundle v0.3 per Statement
    attestations/provenance.dsse.json
    attestations.intoto.jsonl                  every document of the run, one per line
    attestations/<stem>.statement.json         unsigned payloads, only when signing failed
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from sbx.attest.signing.interface import Signed
from sbx.attest.statements import Payload
from sbx.attest.verify.evidence import ATTESTATIONS_DIR, BUNDLE_FILE


def _write(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _write_all(run_dir: Path, files: Sequence[tuple[str, str]]) -> list[Path]:
    """Write (name, text) pairs into attestations/."""
    folder = run_dir / ATTESTATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        _write(folder / name, text)
    return [folder / name for name, _ in files]


def write_signed(run_dir: Path, signed: Sequence[Signed]) -> list[Path]:
    """Write each signed document and the JSON Lines bundle; returns the files written."""
    written = _write_all(run_dir, [(f"{s.payload.stem}{s.suffix}", s.document) for s in signed])
    lines = "".join(json.dumps(json.loads(s.document), separators=(",", ":")) + "\n"
                    for s in signed)
    _write(run_dir / BUNDLE_FILE, lines)
    return [*written, run_dir / BUNDLE_FILE]


def write_unsigned(run_dir: Path, payloads: Sequence[Payload]) -> list[Path]:
    """Keep the Statements a failed signer could not sign, so nothing is lost."""
    return _write_all(run_dir, [(f"{p.stem}.statement.json", p.body.decode("utf-8") + "\n")
                                for p in payloads])
