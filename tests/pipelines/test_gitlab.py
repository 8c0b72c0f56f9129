"""`sbx gitlab` and the CI/CD component: valid for GitLab, and wired as users rely on.

Validated offline against GitLab's CI JSON Schema as check-jsonschema vendors it (the
helpers of tests/test_gitlab_ci.py), with every socket refused. No Docker.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import check_jsonschema
import pytest
import yaml
from click.testing import CliRunner
from test_gitlab_ci import (  # noqa: F401 (no_network is a fixture)
    _CiLoader,
    _describe,
    _errors,
    _sbx_calls,
    _subparsers,
    no_network,
)

from sbx.pipelines import cli
from sbx.pipelines.gitlab import GitlabOptions, child_pipeline, job_name, run_dir
from sbx.pipelines.run.runner import load_run_file

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "examples/wheel/pipeline.yaml"
COMPONENT = ROOT / "templates" / "sbx-pipeline.yml"


def _generate(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "child.yml"
    assert cli.main(["gitlab", str(ROOT / WHEEL), "--out", str(out), *extra]) == 0
    data = yaml.load(out.read_text(encoding="utf-8"), Loader=_CiLoader)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def child(tmp_path: Path) -> dict[str, Any]:
    _, pipeline, _ = load_run_file(ROOT / WHEEL)
    return child_pipeline(pipeline, WHEEL, GitlabOptions())


@pytest.mark.usefixtures("no_network")
def test_the_written_child_pipeline_matches_gitlabs_schema(tmp_path: Path) -> None:
    for extra in ((), ("--signer", "local", "--no-dind", "--policy", "policy.yaml")):
        data = _generate(tmp_path, *extra)
        errors = _errors(data)
        assert not errors, _describe(errors)
    result = CliRunner().invoke(check_jsonschema.main, [
        "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci",
        str(tmp_path / "child.yml")])
    assert result.exit_code == 0, result.output


def test_one_job_per_step_with_needs_mirroring_the_dag(child: dict[str, Any]) -> None:
    _, pipeline, _ = load_run_file(ROOT / WHEEL)
    parser = cli._parser()
    run_flags = set(_subparsers(parser)["run"]._option_string_actions)
    for planned in pipeline.steps:
        step = planned.spec.name
        job = child[job_name(step)]
        assert job["needs"] == [{"job": job_name(n), "artifacts": True} for n in planned.needs]
        (line,) = job["script"]
        (argv,) = _sbx_calls(line)
        assert argv[:4] == ["run", WHEEL, "--step", step]
        assert set(a for a in argv if a.startswith("--")) <= run_flags
        inputs = [argv[i + 1] for i, a in enumerate(argv) if a == "--inputs-from"]
        assert inputs == [run_dir(n) for n in planned.needs]
        assert argv[argv.index("--out") + 1] == run_dir(step)
        assert argv[argv.index("--signer") + 1] == "sigstore"
        assert job["artifacts"] == {"when": "always", "paths": [run_dir(step) + "/"]}
    template = child[".sbx-step"]
    assert template["id_tokens"] == {"SIGSTORE_ID_TOKEN": {"aud": "sigstore"}}
    assert template["services"][0]["name"] == "docker:dind"


def test_the_verify_job_checks_every_job_as_one_pipeline(child: dict[str, Any]) -> None:
    _, pipeline, _ = load_run_file(ROOT / WHEEL)
    steps = [s.spec.name for s in pipeline.steps]
    verify = child["sbx:verify"]
    assert verify["needs"] == [{"job": job_name(s), "artifacts": True} for s in steps]
    calls = [c for line in verify["script"] for c in _sbx_calls(line)]
    assert len(calls) == 1 and calls[0][0] == "verify"
    argv = calls[0]
    assert argv[1:1 + len(steps)] == [run_dir(s) for s in steps]
    verify_flags = set(_subparsers(cli._parser())["verify"]._option_string_actions)
    assert set(a for a in argv if a.startswith("--")) <= verify_flags
    assert argv[argv.index("--cert-identity") + 1] == \
        "${CI_PROJECT_URL}//${CI_CONFIG_PATH}@${SBX_SIGNED_REF}"
    assert not any(re.search(r"\|\|\s*true|set \+e", line) for line in verify["script"])
    assert verify.get("allow_failure", False) is False
    assert verify["when"] == "always"  # a failed step is reported by the gate, not skipped


def _component() -> list[dict[str, Any]]:
    docs = list(yaml.load_all(COMPONENT.read_text(encoding="utf-8"), Loader=_CiLoader))
    assert len(docs) == 2 and all(isinstance(d, dict) for d in docs)
    return docs


def _interpolate(node: Any, inputs: dict[str, str]) -> Any:
    """GitLab's `$[[ inputs.NAME ]]` interpolation, as a project including it gets it."""
    if isinstance(node, str):
        return re.sub(r"\$\[\[\s*inputs\.([\w-]+)\s*\]\]", lambda m: inputs[m[1]], node)
    if isinstance(node, list):
        return [_interpolate(v, inputs) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate(v, inputs) for k, v in node.items()}
    return node


