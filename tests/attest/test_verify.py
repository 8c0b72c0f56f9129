"""`verify_run` on signed synthetic runs: a clean run passes, and every kind of
tampering fails the check that names it."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.signed_run import SyntheticRun
from securesystemslib.signer import CryptoSigner

from sbx.attest.model import Probe
from sbx.attest.signing.local import keygen, load_public_key, load_signer
from sbx.attest.statements import PAYLOAD_TYPE, canonical
from sbx.attest.verify.model import Check, Status
from sbx.attest.verify.policy import DEFAULT_POLICY, IsolationPolicy, ReleasePolicy
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import Report, verify_run

MakeRun = Callable[..., SyntheticRun]


def verify(run: SyntheticRun, policy: ReleasePolicy = DEFAULT_POLICY,
           artifacts: tuple[Path, ...] = ()) -> Report:
    return verify_run(run.root, run.trust(), policy, artifacts)


def failed(report: Report) -> dict[str, str]:
    return {r.check.value: r.reason for r in report.results if r.status is Status.FAIL}


def resign(run: SyntheticRun, stem: str, edit: Callable[[dict[str, Any]], None],
           signer: CryptoSigner | None = None) -> None:
    """Edit a Statement and sign it again with the run's key (an insider with the key)."""
    from securesystemslib.dsse import Envelope

    statement = run.payload(stem)
    edit(statement)
    envelope = Envelope(canonical(statement), PAYLOAD_TYPE, {})
    envelope.sign(signer or load_signer(run.key.private))
    run.doc(stem).write_text(json.dumps(envelope.to_dict()))


def test_a_clean_run_passes_every_check(make_run: MakeRun) -> None:
    run = make_run(("fetch", "build", "test"))
    report = verify(run)
    assert report.passed, failed(report)
    statuses = {r.check: r.status for r in report.results}
    assert statuses[Check.RELEASE_ARTIFACTS] is Status.SKIP
    assert statuses[Check.DESTINATIONS] is Status.SKIP
    assert all(s is Status.PASS for c, s in statuses.items()
               if c not in (Check.RELEASE_ARTIFACTS, Check.DESTINATIONS))


def test_a_changed_payload_byte_fails_signatures(make_run: MakeRun) -> None:
    run = make_run()
    env = run.envelope("build.link")
    payload = bytearray(base64.b64decode(env["payload"]))
    at = payload.index(b'"exitCode":0') + len(b'"exitCode":')
    payload[at] = ord("1")
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    run.doc("build.link").write_text(json.dumps(env))
    report = verify(run)
    assert "signatures" in failed(report)
    assert "build.link" in failed(report)["signatures"]
    assert "completeness" in failed(report)  # the forged Statement is not counted


def test_a_removed_signature_fails_signatures(make_run: MakeRun) -> None:
    run = make_run()
    env = run.envelope("build.isolation")
    env["signatures"] = []
    run.doc("build.isolation").write_text(json.dumps(env))
    reasons = failed(verify(run))
    assert "no signature" in reasons["signatures"]
    assert "no isolation Statement" in reasons["completeness"]


def test_a_signature_over_the_raw_payload_instead_of_the_pae_fails(make_run: MakeRun) -> None:
    run = make_run()
    env = run.envelope("provenance")
    signer = load_signer(run.key.private)
    raw_sig = signer.sign(base64.b64decode(env["payload"]))  # not DSSEv1 PAE
    env["signatures"] = [{"keyid": raw_sig.keyid,
                          "sig": base64.b64encode(bytes.fromhex(raw_sig.signature)).decode()}]
    run.doc("provenance").write_text(json.dumps(env))
    reasons = failed(verify(run))
    assert "does not verify over the DSSE PAE" in reasons["signatures"]


