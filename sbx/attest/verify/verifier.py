"""`verify_run`: open every document, read what it names, run every check."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from in_toto_attestation.predicates.link.v0 import link_pb2
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1.statement import Statement as BindingStatement
from pydantic import ValidationError

from sbx.attest.statements import LINK_TYPE, PROVENANCE_TYPE, canonical
from sbx.attest.verify import evidence
from sbx.attest.verify.bundle import bundle_problems
from sbx.attest.verify.checks import run_checks
from sbx.attest.verify.model import CheckResult, Observed, Opened, Rejected, Status
from sbx.attest.verify.policy import ReleasePolicy
from sbx.attest.verify.trust import Trust, TrustFailure
from sbx.attest.wire import PREDICATES, StatementWire


@dataclass(frozen=True)
class Report:
    """The outcome of `sbx verify`: every check, and whether all passed."""

    run_dir: Path
    trust: str
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        """True only when no check failed."""
        return all(r.status is not Status.FAIL for r in self.results)

    def failed(self) -> list[CheckResult]:
        """The failed checks."""
        return [r for r in self.results if r.status is Status.FAIL]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        return {"run_dir": str(self.run_dir), "trust": self.trust, "passed": self.passed,
                "checks": [{"check": r.check.value, "status": r.status.value,
                            "reason": r.reason} for r in self.results]}


def validate_bindings(statement: dict[str, Any]) -> None:
    """Validate with the in-toto attestation bindings and the predicate's protobuf message."""
    from google.protobuf import struct_pb2

    subjects = []
    for s in statement["subject"]:
        rd = json_format.ParseDict(s, BindingStatement([], "", {}).pb.subject.add())
        subjects.append(rd)
    bound = BindingStatement(subjects, statement["predicateType"], statement["predicate"])
    bound.validate()
    message = {LINK_TYPE: link_pb2.Link, PROVENANCE_TYPE: provenance_pb2.Provenance}.get(
        statement["predicateType"])
    if message is not None:
        json_format.ParseDict(statement["predicate"], message())
    else:
        json_format.ParseDict(statement["predicate"], struct_pb2.Struct())


def open_document(doc: evidence.Document, trust: Trust) -> Opened | Rejected:
    """Check the signature, then the payload's shape; never raises on bad input."""
    try:
        opened = trust.open(doc.data)
    except TrustFailure as exc:
        return Rejected(doc.source, str(exc), signature=True)
    payload = opened.payload
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if canonical(data) != payload:
            raise ValueError("payload is not RFC 8785 canonical JSON")
        wire = StatementWire.model_validate(data)
        predicate = PREDICATES[wire.predicateType].model_validate(wire.predicate)
        validate_bindings(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return Rejected(doc.source, f"not an sbx Statement: {where}: {first['msg']}",
                        signature=False)
    except (ValueError, TypeError, KeyError, json_format.ParseError) as exc:
        return Rejected(doc.source, f"not an in-toto Statement v1: {exc}", signature=False)
    return Opened(doc.source, hashlib.sha256(payload).hexdigest(), opened.signer, wire,
                  predicate)  # type: ignore[arg-type]


def open_run(run_dir: Path, trust: Trust, artifacts: tuple[Path, ...] = (),
             ) -> tuple[list[Opened], list[Rejected], Observed]:
    """Open every document of a run directory and read the files they name (I/O only)."""
    docs = evidence.documents(run_dir)
    outcomes = [open_document(d, trust) for d in docs]
    opened = [o for o in outcomes if isinstance(o, Opened)]
    rejected = [o for o in outcomes if isinstance(o, Rejected)]
    names: set[str] = set()
    for o in opened:
        names |= set(o.subjects())
        logs = getattr(getattr(o.predicate, "byproducts", None), "logs", None) or []
        names |= {d.name for d in logs}
    observed = Observed(
        files={n: evidence.file_sha256(run_dir, n) for n in sorted(names)},
        events=evidence.event_digests(run_dir),
        artifacts=tuple((str(p), evidence.artifact_sha256(p)) for p in artifacts),
        bundle_problems=tuple(bundle_problems(docs, evidence.bundle_bytes(run_dir),
                                              frozenset(o.source for o in opened))))
    return opened, rejected, observed


def verify_run(run_dir: Path, trust: Trust, policy: ReleasePolicy,
               artifacts: tuple[Path, ...] = ()) -> Report:
    """Verify a run directory; trust failures are failed checks, not exceptions."""
    opened, rejected, observed = open_run(run_dir, trust, artifacts)
    results = run_checks(opened, rejected, observed, policy, trust.describe())
    return Report(run_dir, trust.describe(), tuple(results))
