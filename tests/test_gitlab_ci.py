"""The project's `.gitlab-ci.yml`: valid for GitLab, and wired the way users rely on.

Validation is offline: GitLab's own CI JSON Schema, as vendored by the `check-jsonschema`
package, checked with `jsonschema` directly and with check-jsonschema's CLI, while every
socket connection fails the test. No Docker, no network.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import json
import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import check_jsonschema
import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from sbx.pipelines import cli

ROOT = Path(__file__).resolve().parents[1]
CI_FILE = ROOT / ".gitlab-ci.yml"

# Sub-commands and flags that are being added to sbx right now and are already used in
# .gitlab-ci.yml. Remove each entry once it exists in sbx.pipelines.cli's parser.
PENDING_SUBCOMMANDS: frozenset[str] = frozenset()
PENDING_FLAGS: frozenset[str] = frozenset()

# Top-level keys that are GitLab keywords, not jobs.
GLOBAL_KEYWORDS = frozenset({
    "default", "include", "stages", "variables", "workflow", "spec",
    "image", "services", "cache", "before_script", "after_script",
})
SCRIPT_KEYS = ("before_script", "script", "after_script")
# `cmd || true` and friends, a dangling `||`, and turning errexit off.
SWALLOWS_FAILURE = re.compile(
    r"\|\|\s*(?:true\b|:(?!\S)|exit\s+0\b|$)|\bset\s+\+(?:\w*e|o\s+errexit)")


# --------------------------------------------------------------------------- loading


class _CiLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (GitLab would keep the last one
    silently). GitLab's custom tags (`!reference`) stay unknown, so using one fails loudly
    here instead of being validated as something it is not."""


def _mapping(loader: _CiLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_CiLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _load(text: str) -> dict[str, Any]:
    data = yaml.load(text, Loader=_CiLoader)  # a SafeLoader: no arbitrary objects
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return _load(CI_FILE.read_text(encoding="utf-8"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve a name or open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network use during an offline check: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --------------------------------------------------------------------------- schema


def _vendored_schema() -> dict[str, Any]:
    path = (importlib.resources.files(check_jsonschema) / "builtin_schemas" / "vendor"
            / "gitlab-ci.json")
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _refuse_retrieval(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)


def _errors(data: dict[str, Any]) -> list[jsonschema.ValidationError]:
    schema = _vendored_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    # An empty registry that never retrieves: a remote $ref would be an error, not a fetch.
    validator = validator_class(schema, registry=Registry(retrieve=_refuse_retrieval))
    return sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))


def _describe(errors: list[jsonschema.ValidationError]) -> str:
    return "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_vendored_schema_is_gitlabs_and_self_contained() -> None:
    schema = _vendored_schema()
    assert schema["$id"] == "https://gitlab.com/.gitlab-ci.yml"
    remote = [ref for ref in _refs(schema) if not ref.startswith("#")]
    assert remote == [], "the vendored schema would need the network to resolve these"


@pytest.mark.usefixtures("no_network")
def test_gitlab_ci_matches_gitlabs_schema(ci: dict[str, Any]) -> None:
    errors = _errors(ci)
    assert not errors, _describe(errors)


@pytest.mark.usefixtures("no_network")
def test_check_jsonschema_cli_accepts_it_offline() -> None:
    """The same verdict from the tool itself (ECMAScript regexes, GitLab's `!reference`)."""
    result = CliRunner().invoke(check_jsonschema.main, [
        "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci",
        str(CI_FILE),
    ])
    assert result.exit_code == 0, result.output
    assert "ok -- validation done" in result.output


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda d: d["build"].__setitem__("script", 3), "build"),
    (lambda d: d["release"].__setitem__("scirpt", ["sbx verify sbx-run"]), "release"),
    (lambda d: d["build"]["artifacts"].__setitem__("when", "sometimes"), "build"),
    (lambda d: d["build"]["id_tokens"]["SIGSTORE_ID_TOKEN"].pop("aud"), "build"),
    (lambda d: d["release"]["needs"][0].__setitem__("artifact", True), "release"),
], ids=["script-is-a-number", "unknown-job-keyword", "bad-artifacts-when",
        "id-token-without-aud", "typo-in-needs"])
