"""Pipeline files: order, hand-offs and every refusal before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sbx.errors import EXIT_INPUT, EXIT_OK
from sbx.pipelines.cli import main
from sbx.pipelines.spec.loader import load_yaml
from sbx.pipelines.spec.pipeline import validate_pipeline

BAD = sorted((Path(__file__).parents[2] / "data" / "bad_pipelines").glob("*.yaml"))
WHEEL = Path(__file__).parents[3] / "examples" / "wheel" / "pipeline.yaml"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_pipeline_gets_one_line_and_exit_2(path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    expect = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    assert main(["lint", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path.name in err and expect in err, err
    assert "Traceback" not in err


def test_run_refuses_a_bad_pipeline_before_touching_docker(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["run", str(BAD[0])]) == EXIT_INPUT


def _pipeline(tmp_path: Path, steps: dict[str, object]) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "steps": steps}))
    return path


def test_order_is_topological_and_a_hand_off_implies_a_need(tmp_path: Path) -> None:
    step = {"image": "sbx-step:bookworm", "run": "true"}
    path = _pipeline(tmp_path, {
        "package": {**step, "needs": ["test"], "inputs": [{"from": "build", "path": "dist/x"}]},
        "test": {**step, "inputs": [{"from": "build", "path": "dist/"}, "tests/"]},
        "build": {**step, "outputs": ["dist/"]},
    })
    pipeline = validate_pipeline(load_yaml(path))
    assert [s.spec.name for s in pipeline.steps] == ["build", "test", "package"]
    test = pipeline.step("test")
    assert test.needs == ("build",) and test.spec.inputs == ("tests/",)
    assert [(h.from_, h.path) for h in test.handoffs] == [("build", "dist/")]
    assert pipeline.step("package").needs == ("test", "build")


def test_rule_sources_point_at_the_pipeline_lines(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: p\nsteps:\n  fetch:\n    image: sbx-step:bookworm\n    run: 'true'\n"
                    "    egress:\n      allow:\n        - web.sbx.test:8080\n")
    rule = validate_pipeline(load_yaml(path)).step("fetch").spec.policy().rules[0]
    assert rule.source == f"{path}:8"
    assert path.read_text().splitlines()[7].strip() == "- web.sbx.test:8080"


def test_the_example_pipeline_lints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(WHEEL)]) == EXIT_OK
    assert "pipeline wheel, 5 steps" in capsys.readouterr().out
