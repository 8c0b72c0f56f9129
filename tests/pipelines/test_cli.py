"""The command line: one clear line and a documented exit code for every user error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sbx.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK
from sbx.pipelines.cli import main
from tests.conftest import only_step

BAD = sorted((Path(__file__).parents[1] / "data" / "bad_steps").glob("*.yaml"))
EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_step_file_gets_one_line_and_exit_2(path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    expect = path.read_text(errors="replace").splitlines()[0].removeprefix("# expect:").strip()
    assert main(["lint", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sbx: error: ") and path.name in err and expect in err
    assert "Traceback" not in err


def test_run_refuses_a_bad_file_before_touching_docker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["run", str(BAD[0])]) == EXIT_INPUT
    assert capsys.readouterr().err.count("\n") == 1


def test_missing_engine_is_exit_3_with_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    step = EXAMPLES / "hello" / "step.yaml"
    assert main(["run", str(step), "--out", str(tmp_path / "run")]) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Docker engine answers" in err and "DOCKER_HOST" in err


def test_verbose_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-v", "lint", str(BAD[0])]) == EXIT_INPUT
    assert "Traceback" in capsys.readouterr().err


def test_lint_accepts_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    steps = sorted(EXAMPLES.glob("*/step.yaml"))
    assert steps
    assert main(["lint", *map(str, steps)]) == EXIT_OK
    assert capsys.readouterr().out.count(": ok") == len(steps)


def test_schema_is_json_schema_of_the_step_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "image", "run", "egress", "inputs", "outputs"} <= set(schema["properties"])
    assert schema.get("additionalProperties") is False


def test_console_script_runs_without_traceback_on_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "sbx.pipelines.cli", "lint",
                           str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert done.returncode == EXIT_INPUT
    assert done.stderr.count("\n") == 1 and "nope.yaml" in done.stderr


@pytest.mark.docker
# The demo's step needs the demo's own internet and is denied on purpose: demo.py runs it
# (tests/pipelines/test_examples.py).
@pytest.mark.parametrize("step", sorted(p for p in EXAMPLES.glob("*/step.yaml")
                                        if p.parent.name != "demo"),
                         ids=lambda p: p.parent.name)
def test_example_runs(step: Path, tmp_path: Path, sbx_images: tuple[str, str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(step), "--out", str(out), "--quiet"]) == EXIT_OK
    record = json.loads((out / "run.json").read_text())
    step = only_step(record)
    assert step["status"] == "succeeded"
    assert all(p["blocked"] for p in step["probes"]) and step["probes"]
    for output in step["outputs"]:
        assert (out / "outputs" / step["name"] / output["path"]).is_file()


@pytest.mark.docker
def test_missing_step_image_is_exit_3_with_one_line_and_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sbx_images: tuple[str, str]) -> None:
    step = tmp_path / "step.yaml"
    # pull: never: nothing goes looking for it on a registry off this machine
    step.write_text("name: ghost\nimage: sbx-test-no-such-image:1\npull: never\nrun: 'true'\n")
    out = tmp_path / "run"
    assert main(["run", str(step), "--out", str(out), "--quiet"]) == EXIT_ENVIRONMENT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sbx-test-no-such-image:1" in err and "Traceback" not in err
    record = json.loads((out / "run.json").read_text())
    assert only_step(record)["status"] == "error" and record["ended"]


@pytest.mark.parametrize("args", [
    ["report", "/nonexistent/run", "--html", "/tmp/sbx-never.html"],
    ["learn", "/nonexistent/run"],
    ["plan", str(EXAMPLES / "hello" / "step.yaml"), "--against", "/nonexistent/run"],
])
def test_reading_commands_refuse_a_missing_run_dir(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nonexistent/run" in err and "Traceback" not in err
    assert not Path("/tmp/sbx-never.html").exists()
