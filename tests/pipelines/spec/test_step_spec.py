"""The step file: good files, the bad-step corpus and error rendering (no Docker, no network)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from sbx.errors import EXIT_INPUT, SpecError
from sbx.pipelines.spec.errors import DANGEROUS_FIELDS, format_field
from sbx.pipelines.spec.loader import load_yaml
from sbx.pipelines.spec.step import (
    EgressMode,
    StepSpec,
    load_step,
    parse_memory,
    spec_digest,
    step_json_schema,
)
from sbx.sandbox.policy import Policy

BAD_STEPS = Path(__file__).resolve().parents[2] / "data" / "bad_steps"
_EXPECT = re.compile(r"^# expect: (.+)$", re.MULTILINE)

MINIMAL = 'name: hello\nimage: sbx-step:bookworm\nrun: "echo hi"\n'

FULL = """\
name: hello
image: sbx-step:bookworm
run: "echo hi"
workdir: /workspace
inputs: ["src/", "*.txt"]
outputs: ["dist/"]
egress:
  mode: audit
  allow:
    - "web:8080"
    - "*.pypi.org:443"
    - 198.18.0.0/24
  proxy_env: true
env: {KEY: value, _X1: ""}
secrets: [TOKEN]
resources: {cpus: 1, memory: "512m", pids: 256, timeout: 600}
user: "1000:1000"
read_only_rootfs: true
tmpfs: ["/tmp", "/var/tmp"]
"""


def _write(tmp_path: Path, text: str, name: str = "step.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _refusal(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_step(path)
    message = info.value.diagnostics()
    assert "\n" not in message
    assert "pydantic" not in message and "http" not in message
    assert path.name in message
    assert info.value.exit_code == EXIT_INPUT
    return info.value


# --------------------------------------------------------------------------- corpus


def _corpus() -> list[Path]:
    return sorted(BAD_STEPS.glob("*.yaml"))


def test_corpus_is_present() -> None:
    assert len(_corpus()) >= 25


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.stem)
def test_bad_step_is_refused(path: Path) -> None:
    match = _EXPECT.search(path.read_text(encoding="utf-8"))
    assert match, f"{path.name} needs a '# expect: ...' line"
    err = _refusal(path)
    assert match.group(1).strip() in err.diagnostics()


def test_oversized_step(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(MINIMAL.encode() + b"# " + b"x" * (1024 * 1024) + b"\n")
    assert "larger than" in _refusal(path).diagnostics()


def test_non_utf8_step(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"env: {A: caf\xe9}\n")
    err = _refusal(path)
    assert f"byte offset {len(MINIMAL) + 12}" in err.diagnostics()


# --------------------------------------------------------------------------- good files


def test_minimal_step_defaults(tmp_path: Path) -> None:
    spec = load_step(_write(tmp_path, MINIMAL))
    assert spec.name == "hello"
    assert spec.run == "echo hi"
    assert spec.workdir == "/workspace"
    assert spec.egress.mode is EgressMode.ENFORCE
    assert spec.egress.allow == ()
    assert spec.egress.proxy_env is False
    assert spec.resources.cpus == 2.0
    assert spec.resources.memory_bytes == 1024**3
    assert spec.resources.pids == 512
    assert spec.resources.timeout == 3600
    assert spec.user is None
    assert spec.read_only_rootfs is False
    assert spec.policy() == Policy(mode="enforce", rules=())


def test_full_step(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL)
    spec = load_step(path)
    assert spec.inputs == ("src/", "*.txt")
    assert spec.outputs == ("dist/",)
    assert spec.env == {"KEY": "value", "_X1": ""}
    assert spec.secrets == ("TOKEN",)
    assert spec.resources.cpus == 1.0
    assert spec.resources.memory_bytes == 512 * 1024 * 1024
    assert spec.user == "1000:1000"
    assert spec.tmpfs == ("/tmp", "/var/tmp")
    assert spec.egress.proxy_env is True


def test_policy_rules_carry_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL)
    policy = load_step(path).policy()
    assert policy.mode == "audit"
    assert [r.source for r in policy.rules] == [f"{path}:10", f"{path}:11", f"{path}:12"]
    rule = policy.match_name("files.pypi.org", 443)
    assert rule is not None and rule.source == f"{path}:11"
    assert policy.match_ip("198.18.0.9", 22) is not None
    # An explicit source file replaces the loaded path but keeps the lines.
    assert load_step(path).policy("steps/x.yaml").rules[0].source == "steps/x.yaml:10"


def test_policy_lines_for_flow_sequences(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "egress:\n  allow: [a.example.com, b.example.com]\n")
    assert [r.source for r in load_step(path).policy().rules] == [f"{path}:5", f"{path}:5"]


def test_a_mapping_entry_is_nameless_or_action_level(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "egress:\n  allow:\n"
                  "    - {host: git.example.com, port: 22, nameless: true}\n"
                  "    - {host: pypi.org, port: 443, methods: [GET], paths: ['/simple/**']}\n")
    ssh, pypi = load_step(path).policy().rules
    assert ssh.nameless and ssh.actions is None and ssh.source == f"{path}:6"
    assert not pypi.nameless and pypi.actions is not None and pypi.actions.methods == ("GET",)


def test_policy_without_a_file() -> None:
    spec = StepSpec.model_validate(
        {"name": "x", "image": "i", "run": "true", "egress": {"allow": ["a.example.com"]}}
    )
    assert spec.policy().rules[0].source == ""
    assert spec.policy("f.yaml").rules[0].source == "f.yaml"


def test_policy_digest_is_stable(tmp_path: Path) -> None:
    a = load_step(_write(tmp_path, FULL, "a.yaml")).policy("s.yaml")
    b = load_step(_write(tmp_path, FULL, "b.yaml")).policy("s.yaml")
    assert a.digest() == b.digest()


def test_run_argv_lists(tmp_path: Path) -> None:
    text = 'name: x\nimage: i\nrun: [["python3", "-V"], ["make"]]\n'
    spec = load_step(_write(tmp_path, text))
    assert spec.run == (("python3", "-V"), ("make",))


def test_spec_is_frozen(tmp_path: Path) -> None:
    spec = load_step(_write(tmp_path, MINIMAL))
    with pytest.raises(ValueError):
        spec.name = "other"


def test_spec_digest(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    digest = spec_digest(load_yaml(path))
    assert digest == "sha256:" + hashlib.sha256(MINIMAL.encode()).hexdigest()


def test_json_schema() -> None:
    schema = step_json_schema()
    json.dumps(schema)
    assert set(schema["required"]) == {"name", "image", "run"}
    assert schema["additionalProperties"] is False
    assert "egress" in schema["properties"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ("resources: {pids: lots}\n", "resources.pids", "expected a whole number"),
        ("resources: {cpus: 0}\n", "resources.cpus", "at least"),
        ("resources: {cpus: '1'}\n", "resources.cpus", "expected a number"),
        ("resources: {memory: 1t}\n", "resources.memory", "not a size"),
        ("resources: {memory: 1k}\n", "resources.memory", "6m..256g"),
        ("resources: {timeout: 0}\n", "resources.timeout", "at least 1"),
        ("resources: {pids: 100000}\n", "resources.pids", "at most"),
        ("resources: {timeout: true}\n", "resources.timeout", "boolean"),
        ("user: 1000\n", "user", "quote it"),
        ("user: 'a b'\n", "user", "1000:1000"),
        ("read_only_rootfs: 'yes'\n", "read_only_rootfs", "true or false"),
        ("env: {A: 1}\n", "env.A", "quote it"),
        ("env: {bad-name: x}\n", "env.bad-name", "not a valid variable name"),
        ("env: {sbx_x: x}\n", "env.sbx_x", "reserves"),
        ("secrets: [SBX_TOKEN]\n", "secrets[0]", "reserves"),
        ("secrets: [A, A]\n", "secrets", "twice"),
        ("env: {A: x}\nsecrets: [A]\n", "secrets", "both in env and in secrets"),
        ("workdir: /\n", "workdir", "container root"),
        ("workdir: relative\n", "workdir", "absolute"),
        ("workdir: /a/./b\n", "workdir", "not normalised"),
        ("workdir: /run/x\n", "workdir", "under /run"),
        ("workdir: /var/run\n", "workdir", "under /var/run"),
        ("workdir: /sys\n", "workdir", "under /sys"),
        ("workdir: /work/docker.sock\n", "workdir", "Docker socket"),
        ("tmpfs: [/run/docker.sock]\n", "tmpfs[0]", "Docker socket"),
        ("tmpfs: [/a:/b]\n", "tmpfs[0]", "':'"),
        ("inputs: ['~/.ssh']\n", "inputs[0]", "'~'"),
        ("inputs: ['']\n", "inputs[0]", "empty"),
        ("outputs: ['/out']\n", "outputs[0]", "absolute"),
        ("outputs: ['a/../../b']\n", "outputs[0]", "'..'"),
        ("egress: {allow: [ok.example.com, '*']}\n", "egress.allow[1]", "every host"),
        ("egress: {allow: [8080]}\n", "egress.allow[0]", "quote it"),
        ("egress: {proxy_env: 1}\n", "egress.proxy_env", "true or false"),
        ("egress: {colour: x}\n", "egress.colour", "known fields: mode, allow, proxy_env"),
        ("egress: {network: host}\n", "egress.network", "own isolated network"),
        ("egress: open\n", "egress", "mapping"),
        ("egress: {allow: [{host: git.example.com, port: 22, nameless: true, methods: [GET]}]}\n",
         "egress.allow[0]", "nameless cannot go with methods, paths or inspect"),
        ("egress: {allow: [{host: git.example.com, port: 22, nameless: true, inspect: false}]}\n",
         "egress.allow[0]", "nameless cannot go with methods, paths or inspect"),
    ],
)
def test_field_refusals(tmp_path: Path, extra: str, field: str, reason: str) -> None:
    err = _refusal(_write(tmp_path, MINIMAL + extra))
    assert err.field == field
    assert reason in err.reason
    assert err.line is not None and err.line >= 4


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        ('""', "no command given"),
        ('"   "', "no command given"),
        ("[]", "no command given"),
        ('["echo hi"]', "mixes forms"),
        ("[[]]", "non-empty argv list"),
        ('[[""]]', "empty program name"),
        ('[["echo", 1]]', "quote it"),
        ("5", "not a number"),
        ("{a: b}", "not a mapping"),
    ],
)
def test_run_refusals(tmp_path: Path, run: str, reason: str) -> None:
    err = _refusal(_write(tmp_path, f"name: x\nimage: i\nrun: {run}\n"))
    assert err.field == "run"
    assert err.line == 3
    assert reason in err.reason


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("image: i\nrun: x\n", "name"),
        ("name: x\nrun: x\n", "image"),
        ("name: x\nimage: i\n", "run"),
    ],
)
def test_missing_fields(tmp_path: Path, text: str, field: str) -> None:
    err = _refusal(_write(tmp_path, text))
    assert err.field == field
    assert "missing" in err.reason


@pytest.mark.parametrize("key", sorted(DANGEROUS_FIELDS))
def test_every_dangerous_field_has_its_own_refusal(tmp_path: Path, key: str) -> None:
    err = _refusal(_write(tmp_path, MINIMAL + f"{key}: true\n"))
    assert err.field == key
    assert err.line == 4
    assert err.reason == DANGEROUS_FIELDS[key]
    assert "unknown field" not in err.reason


def test_dangerous_field_wins_over_earlier_errors(tmp_path: Path) -> None:
    text = "name: x\nimage: i\nrun: ''\nprivileged: true\n"
    err = _refusal(_write(tmp_path, text))
    assert err.field == "privileged"


def test_first_error_is_the_topmost_line(tmp_path: Path) -> None:
    text = "name: x\nimage: i\nrun: x\ntmpfs: [/proc]\nresources: {pids: lots}\nworkdir: /sys\n"
    err = _refusal(_write(tmp_path, text))
    assert err.field == "tmpfs[0]"
    assert err.line == 4


def test_rendering_matches_the_documented_format(tmp_path: Path) -> None:
    path = _write(tmp_path, "# a step\nname: x\nimage: i\nprivileged: true\nrun: x\n", "x.yaml")
    with pytest.raises(SpecError) as info:
        load_step(path)
    assert info.value.diagnostics() == (
        f"{path}:4: privileged: sbx never runs privileged containers; remove the field"
    )


# --------------------------------------------------------------------------- helpers


def test_format_field() -> None:
    assert format_field(("egress", "allow", 0)) == "egress.allow[0]"
    assert format_field(("run", 1, 2)) == "run[1][2]"
    assert format_field(()) == ""


@pytest.mark.parametrize(
    ("value", "size"),
    [("6m", 6 * 1024**2), ("1g", 1024**3), ("1G", 1024**3), ("8192k", 8 * 1024**2), (10**9, 10**9)],
)
def test_parse_memory(value: str | int, size: int) -> None:
    assert parse_memory(value) == size


@pytest.mark.parametrize("value", ["5m", "257g", "1.5g", "-1g", "", True])
def test_parse_memory_refuses(value: str | int) -> None:
    with pytest.raises(ValueError):
        parse_memory(value)
