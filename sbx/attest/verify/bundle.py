"""The second copy of the evidence: attestations.intoto.jsonl must agree with the first.

`sbx run` writes every signed document twice: one file each under attestations/
(what `sbx verify` opens) and all of them as JSON Lines in attestations.intoto.jsonl
(what SLSA tooling and uploads read). A copy that was altered, swapped for another
run's, or is missing a document would pass unnoticed if only the first were read;
here each line must be exactly one of the verified documents, and each document
exactly one line. Pure: the verifier reads the files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sbx.attest.verify.evidence import BUNDLE_FILE, Document
from sbx.attest.verify.model import Check, CheckResult, Observed, Status


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def bundle_problems(documents: Sequence[Document], bundle: bytes | None,
                    verified: frozenset[str]) -> list[str]:
    """What is wrong with the JSON Lines copy, compared with the per-file documents.

    `documents` are the files under attestations/, `verified` the sources of those
    whose signature and shape were accepted (a rejected file fails its own check);
    `bundle` is the JSON Lines file, or None when it is missing. Lines are compared
    as JSON values, so a byte flipped in a payload or a signature is a difference.
    """
    if not documents or all(d.source.startswith(BUNDLE_FILE) for d in documents):
        return []  # the bundle is the only copy, and was verified as such
    if bundle is None:
        return [f"{BUNDLE_FILE} is missing: the run wrote it with every signed document"]
    wanted: dict[str, str] = {}
    for doc in documents:
        if doc.source not in verified:
            continue
        value = _parse(doc.data)
        key = json.dumps(value, sort_keys=True) if value is not None else f"\0{doc.source}"
        wanted[key] = doc.source
    seen: dict[str, int] = {}
    problems: list[str] = []
    for number, line in enumerate(bundle.splitlines(), 1):
        if not line.strip():
            continue
        value = _parse(line)
        key = json.dumps(value, sort_keys=True) if value is not None else ""
        source = wanted.get(key)
        if source is None:
            problems.append(f"{BUNDLE_FILE}:{number} is none of the run's verified documents "
                            "(altered, or from another run)")
        elif key in seen:
            problems.append(f"{BUNDLE_FILE}:{number} repeats line {seen[key]} ({source})")
        else:
            seen[key] = number
    missing = sorted(source for key, source in wanted.items() if key not in seen)
    if missing:  # first: the summary a reader needs before the line-by-line detail
        problems.insert(0, f"{BUNDLE_FILE} lacks {', '.join(missing)}")
    return problems


def check_bundle(observed: Observed) -> CheckResult:
    """attestations.intoto.jsonl holds exactly the run's signed documents."""
    if observed.bundle_problems:
        return CheckResult(Check.BUNDLE, Status.FAIL, "; ".join(observed.bundle_problems[:5])
                           + (f" (and {len(observed.bundle_problems) - 5} more)"
                              if len(observed.bundle_problems) > 5 else ""))
    return CheckResult(Check.BUNDLE, Status.PASS,
                       f"every line of {BUNDLE_FILE} is one of the run's signed documents, "
                       "and none is missing")
