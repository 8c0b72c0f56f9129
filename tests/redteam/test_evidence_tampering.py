"""Evidence tampering from inside real runs: rewriting an output after the command
exits, swapping an output for a symlink during copy-out, planting forged attestations
among the outputs, and replaying an older run's attestations.

The step's processes all end before anything is copied out, so a late rewrite never
lands; links are refused; a step's files stay plain outputs under outputs/<step>/;
and `sbx verify` names the check a forgery or a replay fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.dsse import Envelope

from sbx.attest.signing.local import KeyPair, keygen, load_public_key, load_signer
from sbx.attest.statements import PAYLOAD_TYPE
from sbx.attest.verify.policy import DEFAULT_POLICY
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run
from tests.redteam.harness import Run, cached, run_spec

pytestmark = pytest.mark.docker
COVERS = frozenset({
    "evidence/rewrite-output-after-exit-nohup", "evidence/rewrite-output-after-exit-setsid",
    "evidence/rewrite-output-after-exit-double-fork", "evidence/symlink-swap-during-copy-out",
    "evidence/forged-attestation-planted-among-outputs",
    "evidence/forged-attestation-over-the-real-one", "evidence/replay-whole-attestation-set",
    "evidence/replay-one-statement",
})
REAL = {"tamper.link.dsse.json", "tamper.isolation.dsse.json", "provenance.dsse.json"}

# Each writer says it is alive (out/alive-*) before it waits to rewrite; the command ends
# only once all three have said so: they are shown alive when it exits.
TAMPER = r"""
mkdir -p out attestations
echo original > out/nohup.txt; echo original > out/setsid.txt; echo original > out/daemon.txt
nohup sh -c 'touch out/alive-nohup; sleep 1; echo tampered > out/nohup.txt' >/dev/null 2>&1 &
setsid sh -c 'touch out/alive-setsid; sleep 1; echo tampered > out/setsid.txt' \
  </dev/null >/dev/null 2>&1 &
python3 - <<'PY'
import os, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
open("out/alive-daemon", "w").close()
time.sleep(1)
open("out/daemon.txt", "w").write("tampered\n")
PY
cp forged.dsse.json attestations/provenance.dsse.json
cp forged.dsse.json attestations/tamper.link.dsse.json
cp forged.dsse.json out/tamper.isolation.dsse.json
until [ -e out/alive-nohup ] && [ -e out/alive-setsid ] && [ -e out/alive-daemon ]; do
  sleep 0.01; done
"""
# The swapper counts its swaps; the command ends once it has swapped 200 times, so it is
# swapping when the command exits (copy-out reads the stopped container: whichever state
# the swap left is what is judged).
SWAP = r"""
mkdir -p out
echo mine > out/data
setsid sh -c 'n=0; while :; do ln -sfn /etc/shadow out/tmp.lnk; mv -Tf out/tmp.lnk out/data;
  echo mine > out/tmp.new; mv -f out/tmp.new out/data; n=$((n+1)); echo $n > swaps.new;
  mv -f swaps.new swaps; done' </dev/null >/dev/null 2>&1 &