@pytest.mark.usefixtures("no_network")
def test_schema_rejects_a_broken_copy(ci: dict[str, Any], mutate: Any, where: str) -> None:
    broken = copy.deepcopy(ci)
    mutate(broken)
    errors = _errors(broken)
    assert errors, "the schema check accepted a broken file: it proves nothing"
    assert any(e.absolute_path and e.absolute_path[0] == where for e in errors), \
        _describe(errors)


@pytest.mark.usefixtures("no_network")
def test_check_jsonschema_cli_rejects_a_broken_copy(tmp_path: Path) -> None:
    broken = _load(CI_FILE.read_text(encoding="utf-8"))
    broken["build"]["script"] = 3
    path = tmp_path / ".gitlab-ci.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = CliRunner().invoke(check_jsonschema.main, [
        "--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci", str(path),
    ])
    assert result.exit_code == 1, result.output
    assert "build" in result.output


def test_loader_refuses_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'script'"):
        _load("job:\n  script: [a]\n  script: [b]\n")


# --------------------------------------------------------------------------- reading jobs


def _jobs(ci: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in ci.items()
            if name not in GLOBAL_KEYWORDS and not name.startswith(".")
            and isinstance(body, dict)}


def _resolved(ci: dict[str, Any], name: str) -> dict[str, Any]:
    """The job with its `extends` templates and `default:` merged in, as GitLab does it
    (hashes merge deeply, everything else the job's own value wins)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    def expand(body: dict[str, Any]) -> dict[str, Any]:
        parents = body.get("extends", [])
        merged: dict[str, Any] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            merged = merge(merged, expand(ci[parent]))
        return merge(merged, {k: v for k, v in body.items() if k != "extends"})

    job = expand(ci[name])
    for key, value in ci.get("default", {}).items():
        job.setdefault(key, value)
    return job


def _lines(job: dict[str, Any], *keys: str) -> list[str]:
    def flat(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                yield from flat(item)

    return [line for key in keys for line in flat(job.get(key))]


def _sbx_calls(line: str) -> list[list[str]]:
    """Every `sbx ...` command in a shell line, as argv after `sbx` (global flags dropped)."""
    calls: list[list[str]] = []
    tokens = shlex.split(line, comments=True)
    for i, token in enumerate(tokens):
        if token != "sbx" and not token.endswith("/sbx"):  # also `python -m sbx`
            continue
        argv: list[str] = []
        for arg in tokens[i + 1:]:
            if arg in {"&&", "||", ";", "|"} or arg.endswith(";"):
                break
            argv.append(arg)
        while argv and argv[0] in {"-v", "--verbose"}:
            argv.pop(0)
        calls.append(argv)
    return calls


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from sbx {' '.join(argv)}"
    return argv[argv.index(flag) + 1]


def _one_call(job: dict[str, Any], sub: str, *keys: str) -> list[str]:
    calls = [c for line in _lines(job, *keys) for c in _sbx_calls(line) if c[:1] == [sub]]
    assert len(calls) == 1, f"expected one `sbx {sub}` in {keys}, found {calls}"
    return calls[0]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _assert_docker_engine(job: dict[str, Any]) -> None:
    services = [{"name": s} if isinstance(s, str) else s for s in job.get("services", [])]
    dind = [s for s in services if re.fullmatch(r"docker:([\w.-]+-)?dind", s.get("name", ""))]
    assert dind, f"no docker:dind service in {services}"
    assert dind[0].get("alias") == "docker"
    variables = job.get("variables", {})
    assert variables.get("DOCKER_HOST") == "tcp://docker:2375"
    # Empty, not absent: dind then listens without TLS on 2375, where DOCKER_HOST points.
    assert variables.get("DOCKER_TLS_CERTDIR") == ""


# --------------------------------------------------------------------------- what users rely on


def test_project_ci_runs_lint_and_the_ci_entry_point(ci: dict[str, Any]) -> None:
    jobs = _jobs(ci)
    assert "make lint" in _lines(_resolved(ci, "lint"), "script")
    test = _resolved(ci, "test")
    assert "bash .ci/run" in _lines(test, "script")
    assert str(test["image"]).startswith("python:3.11")
    _assert_docker_engine(test)
    assert (ROOT / ".ci" / "run").is_file()
    assert set(ci["stages"]) >= {jobs[name].get("stage", "test") for name in jobs}


def test_build_job_runs_sbx_with_an_engine_an_identity_and_kept_evidence(
        ci: dict[str, Any]) -> None:
    build = _resolved(ci, "build")
    assert build["stage"] == "build"
    _assert_docker_engine(build)
    assert any(re.fullmatch(r"(python -m )?pip install \.", line)
               for line in _lines(build, "before_script", "script"))

    token = build["id_tokens"]["SIGSTORE_ID_TOKEN"]
    assert _as_list(token["aud"]) == ["sigstore"]

    run = _one_call(build, "run", "script")
    assert run[1] == "examples/wheel/pipeline.yaml"
    assert _option(run, "--signer") == "sigstore"
    out, junit = _option(run, "--out"), _option(run, "--junit")
    codequality = _option(run, "--codequality")

    artifacts = build["artifacts"]
    assert artifacts["when"] == "always"
    paths = [p.rstrip("/") for p in artifacts["paths"]]
    assert out in paths, "the run directory is the evidence the release job verifies"
    assert artifacts["reports"]["junit"] == junit
    assert artifacts["reports"]["codequality"] == codequality

    # The report is made even when `sbx run` failed: after_script, not script.
    report = _one_call(build, "report", "after_script")
    assert report[1] == out
    assert _option(report, "--html") in paths


def _release_env(ci: dict[str, Any], **pipeline: str) -> dict[str, str] | None:
    """The release job's variables in a pipeline with these predefined variables, or None
    when its rules keep it out of that pipeline."""
    env = {"CI_DEFAULT_BRANCH": "main", "CI_SERVER_URL": "https://gitlab.com",
           "CI_PROJECT_URL": "https://gitlab.com/group/project", **pipeline}
    for rule in _resolved(ci, "release")["rules"]:
        if _gitlab_if(rule["if"], env):
            if rule.get("when") == "never":
                return None
            return {**env, **{k: _expand(str(v), env)
                              for k, v in rule.get("variables", {}).items()}}
    return None


def _gitlab_if(expression: str, env: dict[str, str]) -> bool:
    """The subset of GitLab's `rules:if` grammar this file uses: `$VAR`, `==`, `!=`,
    `&&`, `||` and quoted strings."""

    def operand(text: str) -> str | None:
        text = text.strip()
        if text.startswith("$"):
            return env.get(text[1:]) or None
        if text[:1] in {'"', "'"} and text[-1:] == text[:1]:
            return text[1:-1]
        raise AssertionError(f"unsupported rules:if operand {text!r}")

    def term(text: str) -> bool:
        for op in ("==", "!="):
            if op in text:
                left, right = (operand(side) for side in text.split(op, 1))
                return (left == right) if op == "==" else (left != right)
        return operand(text) is not None

    return any(all(term(t) for t in alt.split("&&")) for alt in expression.split("||"))


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m[1] or m[2], ""), text)


def test_release_job_gates_on_sbx_verify(ci: dict[str, Any]) -> None:
    release = _resolved(ci, "release")
    build = _resolved(ci, "build")
    assert release["stage"] == "release"
    needs = [{"job": n} if isinstance(n, str) else n for n in release["needs"]]
    from_build = [n for n in needs if n["job"] == "build"]
    assert from_build, f"release must need build: {needs}"
    assert from_build[0].get("artifacts", True) is True, "release must take build's artifacts"

    verify = _one_call(release, "verify", "script")
    assert verify[1] == _option(_one_call(build, "run", "script"), "--out")
    assert (ROOT / _option(verify, "--policy")).is_file()
    assert _option(verify, "--artifact").startswith(verify[1] + "/outputs/")
    for flag in ("--cert-identity", "--cert-oidc-issuer"):
        _option(verify, flag)


def test_nothing_in_the_release_job_swallows_a_failed_verify(ci: dict[str, Any]) -> None:
    release = _resolved(ci, "release")
    assert release.get("allow_failure", False) is False
    for line in _lines(release, "before_script", "script"):
        assert not SWALLOWS_FAILURE.search(line), f"this line can hide a failed gate: {line}"
    for rule in release["rules"]:
        assert rule.get("allow_failure", False) is False


def test_failure_swallowing_detector_catches_the_usual_spellings() -> None:
    for line in ("sbx verify x || true", "sbx verify x ||:", "sbx verify x || exit 0",
                 "sbx verify x || :", "set +e", "set +eu", "set +o errexit", "sbx verify x ||"):
        assert SWALLOWS_FAILURE.search(line), line
    assert not SWALLOWS_FAILURE.search("sbx verify x --artifact a||b.whl && echo ok")


@pytest.mark.parametrize(("pipeline", "identity"), [
    ({"CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "main"},
     "https://gitlab.com/group/project//.gitlab-ci.yml@refs/heads/main"),
    ({"CI_COMMIT_TAG": "v1.2.3", "CI_COMMIT_REF_NAME": "v1.2.3"},
     "https://gitlab.com/group/project//.gitlab-ci.yml@refs/tags/v1.2.3"),
    ({"CI_COMMIT_BRANCH": "feature", "CI_COMMIT_REF_NAME": "feature"}, None),
    ({"CI_PIPELINE_SOURCE": "merge_request_event", "CI_COMMIT_REF_NAME": "feature",
      "CI_MERGE_REQUEST_IID": "7"}, None),
], ids=["default-branch", "tag", "other-branch", "merge-request"])
def test_release_runs_on_default_branch_and_tags_with_fulcios_identity(
        ci: dict[str, Any], pipeline: dict[str, str], identity: str | None) -> None:
    """Fulcio's SAN for GitLab is https://<ci_config_ref_uri>: the project's CI file at the
    full ref (refs/heads/... or refs/tags/...), and the issuer is the GitLab instance."""
    env = _release_env(ci, **pipeline)
    if identity is None:
        assert env is None, "release must not run in this pipeline"
        return
    assert env is not None, "release must run in this pipeline"
    verify = _one_call(_resolved(ci, "release"), "verify", "script")
    assert _expand(_option(verify, "--cert-identity"), env) == identity
    assert _expand(_option(verify, "--cert-oidc-issuer"), env) == "https://gitlab.com"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_sbx_command_in_the_file_exists(ci: dict[str, Any]) -> None:
    parser = cli._parser()
    commands = _subparsers(parser)
    used = [(name, call) for name in _jobs(ci)
            for line in _lines(_resolved(ci, name), *SCRIPT_KEYS)
            for call in _sbx_calls(line)]
    assert used, "the file runs no sbx command at all"
    for job, argv in used:
        sub = argv[0]
        if sub in PENDING_SUBCOMMANDS and sub not in commands:
            continue
        assert sub in commands, f"{job}: `sbx {sub}` is not an sbx sub-command"
        known = set(commands[sub]._option_string_actions) | set(parser._option_string_actions)
        for arg in argv[1:]:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--"):
                assert flag in known or flag in PENDING_FLAGS, \
                    f"{job}: `sbx {sub}` has no {flag}"
