"""The realistic example: a pipeline that fetches from its own mirror, builds wheels,
tests and lints them side by side and packages a release that passes the release gate."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

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