@pytest.mark.usefixtures("no_network")
def test_the_component_matches_gitlabs_schema_before_and_after_interpolation() -> None:
    header, body = _component()
    assert set(header["spec"]["inputs"]) >= {"pipeline", "image", "release-identity"}
    for doc in (header, body):
        errors = _errors(doc)
        assert not errors, _describe(errors)
    defaults = {k: str(v.get("default", "")) for k, v in header["spec"]["inputs"].items()}
    used = set(re.findall(r"\$\[\[\s*inputs\.([\w-]+)", COMPONENT.read_text()))
    assert used <= set(defaults), f"inputs used but not declared: {used - set(defaults)}"
    included = _interpolate(body, defaults)
    errors = _errors(included)
    assert not errors, _describe(errors)
    trigger = included["sbx-pipeline"]["trigger"]
    assert trigger["include"] == [{"artifact": "sbx-child.yml", "job": "sbx-generate"}]
    assert trigger["strategy"] == "depend"
    (argv,) = [c for line in included["sbx-generate"]["script"] for c in _sbx_calls(line)]
    assert argv[:2] == ["gitlab", defaults["pipeline"]]
    assert argv[argv.index("--out") + 1] == "sbx-child.yml"
    assert "sbx-child.yml" in included["sbx-generate"]["artifacts"]["paths"]
    gitlab_flags = set(_subparsers(cli._parser())["gitlab"]._option_string_actions)
    assert set(a for a in argv if a.startswith("--")) <= gitlab_flags


Mutation = Callable[[dict[str, Any]], None]


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda d: d["sbx:build"]["needs"][0].__setitem__("artifact", True), "sbx:build"),
    (lambda d: d["sbx:fetch"]["artifacts"].__setitem__("when", "sometimes"), "sbx:fetch"),
    (lambda d: d["sbx:fetch"].__setitem__("id_tokens", {"SIGSTORE_ID_TOKEN": {}}), "sbx:fetch"),
    (lambda d: d["sbx:verify"].__setitem__("script", 3), "sbx:verify"),
], ids=["typo-in-needs", "bad-artifacts-when", "id-token-without-aud", "script-is-a-number"])
@pytest.mark.usefixtures("no_network")
def test_schema_rejects_a_broken_child_pipeline(child: dict[str, Any], mutate: Mutation,
                                                where: str) -> None:
    broken = copy.deepcopy(child)
    mutate(broken)
    errors = _errors(broken)
    assert errors, "the schema check accepted a broken file: it proves nothing"
    assert any(e.absolute_path and e.absolute_path[0] == where for e in errors), \
        _describe(errors)


@pytest.mark.parametrize(("doc", "mutate"), [
    (0, lambda d: d["spec"].__setitem__("inptus", d["spec"].pop("inputs"))),
    (0, lambda d: d["spec"]["inputs"]["stage"].__setitem__("type", "number")),
    (1, lambda d: d["sbx-pipeline"]["trigger"].__setitem__("strategy", "sometimes")),
    (1, lambda d: d["sbx-pipeline"]["trigger"]["include"][0].__setitem__("jobb", "x")),
], ids=["inputs-typo", "default-of-the-wrong-type", "bad-strategy", "typo-in-include"])
@pytest.mark.usefixtures("no_network")
def test_schema_rejects_a_broken_component(doc: int, mutate: Mutation) -> None:
    broken = copy.deepcopy(_component()[doc])
    mutate(broken)
    assert _errors(broken), "the schema check accepted a broken component: it proves nothing"


def test_a_step_file_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["gitlab", str(ROOT / "examples/hello/step.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a pipeline file" in err
