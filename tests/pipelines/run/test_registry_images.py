"""`sbx run` with images from a registry: a real one on this machine (tests/registry.py).

The step names the image by tag or by digest; sbx pulls it on the host side, runs exactly
the image it resolved, and the link Statement names the registry digest and the platform.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from sbx.errors import EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_OK
from sbx.pipelines.cli import main
from sbx.sandbox import images

pytestmark = pytest.mark.docker


def _step(tmp_path: Path, image: str, *, pull: str | None = None,
          name: str = "pulled") -> Path:
    spec: dict[str, Any] = {
        "name": name, "image": image,
        "run": "cat /etc/sbx-marker 2>/dev/null || echo no-marker",
        "egress": {"allow": []},
        "resources": {"cpus": 1, "memory": "256m", "pids": 64, "timeout": 60}}
    if pull is not None:
        spec["pull"] = pull
    path = tmp_path / f"{name}-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _link_environment(out: Path, step: str = "pulled") -> dict[str, Any]:
    envelope = json.loads((out / "attestations" / f"{step}.link.dsse.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    return dict(statement["predicate"]["environment"])


def _run(tmp_path: Path, step: Path, *extra: str, quiet: bool = True) -> tuple[int, Path]:
    out = tmp_path / f"run-{secrets.token_hex(3)}"
    return main(["run", str(step), "--out", str(out), *(["--quiet"] if quiet else []),
                 *extra]), out


@pytest.fixture
def repo(registry: Any) -> Iterator[str]:
    name = f"sbx-test/run{secrets.token_hex(3)}"
    yield name
    registry.forget(f"{name}:v1")


def test_a_tag_moved_between_two_runs_shows_as_another_digest_in_the_evidence(
        tmp_path: Path, registry: Any, repo: str, docker_client: docker.DockerClient,
        sbx_images: tuple[str, str]) -> None:
    from registry import variant_image

    first = registry.push(sbx_images[1], f"{repo}:v1")
    registry.forget(f"{repo}:v1")
    step = _step(tmp_path, f"{registry.host}/{repo}:v1")
    code, out1 = _run(tmp_path, step)
    assert code == EXIT_OK
    env1 = _link_environment(out1)
    assert env1["imageRepoDigest"] == f"{registry.host}/{repo}@{first}"
    assert env1["imagePlatform"].startswith("linux/")
    assert env1["imageDigest"] == docker_client.api.inspect_image(sbx_images[1])["Id"]
    assert (out1 / "logs" / "pulled.log").read_text().strip() == "no-marker"

    moved = variant_image(docker_client, sbx_images[1], "moved", secrets.token_hex(3))
    try:
        second = registry.push(moved, f"{repo}:v1")
        code, out2 = _run(tmp_path, step, "--pull", "always")
        assert code == EXIT_OK
        env2 = _link_environment(out2)
        assert env2["imageRepoDigest"] == f"{registry.host}/{repo}@{second}" != \
            env1["imageRepoDigest"]
        assert env2["imageDigest"] == moved != env1["imageDigest"]
        assert (out2 / "logs" / "pulled.log").read_text().strip() == "moved"
        record = json.loads((out2 / "run.json").read_text())["steps"]["pulled"]["image"]
        assert record["repo_digest"] == env2["imageRepoDigest"] and record["pulled"] is True

        # By digest: exactly the first image, although the tag (here too) names the second.
        pinned = _step(tmp_path, f"{registry.host}/{repo}@{first}")
        code, out3 = _run(tmp_path, pinned)
        assert code == EXIT_OK
        env3 = _link_environment(out3)
        assert env3["imageRepoDigest"] == env1["imageRepoDigest"]
        assert env3["imageDigest"] == env1["imageDigest"]
        assert (out3 / "logs" / "pulled.log").read_text().strip() == "no-marker"
    finally:
        docker_client.api.remove_image(moved, force=True)


def test_registry_failures_are_one_line_with_their_exit_code_and_leave_nothing(
        tmp_path: Path, registry: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cases = [
        (_step(tmp_path, f"{registry.host}/sbx-test/none:v1"), EXIT_INPUT,
         "image: image localhost"),
        (_step(tmp_path, f"localhost:{port}/sbx-test/none:v1"), EXIT_ENVIRONMENT,
         f"no registry answers at localhost:{port}"),
        (_step(tmp_path, f"{registry.host}/sbx-test/none:v1", pull="never"), EXIT_ENVIRONMENT,
         "pull policy is never"),
        (_step(tmp_path, f"{registry.host}/sbx-test/UPPER:v1"), EXIT_INPUT,
         "is not a valid image reference"),
    ]
    for step, code, text in cases:
        capsys.readouterr()
        exit_code, out = _run(tmp_path, step)
        assert exit_code == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sbx: error: ") and text in err[0], err
        assert str(step) in err[0]
        # the run still has its records and signed evidence; the step never started
        step_record = json.loads((out / "run.json").read_text())["steps"]["pulled"]
        assert step_record["status"] == "error" and text in step_record["reason"]
        assert step_record["started"] is None and step_record["docker"] == {}
        assert (out / "attestations" / "pulled.link.dsse.json").is_file()


def test_a_malformed_digest_or_pull_policy_is_refused_at_load(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for step, field in ((_step(tmp_path, "app@sha256:abc"), "image"),
                        (_step(tmp_path, "app:v1", pull="sometimes"), "pull")):
        capsys.readouterr()
        assert main(["lint", str(step)]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert f"{step}" in err and f"{field}:" in err


def test_without_mmdebstrap_the_first_run_builds_from_sbx_image_base_and_says_so(
        tmp_path: Path, registry: Any, repo: str, docker_client: docker.DockerClient,
        sbx_images: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A machine with a registry and no mmdebstrap: SBX_IMAGE_BASE names a mirrored base."""
    base_tag = images.base_runtime_image_tag()
    registry.push(base_tag, f"{repo}-base:v1")
    registry.forget(f"{repo}-base:v1")
    step_digest = registry.push(sbx_images[1], f"{repo}:v1")
    base = f"{registry.host}/{repo}-base:v1"
    # PATH without mmdebstrap: only the folders of what sbx may call
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for tool in ("git", "sh"):
        found = shutil.which(tool)
        if found:
            (shadow / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(shadow))
    monkeypatch.setenv(images.BASE_ENV, base)
    assert shutil.which("mmdebstrap") is None
    tag = images.runtime_image_tag(base)
    try:
        code, out = _run(tmp_path, _step(tmp_path, f"{registry.host}/{repo}@{step_digest}"),
                         quiet=False)
        printed = capsys.readouterr()
        assert code == EXIT_OK, printed.err
        said = " ".join((printed.out + printed.err).split())  # the console wraps lines
        assert f"FROM {base} (SBX_IMAGE_BASE is set, mmdebstrap is not installed" in said
        record = json.loads((out / "run.json").read_text())
        assert record["steps"]["pulled"]["status"] == "succeeded"
        gateway = docker_client.api.inspect_image(tag)
        assert gateway["Config"]["Labels"].get("sbx.managed") == "1"
    finally:
        try:
            docker_client.api.remove_image(tag, force=True)
        except docker.errors.NotFound:
            pass
        registry.forget(f"{repo}-base:v1")


