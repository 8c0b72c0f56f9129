"""Bad input to the scale-out flags: one line, exit 2, before any engine is asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sbx.errors import EXIT_INPUT
from sbx.pipelines.cli import main

PIPELINE = {"name": "pair", "steps": {
    "a": {"image": "sbx-step:bookworm", "run": "mkdir -p o && echo x > o/x", "outputs": ["o/"]},
    "b": {"image": "sbx-step:bookworm", "inputs": [{"from": "a", "path": "o/"}], "run": "true"},
}}


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(PIPELINE))
    return path


@pytest.mark.parametrize(("args", "words"), [
    (["--step", "nope"], "--step nope: no such step; use one of a, b"),
    (["--inputs-from", "{tmp}"], "--inputs-from needs --step"),
    (["--step", "b"], "step b needs a: pass --inputs-from"),
    (["--step", "b", "--inputs-from", "{tmp}/missing"], "missing: not a directory"),
    (["--step", "b", "--inputs-from", "{tmp}"], "not an sbx run directory"),
    (["--step", "b", "--inputs-from", "{tmp}", "--inputs-key", "k.pub",
      "--inputs-cert-identity", "x"], "exclude each other"),
    (["--step", "b", "--inputs-from", "{tmp}", "--inputs-cert-identity", "x"], "go together"),
], ids=["unknown-step", "inputs-without-step", "no-inputs", "missing-dir", "not-a-run-dir",
        "two-trusts", "identity-without-issuer"])
def test_bad_job_flags_are_one_line_and_exit_2(
        pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str], words: str) -> None:
    argv = ["run", str(pipeline), "--out", str(tmp_path / "out"),
            *(a.format(tmp=tmp_path / "inputs") for a in args)]
    (tmp_path / "inputs").mkdir()
    assert main(argv) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_step_on_a_step_file_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    step = tmp_path / "step.yaml"
    step.write_text(yaml.safe_dump({"name": "s", "image": "sbx-step:bookworm", "run": "true"}))
    assert main(["run", str(step), "--step", "s"]) == EXIT_INPUT
    assert "a step file, not a pipeline file: drop --step" in capsys.readouterr().err
