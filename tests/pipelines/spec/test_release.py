"""Release policy files and the `sbx verify` / `sbx keygen` command lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sbx.errors import EXIT_INPUT, EXIT_OK
from sbx.pipelines.cli import main
from sbx.pipelines.spec.release import load_release_policy

DATA = Path(__file__).parents[2] / "data"
BAD = sorted((DATA / "bad_policies").glob("*.yaml"))
EXAMPLE = Path(__file__).parents[3] / "examples" / "release-policy.yaml"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_release_policy_gets_one_line_and_exit_2(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect = path.read_text(errors="replace").splitlines()[0].removeprefix("# expect:").strip()
    assert main(["lint", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sbx: error: ") and path.name in err and expect in err, err
    assert "Traceback" not in err


def test_the_example_policy_lints_and_is_strict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(EXAMPLE)]) == EXIT_OK
    assert "release policy" in capsys.readouterr().out
    policy = load_release_policy(EXAMPLE)
    assert policy.required_steps == ("hello",) and policy.isolation.max_denied_flows == 0
    assert policy.destinations_for("anything") == ()


def test_relative_key_paths_are_taken_from_the_policy_folder(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nsigner: {key: keys/sbx.pub}\n")
    policy = load_release_policy(path)
    assert policy.signer is not None and policy.signer.key == str(tmp_path / "keys/sbx.pub")


def test_schema_of_the_release_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--release-policy"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert {"version", "signer", "isolation", "destinations"} <= set(schema["properties"])
    assert "version" in schema["required"]


def test_keygen_prints_where_the_keys_are(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert str(tmp_path / "sbx.key") in out and str(tmp_path / "sbx.pub") in out
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_INPUT
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "words"), [
    (["verify", "/nonexistent/run", "--key", "{key}"], "not a directory"),
    (["verify", "{run}", "--key", "{key}", "--cert-identity", "x"], "exclude each other"),
    (["verify", "{run}", "--cert-identity", "x"], "go together"),
    (["verify", "{run}", "--key", "/nonexistent.pub"], "cannot read the public key"),
    (["verify", "{run}", "--key", "{key}", "--policy", str(BAD[0])], BAD[0].name),
    (["verify", "{empty}", "--key", "{key}"], "not an sbx run directory"),
    (["verify", "{run}", "--key", "{key}", "--artifact", "/nonexistent.whl"],
     "cannot read the artifact"),
])
def test_verify_bad_input_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        words: str, signing_key: object) -> None:
    from fakes.signed_run import build_run

    from sbx.attest.signing.local import keygen

    pair = keygen(tmp_path / "k")
    run = build_run(tmp_path / "run", pair)
    (tmp_path / "empty").mkdir()
    filled = [a.format(run=run.root, key=pair.public, empty=tmp_path / "empty") for a in args]
    assert main(filled) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_verify_prints_a_table_and_exit_1_on_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fakes.signed_run import build_run

    from sbx.attest.signing.local import keygen

    pair = keygen(tmp_path / "k")
    run = build_run(tmp_path / "run", pair)
    assert main(["verify", str(run.root), "--key", str(pair.public)]) == EXIT_OK
    assert "verification PASSED" in capsys.readouterr().out
    (run.root / "attestations" / "build.link.dsse.json").unlink()
    assert main(["verify", str(run.root), "--key", str(pair.public)]) == 1
    out = capsys.readouterr().out
    assert "FAILED (completeness" in out and "no link Statement" in out