def test_a_tag_moved_after_the_pull_does_not_change_what_runs(
        tmp_path: Path, registry: Any, repo: str, docker_client: docker.DockerClient,
        sbx_images: tuple[str, str]) -> None:
    """The step container is made from the id resolved at pull time: retagging the
    reference on the engine while the sandbox is being proven changes nothing."""
    from registry import variant_image

    from sbx.pipelines.report.live import LiveView
    from sbx.pipelines.run.runner import RunOptions, run_file

    registry.push(sbx_images[1], f"{repo}:v1")
    ref = f"{registry.host}/{repo}:v1"
    repository, _, tag = ref.rpartition(":")
    swapped = variant_image(docker_client, sbx_images[1], "swapped", secrets.token_hex(3))
    moves: list[str] = []

    def move_the_tag(event: dict[str, Any]) -> None:
        if event.get("kind") == "probe" and not moves:  # after the pull, before the step
            docker_client.api.tag(swapped, repository, tag, force=True)
            moves.append(event["time"])

    from rich.console import Console

    try:
        result = run_file(_step(tmp_path, ref), RunOptions(
            out_dir=tmp_path / "run", listeners=(move_the_tag,)),
            LiveView(Console(stderr=True), quiet=True))
        assert moves, "the tag was never moved"
        assert docker_client.api.inspect_image(ref)["Id"] == swapped
        assert result.exit_code == EXIT_OK
        assert (result.out_dir / "logs" / "pulled.log").read_text().strip() == "no-marker"
        env = _link_environment(result.out_dir)
        assert env["imageDigest"] == docker_client.api.inspect_image(sbx_images[1])["Id"]
    finally:
        docker_client.api.remove_image(swapped, force=True)