def test_a_different_key_fails_and_names_both_keys(make_run: MakeRun, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other")
    run = make_run(key=other)
    trusted = make_run().key
    assert trusted.keyid[:16] != other.keyid[:16]
    report = verify_run(run.root, KeyTrust([load_public_key(trusted.public)]), DEFAULT_POLICY)
    reasons = failed(report)
    assert "not by the trusted key" in reasons["signatures"]
    # The one that signed and the one that was expected: both, so the user can tell which.
    assert other.keyid[:16] in reasons["signatures"]
    assert trusted.keyid[:16] in reasons["signatures"]


def test_an_output_changed_after_the_run_fails_run_files(make_run: MakeRun) -> None:
    run = make_run(("build", "test"))
    (run.root / "outputs/build/dist/build.txt").write_text("trojan\n")
    reasons = failed(verify(run))
    assert set(reasons) == {"run-files"}
    assert "outputs/build/dist/build.txt changed after the run" in reasons["run-files"]


def test_a_deleted_output_and_an_edited_event_line_fail_run_files(make_run: MakeRun) -> None:
    run = make_run()
    (run.root / "outputs/build/dist/build.txt").unlink()
    events = run.root / "events.jsonl"
    events.write_text(events.read_text().replace('"allowed"', '"denied"', 1))
    reason = failed(verify(run))["run-files"]
    assert "missing" in reason and "events.jsonl lines of build changed" in reason


def test_an_output_swapped_for_a_symlink_counts_as_missing(make_run: MakeRun,
                                                             tmp_path: Path) -> None:
    run = make_run()
    target = run.root / "outputs/build/dist/build.txt"
    copy = tmp_path / "elsewhere.txt"
    shutil.copy(target, copy)
    target.unlink()
    target.symlink_to(copy)
    assert "missing" in failed(verify(run))["run-files"]


def test_a_statement_from_another_run_fails_run_binding(make_run: MakeRun) -> None:
    mine = make_run(("build", "test"), run_id="20261122T000000Z-mine")
    theirs = make_run(("build", "test"), run_id="20261122T000000Z-old1")
    shutil.copy(theirs.doc("test.isolation"), mine.doc("test.isolation"))
    reasons = failed(verify(mine))
    assert "belongs to run 20261122T000000Z-old1" in reasons["run-binding"]
    assert "is not the isolation Statement the provenance lists" in reasons["completeness"]


def test_a_replayed_whole_run_fails_against_the_release_artifacts(make_run: MakeRun) -> None:
    old = make_run(run_id="20261122T000000Z-old1")
    new = make_run(run_id="20261122T000000Z-new1")
    artifact = new.root / "outputs/build/dist/build.txt"
    reasons = failed(verify(old, artifacts=(artifact,)))
    assert "is not a subject of the provenance" in reasons["release-artifacts"]
    assert verify(new, artifacts=(artifact,)).passed


def test_a_missing_step_statement_fails_completeness(make_run: MakeRun) -> None:
    run = make_run(("build", "test"))
    run.doc("test.link").unlink()
    reasons = failed(verify(run))
    assert "step 'test' has no link Statement" in reasons["completeness"]


def test_a_missing_provenance_fails_completeness(make_run: MakeRun) -> None:
    run = make_run()
    run.doc("provenance").unlink()
    assert "0 provenance Statements" in failed(verify(run))["completeness"]


def test_an_isolation_statement_showing_a_denied_flow_fails(make_run: MakeRun) -> None:
    run = make_run(changes={"build": {"flows": {"allowed": 0, "audit": 0, "denied": 2,
                                                  "failed": 0}}})
    reasons = failed(verify(run))
    assert set(reasons) == {"isolation.denied-flows"}
    assert "2 denied egress attempt(s)" in reasons["isolation.denied-flows"]
    lax = ReleasePolicy(version=1, isolation=IsolationPolicy(max_denied_flows=2))
    assert verify(run, lax).passed


def test_an_isolation_statement_showing_a_shared_network_fails(make_run: MakeRun) -> None:
    shared = {"network_id": "n" * 64, "subnet": "10.222.9.0/28"}
    run = make_run(("build", "test"), changes={"build": shared, "test": shared})
    reasons = failed(verify(run))
    assert set(reasons) == {"isolation.distinct-networks"}
    assert "shared by build, test" in reasons["isolation.distinct-networks"]


def test_a_container_attached_to_two_step_networks_fails(make_run: MakeRun) -> None:
    spy = ("s" * 64,)
    run = make_run(("build", "test"), changes={"build": {"attached": spy},
                                               "test": {"attached": spy}})
    assert "container ssssssssssss shared" in failed(verify(run))["isolation.distinct-networks"]


@pytest.mark.parametrize(("change", "check", "words"), [
    ({"internal": False}, "isolation.internal-network", "is not internal"),
    ({"cap_add": ("NET_ADMIN",)}, "isolation.capabilities", "capabilities added: NET_ADMIN"),
    ({"cap_drop": ()}, "isolation.capabilities", "not all dropped"),
    ({"privileged": True}, "isolation.capabilities", "privileged"),
    ({"security_opt": ()}, "isolation.capabilities", "no-new-privileges not set"),
    ({"agent_caps": {"CapEff": "00000000a80425fb"}}, "isolation.capabilities",
     "the agent kept capabilities"),
    ({"probes": ()}, "isolation.probes", "no probes were run"),
    ({"probes": (Probe("egress-raw-ip", "tcp", "198.18.0.1:80", False, "connected"),)},
     "isolation.probes", "probes got through: egress-raw-ip"),
    ({"policy": {"mode": "audit", "rules": []}}, "isolation.egress-mode", "'audit'"),
])
def test_each_isolation_claim_is_checked(make_run: MakeRun, change: dict[str, Any],
                                         check: str, words: str) -> None:
    reasons = failed(verify(make_run(changes={"build": change})))
    assert set(reasons) == {check}
    assert words in reasons[check]


def test_destinations_outside_the_policy_set_fail(make_run: MakeRun) -> None:
    run = make_run(("fetch", "build"),
                   changes={"build": {"destinations": ("evil.example:443",)}})
    policy = ReleasePolicy(version=1, destinations={"fetch": ("mirror.sbx.test:*",),
                                                    "*": ()})
    reasons = failed(verify(run, policy))
    assert set(reasons) == {"isolation.destinations"}
    assert "build: reached evil.example:443" in reasons["isolation.destinations"]


def test_a_hand_off_that_does_not_match_the_producer_fails_the_chain(make_run: MakeRun) -> None:
    run = make_run(("build", "test"))

    def swap(statement: dict[str, Any]) -> None:
        for m in statement["predicate"]["materials"]:
            if m.get("annotations", {}).get("source") == "build":
                m["digest"]["sha256"] = "0" * 64

    resign(run, "test.link", swap)
    reasons = failed(verify(run))
    assert "is not what build produced" in reasons["artifact-chain"]


def test_a_statement_that_is_not_canonical_json_is_rejected(make_run: MakeRun) -> None:
    from securesystemslib.dsse import Envelope

    run = make_run()
    statement = run.payload("build.link")
    envelope = Envelope(json.dumps(statement, indent=1).encode(), PAYLOAD_TYPE, {})
    envelope.sign(load_signer(run.key.private))
    run.doc("build.link").write_text(json.dumps(envelope.to_dict()))
    assert "not RFC 8785 canonical" in failed(verify(run))["statements"]


def test_a_signed_statement_with_a_foreign_shape_is_rejected(make_run: MakeRun) -> None:
    run = make_run()
    resign(run, "build.isolation", lambda s: s["predicate"]["sandbox"].update(rootless="yes"))
    reason = failed(verify(run))["statements"]
    assert "build.isolation" in reason and "rootless" in reason


def test_a_failed_step_fails_steps_succeeded(make_run: MakeRun) -> None:
    run = make_run()
    resign(run, "build.link",
           lambda s: s["predicate"]["byproducts"].update(status="failed", exitCode=2))
    reasons = failed(verify(run))
    assert "build failed (exit 2)" in reasons["steps-succeeded"]


def test_a_required_step_missing_from_the_run_fails(make_run: MakeRun) -> None:
    run = make_run(("build",))
    policy = ReleasePolicy(version=1, required_steps=("build", "scan"))
    assert "required step 'scan'" in failed(verify(run, policy))["completeness"]


def test_garbage_documents_fail_without_an_exception(make_run: MakeRun) -> None:
    run = make_run()
    for name, data in [("junk.dsse.json", b"\xff\xfe not json"), ("list.dsse.json", b"[1]"),
                       ("empty.dsse.json", b""),
                       ("nopay.dsse.json", b'{"payloadType": 1, "signatures": 3}')]:
        (run.root / "attestations" / name).write_bytes(data)
    reasons = failed(verify(run))
    assert reasons.keys() == {"signatures"}
    assert "junk.dsse.json" in reasons["signatures"]


# --------------------------------------------------------------------------- the JSON Lines copy


def _bundle(run: SyntheticRun) -> Path:
    return run.root / "attestations.intoto.jsonl"


def test_a_flipped_payload_byte_in_the_jsonl_copy_fails_the_bundle_check(
        make_run: MakeRun) -> None:
    """SLSA tooling reads attestations.intoto.jsonl: a copy that differs from the
    verified documents must not pass unnoticed."""
    run = make_run(("fetch", "build"))
    lines = _bundle(run).read_bytes().splitlines()
    doc = json.loads(lines[1])
    payload = bytearray(base64.b64decode(doc["payload"]))
    payload[10] ^= 1
    doc["payload"] = base64.b64encode(bytes(payload)).decode()
    lines[1] = json.dumps(doc).encode()
    _bundle(run).write_bytes(b"\n".join(lines) + b"\n")
    reasons = failed(verify(run))
    assert reasons.keys() == {"attestations-bundle"}
    assert "attestations.intoto.jsonl:2 is none of the run's verified documents" in \
        reasons["attestations-bundle"]


def test_a_jsonl_copy_from_another_run_fails_the_bundle_check(
        make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(("fetch", "build"))
    other = make_run(("fetch", "build"), run_id="20261122T000000Z-bbbb")
    shutil.copy(_bundle(other), _bundle(run))
    reason = failed(verify(run))["attestations-bundle"]
    assert "none of the run's verified documents" in reason and "lacks" in reason


@pytest.mark.parametrize("damage", ["drop", "repeat", "remove"])
def test_a_jsonl_copy_missing_or_repeating_a_document_fails(make_run: MakeRun,
                                                          damage: str) -> None:
    run = make_run(("fetch", "build"))
    lines = _bundle(run).read_text().splitlines()
    if damage == "remove":
        _bundle(run).unlink()
        expected = "attestations.intoto.jsonl is missing"
    elif damage == "drop":
        _bundle(run).write_text("\n".join(lines[:-1]) + "\n")
        expected = "lacks attestations/"
    else:
        _bundle(run).write_text("\n".join([*lines, lines[0]]) + "\n")
        expected = "repeats line 1"
    assert expected in failed(verify(run))["attestations-bundle"]


def test_a_run_with_only_the_jsonl_copy_verifies_from_it(make_run: MakeRun) -> None:
    run = make_run(("fetch", "build"))
    shutil.rmtree(run.root / "attestations")
    report = verify(run)
    assert report.passed, failed(report)
    assert {r.check: r.status for r in report.results}[Check.BUNDLE] is Status.PASS


# -- isolation.actions: checked requests and TLS inspection (issue 15)

_ACTION_POLICY = {"mode": "enforce", "rules": [
    {"text": "pypi.org:443", "source": "step.yaml:7", "host": "pypi.org", "port": 443,
     "inspect": True, "methods": ["GET"], "paths": ["/simple/**"]},
    {"text": "files.example:443", "source": "step.yaml:9", "host": "files.example", "port": 443}]}
_ACTIONS = {"requests": {"pypi.org:443 GET /simple/**": {"allowed": 3}}, "denied": [],
            "deniedCount": 0, "inspectedHosts": ["pypi.org"], "caFingerprint": "sha256:" + "a" * 64}


def test_checked_requests_within_the_policy_pass(make_run: MakeRun) -> None:
    run = make_run(changes={"build": {"policy": _ACTION_POLICY, "actions": _ACTIONS}})
    report = verify(run, ReleasePolicy(version=1, inspected_hosts={"*": ("pypi.org",)}))
    assert report.passed, failed(report)
    [row] = [r for r in report.results if r.check is Check.ACTIONS]
    assert "3 checked request(s)" in row.reason


@pytest.mark.parametrize(("actions", "policy", "words"), [
    ({**_ACTIONS, "caFingerprint": None}, DEFAULT_POLICY, "no run CA fingerprint"),
    ({**_ACTIONS, "deniedCount": 1, "denied": [{"method": "POST", "host": "pypi.org",
                                                "path": "/upload"}]},
     DEFAULT_POLICY, "1 HTTP request(s) denied (POST pypi.org/upload), the policy allows 0"),
    ({**_ACTIONS, "denied": [{"method": "POST"}]}, DEFAULT_POLICY, "more denied requests"),
    (_ACTIONS, ReleasePolicy(version=1, inspected_hosts={"build": ("files.example",)}),
     "files.example not inspected"),
])
def test_actions_evidence_that_breaks_the_policy_fails(make_run: MakeRun, actions: dict[str, Any],
                                                        policy: ReleasePolicy, words: str) -> None:
    actions = {k: v for k, v in actions.items() if v is not None}
    run = make_run(changes={"build": {"policy": _ACTION_POLICY, "actions": actions}})
    reasons = failed(verify(run, policy))
    assert set(reasons) == {"isolation.actions"}, reasons
    assert words in reasons["isolation.actions"]


def test_a_denied_request_within_the_release_bound_passes(make_run: MakeRun) -> None:
    actions = {**_ACTIONS, "deniedCount": 2, "denied": []}
    run = make_run(changes={"build": {"policy": _ACTION_POLICY, "actions": actions}})
    lax = ReleasePolicy(version=1, isolation=IsolationPolicy(max_denied_requests=2))
    assert verify(run, lax).passed
