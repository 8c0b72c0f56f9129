"""The Statements sbx signs: canonical, bound to the run, and valid in-toto and SLSA."""

from __future__ import annotations

import json
from pathlib import Path

from fakes.signed_run import build_run
from google.protobuf import json_format
from in_toto_attestation.predicates.link.v0 import link_pb2
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import resource_descriptor_pb2
from in_toto_attestation.v1.statement import Statement

from sbx.attest.signing.local import KeyPair
from sbx.attest.statements import (
    ISOLATION_TYPE,
    LINK_TYPE,
    PROVENANCE_TYPE,
    Kind,
    canonical,
    run_payloads,
)


def _payloads(tmp_path: Path, key: KeyPair) -> dict[str, dict]:  # type: ignore[type-arg]
    run = build_run(tmp_path, key, ("build", "test"))
    return {p.stem: json.loads(p.body) for p in run_payloads(run.evidence)}


def _bound(statement: dict) -> Statement:  # type: ignore[type-arg]
    subjects = [json_format.ParseDict(s, resource_descriptor_pb2.ResourceDescriptor())
                for s in statement["subject"]]
    return Statement(subjects, statement["predicateType"], statement["predicate"])


def test_every_statement_validates_with_the_in_toto_bindings(tmp_path: Path,
                                                             attest_key: KeyPair) -> None:
    statements = _payloads(tmp_path, attest_key)
    assert set(statements) == {"build.link", "build.isolation", "test.link", "test.isolation",
                               "provenance"}
    for statement in statements.values():
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        _bound(statement).validate()  # raises on a bad Statement


def test_link_and_provenance_parse_as_their_predicate_messages(tmp_path: Path,
                                                               attest_key: KeyPair) -> None:
    statements = _payloads(tmp_path, attest_key)
    link = json_format.ParseDict(statements["build.link"]["predicate"], link_pb2.Link())
    assert link.name == "build" and list(link.command) == ["make", "build"]
    prov = json_format.ParseDict(statements["provenance"]["predicate"],
                                 provenance_pb2.Provenance())
    assert prov.build_definition.build_type.startswith("https://sbx.dev/")
    assert prov.run_details.metadata.invocation_id == "20261122T000000Z-aaaa"
    assert prov.run_details.metadata.started_on.seconds > 0
    assert statements["build.link"]["predicateType"] == LINK_TYPE
    assert statements["build.isolation"]["predicateType"] == ISOLATION_TYPE
    assert statements["provenance"]["predicateType"] == PROVENANCE_TYPE


def test_payloads_are_rfc8785_canonical(tmp_path: Path, attest_key: KeyPair) -> None:
    run = build_run(tmp_path, attest_key, ("build",))
    for p in run_payloads(run.evidence):
        assert canonical(json.loads(p.body)) == p.body


def test_every_statement_carries_the_run_binding(tmp_path: Path, attest_key: KeyPair) -> None:
    s = _payloads(tmp_path, attest_key)
    bindings = [s["build.link"]["predicate"]["environment"]["run"],
                s["build.isolation"]["predicate"]["run"],
                s["provenance"]["predicate"]["buildDefinition"]["internalParameters"]["run"]]
    assert all(b == bindings[0] for b in bindings)
    assert bindings[0]["id"] == "20261122T000000Z-aaaa" and bindings[0]["gitCommit"] == "c" * 40


def test_provenance_points_at_every_step_statement_by_digest(tmp_path: Path,
                                                             attest_key: KeyPair) -> None:
    run = build_run(tmp_path, attest_key, ("build", "test"))
    payloads = run_payloads(run.evidence)
    prov = json.loads(payloads[-1].body)
    listed = {(b["annotations"]["step"], b["annotations"]["kind"]): b["digest"]["sha256"]
              for b in prov["predicate"]["runDetails"]["byproducts"]}
    for p in payloads[:-1]:
        assert listed[(p.step, p.kind)] == p.sha256
    assert payloads[-1].kind is Kind.PROVENANCE
    assert [s["name"] for s in prov["subject"]] == ["outputs/build/dist/build.txt",
                                                    "outputs/test/dist/test.txt"]


def test_a_step_without_outputs_is_about_its_log(tmp_path: Path, attest_key: KeyPair) -> None:
    from dataclasses import replace

    run = build_run(tmp_path, attest_key, ("lint",))
    step = replace(run.evidence.steps[0], products=())
    evidence = replace(run.evidence, steps=(step,))
    for p in run_payloads(evidence):
        assert [s["name"] for s in json.loads(p.body)["subject"]] == ["logs/lint.log"]
