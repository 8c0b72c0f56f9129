"""Pure helpers of `sbx run`: the container command, input expansion, the step config.

No Docker: specs are loaded from YAML files written to a temporary directory.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from sbx.errors import SpecError
from sbx.pipelines.run.runner import command_of, resolve_inputs, step_config
from sbx.pipelines.spec.step import StepSpec, load_step


def write_step(directory: Path, **fields: object) -> tuple[StepSpec, Path]:
    """A step file with defaults for the required fields; returns (spec, path)."""
    data: dict[str, object] = {"name": "build", "image": "sbx-step:bookworm", "run": "true"}
    data.update(fields)
    path = directory / "step.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_step(path), path


# --------------------------------------------------------------------------- command_of


def test_script_runs_under_sh_e(tmp_path: Path) -> None:
    spec, _ = write_step(tmp_path, run="make\nmake test\n")
    assert command_of(spec) == ("/bin/sh", "-ec", "make\nmake test\n")


def test_one_argv_list_runs_as_is_without_a_shell(tmp_path: Path) -> None:
    spec, _ = write_step(tmp_path, run=[["python3", "-c", "print('$HOME; rm -rf /')"]])
    assert command_of(spec) == ("python3", "-c", "print('$HOME; rm -rf /')")


def test_several_argv_lists_run_in_order_with_every_argument_quoted(tmp_path: Path) -> None:
    commands = [
        ["echo", "two words", "$HOME", "it's", "a;b", "`id`", "*"],
        ["printf", "%s\\n", "line\nbreak", ""],
        ["true"],
    ]
    spec, _ = write_step(tmp_path, run=commands)
    argv = command_of(spec)
    assert argv[:2] == ("/bin/sh", "-ec")
    assert len(argv) == 3
    script_lines = argv[2].split("\n")
    # Quoted newlines make shlex, not str.split, the right way to read the lines back.
    parsed: list[list[str]] = []
    buffer = ""
    for line in script_lines:
        buffer = f"{buffer}\n{line}" if buffer else line
        try:
            parsed.append(shlex.split(buffer))
            buffer = ""
        except ValueError:  # inside an open quote: the argument holds a newline
            continue
    assert buffer == ""
    assert parsed == commands


# --------------------------------------------------------------------------- resolve_inputs


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "src" / "pkg" / "a.py").write_text("a")
    (ws / "src" / "b.py").write_text("b")
    (ws / "src" / "notes.txt").write_text("n")
    (ws / "README.md").write_text("r")
    (ws / "Makefile").write_text("all:")
    return ws


def rels(found: tuple[tuple[Path, str], ...]) -> list[str]:
    return [rel for _, rel in found]


def test_globs_match_files_in_the_workspace(workspace: Path) -> None:
    spec, path = write_step(workspace, inputs=["*.md", "src/**/*.py"])
    found = resolve_inputs(spec, path, workspace)
    assert rels(found) == ["README.md", "src/b.py", "src/pkg/a.py"]
    assert all(p == workspace / rel for p, rel in found)


def test_directory_input_is_taken_recursively(workspace: Path) -> None:
    spec, path = write_step(workspace, inputs=["src"])
    assert rels(resolve_inputs(spec, path, workspace)) == [
        "src",
        "src/b.py",
        "src/notes.txt",
        "src/pkg",
        "src/pkg/a.py",
    ]


def test_overlapping_patterns_list_each_file_once(workspace: Path) -> None:
    spec, path = write_step(workspace, inputs=["src", "src/*.py", "Makefile"])
    found = rels(resolve_inputs(spec, path, workspace))
    assert found.count("src/b.py") == 1
    assert found == sorted(found) and "Makefile" in found


def test_symlink_leading_outside_the_workspace_is_refused(workspace: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("k")
    (workspace / "key").symlink_to(secret)
    spec, path = write_step(workspace, inputs=["key"])
    with pytest.raises(SpecError) as err:
        resolve_inputs(spec, path, workspace)
    assert err.value.field == "inputs[0]"
    assert "symbolic link" in str(err.value)


def test_symlinked_directory_leading_outside_is_refused_even_inside_a_glob(
    workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("k")
    (workspace / "src" / "home").symlink_to(outside)
    spec, path = write_step(workspace, inputs=["README.md", "src/**"])
    with pytest.raises(SpecError) as err:
        resolve_inputs(spec, path, workspace)
    assert err.value.field == "inputs[1]"


def test_pattern_matching_nothing_is_an_error_naming_the_entry(workspace: Path) -> None:
    spec, path = write_step(workspace, inputs=["src", "dist/*.whl"])
    with pytest.raises(SpecError) as err:
        resolve_inputs(spec, path, workspace)
    assert err.value.field == "inputs[1]"
    assert "dist/*.whl" in str(err.value) and "matches nothing" in str(err.value)
    assert str(path) in str(err.value)


def test_workspace_may_be_a_symlink_itself(workspace: Path, tmp_path: Path) -> None:
    link = tmp_path / "ws-link"
    link.symlink_to(workspace)
    spec, path = write_step(workspace, inputs=["README.md"])
    assert rels(resolve_inputs(spec, path, link)) == ["README.md"]


# --------------------------------------------------------------------------- step_config


def test_missing_secret_is_an_error_naming_it(tmp_path: Path) -> None:
    spec, path = write_step(tmp_path, secrets=["NPM_TOKEN", "PYPI_TOKEN"])
    with pytest.raises(SpecError) as err:
        step_config(spec, path, tmp_path, {"PYPI_TOKEN": "x"})
    assert err.value.field == "secrets"
    assert "NPM_TOKEN" in str(err.value) and "PYPI_TOKEN" not in str(err.value)


def test_step_config_carries_secrets_command_and_inputs(workspace: Path) -> None:
    spec, path = write_step(
        workspace,
        secrets=["NPM_TOKEN"],
        env={"B": "2", "A": "1"},
        inputs=["README.md"],
        outputs=["dist/"],
        run=[["make", "all"]],
        egress={"allow": ["registry.npmjs.org:443"]},
    )
    config = step_config(spec, path, workspace, {"NPM_TOKEN": "t0k", "OTHER": "no"})
    assert config.secrets == (("NPM_TOKEN", "t0k"),)
    assert config.env == (("A", "1"), ("B", "2"))
    assert config.command == ("make", "all")
    assert rels(config.inputs) == ["README.md"]
    assert config.outputs == ("dist/",)
    assert [r.text for r in config.policy.rules] == ["registry.npmjs.org:443"]
    assert config.policy.rules[0].source.startswith(str(path))


def test_runs_started_together_get_distinct_docker_names() -> None:
    """Object names embed the whole run id: two runs of one step never collide."""
    from sbx.pipelines.run.runner import new_run_id
    from sbx.sandbox.labels import object_name

    names = {object_name(new_run_id(), "hello", "gateway") for _ in range(50)}
    assert len(names) == 50