until [ "$(cat swaps 2>/dev/null || echo 0)" -ge 200 ]; do sleep 0.01; done
"""


def _forge(payload: bytes, key_dir: Path) -> bytes:
    """A DSSE envelope over `payload`, signed by a key the verifier does not trust."""
    pair = keygen(key_dir, overwrite=True)
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(load_signer(pair.private))
    return (json.dumps(envelope.to_dict(), indent=2) + "\n").encode()


def _statement(path: Path) -> dict[str, Any]:
    return dict(json.loads(base64.b64decode(json.loads(path.read_text())["payload"])))


def _failed(out: Path, key: KeyPair) -> dict[str, str]:
    report = verify_run(out, KeyTrust([load_public_key(key.public)]), DEFAULT_POLICY)
    return {r.check.value: r.reason for r in report.failed()}


def _step(name: str, script: str, outputs: list[str], inputs: list[str]) -> dict[str, Any]:
    return {"name": name, "image": "sbx-step:bookworm", "run": script, "inputs": inputs,
            "outputs": outputs, "egress": {"allow": []},
            "resources": {"timeout": 60, "memory": "256m"}}


@pytest.fixture
def forged(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    fake = {"_type": "https://in-toto.io/Statement/v1", "predicateType":
            "https://slsa.dev/provenance/v1", "predicate": {},
            "subject": [{"name": "outputs/tamper/out/nohup.txt",
                         "digest": {"sha256": hashlib.sha256(b"tampered\n").hexdigest()}}]}
    return cached("forged", "", lambda: _forge(  # type: ignore[no-any-return]
        json.dumps(fake).encode(), tmp_path_factory.mktemp("attacker-key")))


@pytest.fixture
def tamper_runs(tmp_path_factory: pytest.TempPathFactory, forged: bytes,
                sbx_images: tuple[str, str]) -> tuple[Run, Run]:
    """Two runs of the same tampering step (the second is the replay's target)."""
    def make() -> tuple[Run, Run]:
        spec = _step("tamper", TAMPER, ["out/", "attestations/"], ["forged.dsse.json"])
        return tuple(run_spec(tmp_path_factory.mktemp(f"redteam-tamper{i}") / "ws", spec,  # type: ignore[return-value]
                              {"forged.dsse.json": forged}, None) for i in range(2))
    return cached("tamper", "", make)  # type: ignore[no-any-return]


def test_rewrites_after_exit_never_land_and_the_evidence_matches(
        tamper_runs: tuple[Run, Run], signing_key: KeyPair) -> None:
    run = tamper_runs[0]
    assert run.result.exit_code == 0, run.result.record["reason"]
    link = _statement(run.out / "attestations/tamper.link.dsse.json")
    signed = {s["name"]: s["digest"]["sha256"] for s in link["subject"]}
    for how in ("nohup", "setsid", "daemon"):
        assert (run.out / f"outputs/tamper/out/alive-{how}").is_file(), f"{how} never ran"
        rel = f"outputs/tamper/out/{how}.txt"
        assert (run.out / rel).read_text() == "original\n", f"the {how} rewrite landed"
        assert signed[rel] == hashlib.sha256(b"original\n").hexdigest()
    assert _failed(run.out, signing_key) == {}


def test_planted_attestations_stay_plain_outputs(tamper_runs: tuple[Run, Run], forged: bytes,
                                                 signing_key: KeyPair) -> None:
    run = tamper_runs[0]
    assert {p.name for p in (run.out / "attestations").iterdir()} == REAL
    for name in REAL:
        assert (run.out / "attestations" / name).read_bytes() != forged
    planted = run.out / "outputs/tamper/attestations/provenance.dsse.json"
    assert planted.read_bytes() == forged  # an output like any other, signed as one
    assert _failed(run.out, signing_key) == {}


def test_a_forged_attestation_over_the_real_one_fails_signatures(
        tamper_runs: tuple[Run, Run], forged: bytes, signing_key: KeyPair,
        tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tamper_runs[0].out, copy)
    real = copy / "attestations/provenance.dsse.json"
    # The real payload, re-signed by the attacker: only the signature is wrong.
    payload = base64.b64decode(json.loads(real.read_text())["payload"])
    real.write_bytes(_forge(payload, tmp_path / "k"))
    assert "signatures" in _failed(copy, signing_key)
    real.write_bytes(forged)  # the planted one, promoted
    assert "signatures" in _failed(copy, signing_key)


def test_replaying_an_older_runs_attestations_fails_verification(
        tamper_runs: tuple[Run, Run], signing_key: KeyPair, tmp_path: Path) -> None:
    old, new = tamper_runs
    assert old.result.run_id != new.result.run_id
    assert _failed(new.out, signing_key) == {}
    whole = tmp_path / "whole"
    shutil.copytree(new.out, whole)
    shutil.rmtree(whole / "attestations")
    shutil.copytree(old.out / "attestations", whole / "attestations")
    failed = _failed(whole, signing_key)
    assert "run-files" in failed, failed  # the signed event lines are the old run's
    one = tmp_path / "one"
    shutil.copytree(new.out, one)
    shutil.copy(old.out / "attestations/tamper.link.dsse.json",
                one / "attestations/tamper.link.dsse.json")
    failed = _failed(one, signing_key)
    assert "run-binding" in failed and old.result.run_id in failed["run-binding"], failed


def test_symlink_swapped_during_copy_out_is_refused_or_copied_as_the_step_left_it(
        tmp_path_factory: pytest.TempPathFactory, signing_key: KeyPair,
        sbx_images: tuple[str, str]) -> None:
    run = run_spec(tmp_path_factory.mktemp("redteam-swap") / "ws",
                   _step("swap", SWAP, ["out/"], []), {}, None)
    step = run.step("swap")
    for path in run.out.rglob("*"):
        assert not path.is_symlink(), f"a link reached the run directory: {path}"
        if path.is_file() and "outputs" in path.parts:
            assert "root:" not in path.read_text(errors="replace"), path
    data = run.out / "outputs/swap/out/data"
    if step["status"] == "failed":  # the loop left a link in place: refused, on record
        assert "is a link" in step["reason"], step
        assert not data.exists() or data.read_text() == "mine\n"
        assert "steps-succeeded" in _failed(run.out, signing_key)
    else:  # the loop left the file: it is the step's own bytes, and they are what is signed
        assert data.read_text() == "mine\n"
        assert _failed(run.out, signing_key) == {}
