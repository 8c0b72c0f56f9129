"""The realistic example: a pipeline that fetches from its own mirror, builds wheels,
tests and lints them side by side and packages a release that passes the release gate."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sbx.attest.signing.local import KeyPair
from sbx.errors import EXIT_OK
from sbx.pipelines.cli import main

pytestmark = pytest.mark.docker
WHEEL = Path(__file__).parents[2] / "examples" / "wheel"


def _mirror_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheel_mirror", WHEEL / "mirror.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_wheel_example_builds_tests_packages_and_passes_the_gate(
        tmp_path: Path, signing_key: KeyPair, sbx_images: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _mirror_module().main(["--out", str(out), "--quiet"]) == EXIT_OK
    record = json.loads((out / "run.json").read_text())
    steps = record["steps"]
    assert [steps[n]["status"] for n in record["order"]] == ["succeeded"] * 5
    assert "Ran 1 test" in (out / "logs" / "test.log").read_text()
    wheel = out / "outputs/package/release/greet-1.0-py3-none-any.whl"
    assert wheel.is_file()
    sums = (out / "outputs/package/release/SHA256SUMS").read_text()
    assert "greet-1.0-py3-none-any.whl" in sums and "shout-1.0-py3-none-any.whl" in sums

    capsys.readouterr()
    code = main(["verify", str(out), "--key", str(signing_key.public), "--json",
                 "--policy", str(WHEEL / "release-policy.yaml"), "--artifact", str(wheel)])
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK, [c for c in report["checks"] if c["status"] == "fail"]
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["isolation.destinations"]["status"] == "pass"
    assert checks["release-artifacts"]["status"] == "pass"


def test_the_mirror_serves_reproducible_sources() -> None:
    import gzip
    import io
    import tarfile

    mirror = _mirror_module()
    data = mirror.sdist("greet")
    assert data[4:8] == b"\0\0\0\0", "the gzip header carries a time stamp"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        members = tar.getmembers()
    assert all(m.mtime == 0 and m.uid == 0 for m in members)
    assert "greet-1.0/greet/__init__.py" in [m.name for m in members]
    assert data == mirror.sdist("greet")


def _demo_module() -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / "demo" / "demo.py"
    spec = importlib.util.spec_from_file_location("sbx_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_shows_an_allowed_fetch_a_denied_attempt_the_gate_and_the_paths(
        tmp_path: Path, sbx_images: tuple[str, str], docker_client: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    demo = _demo_module()
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out)]) == EXIT_OK
    printed = capsys.readouterr()
    text = printed.out + printed.err
    run = out / "run"
    # the three paths a newcomer opens, and the verdict
    assert f"records   {run / 'run.json'}" in text
    assert f"report    {out / 'report.html'}" in text
    assert f"evidence  {run / 'attestations'}/" in text
    verdict = [line for line in text.splitlines() if line.startswith("verdict:")]
    assert verdict and "denied" in verdict[0] and "refuses" in verdict[0]
    # the violation was printed while the run went, before the verification table
    assert text.index("denied  demo dns   collector.sbx.example") < text.index("sbx verify")
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    flows = {(e.get("kind"), e.get("name"), e.get("verdict")) for e in events}
    assert ("tcp", "files.sbx.example", "allowed") in flows
    assert ("dns", "collector.sbx.example", "denied") in flows
    assert (run / "outputs/demo/dist/tool.txt").read_bytes() == demo.TOOL
    assert "<html" in (out / "report.html").read_text().lower()
    assert any((run / "attestations").glob("*.dsse.json"))
    # the demo's internet is gone
    left = docker_client.api.containers(all=True, filters={"label": ["sbx.step=demo"]})
    left += docker_client.api.networks(filters={"label": ["sbx.step=demo"]})
    assert left == []
