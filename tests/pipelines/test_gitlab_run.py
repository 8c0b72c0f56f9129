"""The child pipeline `sbx gitlab` writes, run the way a GitLab runner runs it: each job in
a fresh copy of the project, its `needs:` artifacts restored, its `script:` lines in a
shell; then its verify job. The jobs succeed and the gate passes; a job's artifact
tampered with on the way to the gate fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sbx.attest.signing.local import KeyPair
from tests.pipelines.run.test_scale_out import GITLAB, PIPELINE

pytestmark = pytest.mark.docker


def _shell(script: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # GitLab runs the lines of `script:` in one shell that stops at the first failure.
    return subprocess.run(["bash", "-ec", "\n".join(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _run_child(tmp_path: Path, signing_key: KeyPair,
               tamper: str | None = None) -> dict[str, subprocess.CompletedProcess[str]]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sbx").write_text(f'#!/bin/sh\nexec {sys.executable} -m sbx "$@"\n')
    (shim / "sbx").chmod(0o755)
    env = {**os.environ, **GITLAB, "PATH": f"{shim}:{os.environ['PATH']}",
           "CI_COMMIT_BRANCH": "main", "SBX_PUBLIC_KEY": str(signing_key.public),
           "SBX_SIGNING_KEY": str(signing_key.private),
           "COLUMNS": "400"}  # the gate's table unwrapped, so its words can be found
    made = _shell(["sbx gitlab pipeline.yaml --out child.yml --signer local --no-dind"],
                  project, env)
    assert made.returncode == 0, made.stderr
    child: dict[str, Any] = yaml.safe_load((project / "child.yml").read_text())
    saved = tmp_path / "artifacts"
    results = {}
    for name, job in child.items():
        if not name.startswith("sbx:"):
            continue
        workdir = tmp_path / "jobs" / name.replace(":", "-")
        shutil.copytree(project, workdir)
        for need in job["needs"]:
            assert need["artifacts"] is True
            shutil.copytree(saved / need["job"], workdir, dirs_exist_ok=True)
        if name == "sbx:verify" and tamper:
            (workdir / tamper).write_text("tampered on the way\n")
        results[name] = done = _shell(job["script"], workdir, env)
        assert done.returncode == 0 or name == "sbx:verify", (name, done.stderr)
        for path in job.get("artifacts", {}).get("paths", []):
            shutil.copytree(workdir / path, saved / name / path)
    return results


@pytest.mark.usefixtures("sbx_images")
def test_the_generated_child_pipeline_runs_and_its_gate_passes(
        tmp_path: Path, signing_key: KeyPair) -> None:
    results = _run_child(tmp_path, signing_key)
    assert list(results) == ["sbx:source", "sbx:upper", "sbx:count", "sbx:join", "sbx:verify"]
    gate = results["sbx:verify"]
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "verification PASSED" in gate.stdout


@pytest.mark.usefixtures("sbx_images")
def test_the_gate_fails_on_an_artifact_changed_on_the_way(
        tmp_path: Path, signing_key: KeyPair) -> None:
    results = _run_child(tmp_path, signing_key,
                         tamper="sbx-runs/count/outputs/count/n/count.txt")
    gate = results["sbx:verify"]
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "job count" in gate.stdout and "run-files" in gate.stdout
