"""The README's first two commands are what a newcomer types: they must be the commands the
Makefile really implements in full (system tools, install, images, then the thing) and the
one `.ci/run` runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^```\n(.*?)^```", text, re.S | re.M)
    assert block is not None, "the README opens with no command block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def _dry_run(target: str) -> str:
    # -B: as on a fresh clone (no stamps); -n: print the recipes, run nothing.
    return subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    assert _first_commands()[:2] == ["make demo", "make test"]


def test_both_commands_do_all_the_setup_first() -> None:
    for target, last in (("demo", "examples/demo/demo.py"), ("test", "-m pytest")):
        recipe = _dry_run(target)
        steps = [recipe.index(s) for s in ("scripts/need-tools", "pip install",
                                            "-m sbx.sandbox.images", last)]
        assert steps == sorted(steps), f"make {target} runs its setup out of order:\n{recipe}"


def test_ci_runs_the_readmes_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    test_command = _first_commands()[1]
    calls = [line.strip() for line in script.splitlines()
             if line.strip().startswith("make ")]
    assert any(call.split(" PYTHON=")[0] == test_command for call in calls), calls
    assert "pytest" not in "\n".join(line for line in script.splitlines()
                                     if not line.lstrip().startswith("#"))


def _need_tools(tmp_path: Path, uid: int) -> subprocess.CompletedProcess[str]:
    """scripts/need-tools on a machine without mmdebstrap, as `uid`, with apt-get and sudo
    replaced by stand-ins that log their arguments to tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name, body in (("id", f"echo {uid}"), ("apt-get", f'echo "apt-get $*" >> {log}'),
                       ("sudo", "exit 1"), ("python3", "exit 0")):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{_without('mmdebstrap', tmp_path)}", "PYTHON": "python3"}
    return subprocess.run(["/bin/sh", str(ROOT / "scripts" / "need-tools")], env=env,
                          capture_output=True, text=True, check=False)


def test_need_tools_names_the_exact_command_without_root_or_sudo(tmp_path: Path) -> None:
    """A user who is neither root nor a sudoer gets one line and exit 3."""
    result = _need_tools(tmp_path, uid=1000)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "`sudo apt-get install -y mmdebstrap" in lines[0]
    assert not (tmp_path / "calls").exists()


def test_need_tools_installs_mmdebstrap_through_apt_as_root(tmp_path: Path) -> None:
    result = _need_tools(tmp_path, uid=0)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("apt-get update")
    assert calls[1].startswith("apt-get install -y") and " mmdebstrap " in calls[1] + " "


def _without(tool: str, tmp_path: Path) -> str:
    """A directory of symlinks to the system's tools, minus `tool`."""
    shadow = tmp_path / "sys"
    if shadow.exists():
        return str(shadow)
    shadow.mkdir()
    for folder in (Path("/usr/bin"), Path("/bin")):
        for entry in folder.iterdir():
            target = shadow / entry.name
            if entry.name != tool and not target.exists():
                target.symlink_to(entry)
    return str(shadow)
