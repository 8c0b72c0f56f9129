"""Fail closed, shown on broken copies of the runtime: break the sandbox, the step does not run.

Each case builds a runtime image from a patched copy of the runtime source (the same
thin layer `make images` builds, on the same base), runs a no-op step on it against
the suite's internet, and checks that the probes caught the break: the step is
`blocked`, its command never started, the probes that tested the broken part are
recorded and signed as reached, and `sbx verify` refuses the evidence.

The images are tagged ``sbx-test-broken:<case>-<hash of the patched files>`` and
labelled ``sbx.test=broken-runtime``: kept between runs (an unchanged runtime reuses
them), and tags of older runtime code are removed when the fixture first runs.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from sbx.attest.signing.local import KeyPair
from sbx.sandbox import images
from sbx.sandbox.archive import pack_files
from tests.conftest import Internet, StepRun
from tests.redteam.faults_support import failed_checks

pytestmark = pytest.mark.docker

BROKEN_REPO = "sbx-test-broken"
BROKEN_LABEL = "sbx.test"


def _sub(pattern: str, replacement: str, count: int = 1) -> Callable[[str], str]:
    """A patch: replace `pattern` (a regex) exactly `count` times, or fail loudly if the
    code it breaks has moved (a patch that silently changes nothing would prove nothing)."""
    def patch(text: str) -> str:
        new, found = re.subn(pattern, replacement, text)
        assert found == count, f"patch {pattern!r} matched {found} times, wanted {count}"
        return new
    return patch


@dataclass(frozen=True)
class Break:
    """One way to break the runtime, and the probes that must catch it."""

    file: str  # under sbx/sandbox/runtime/
    patch: Callable[[str], str]
    caught_by: frozenset[str]  # probe names that must end up reached


BREAKS = {
    # The gateway no longer refuses internal addresses: only the policy's lack of a rule
    # stops the relayed address probes, which is not the refusal they test.
    "gateway-allows-internal": Break(
        "gate.py",
        _sub(r"(    def _blocked_address\(self, ip: str, port: int \| None\) -> bool:\n)",
             r"\1        return False\n"),
        frozenset({"egress-raw-ip", "proxy-internal"})),
    # The agent no longer sends DNS to the gateway: Docker's embedded DNS answers.
    "agent-no-dns-redirect": Break(
        "firewall.py", _sub(r'\n +f"-A SBX_OUT -p (udp|tcp) --dport 53 -j REDIRECT[^\n]*",', "",
                         count=2),
        frozenset({"dns-canary-udp", "dns-canary-tcp"})),
    # The agent no longer redirects TCP: the relay and so the gateway never see it.
    "agent-no-tcp-redirect": Break(
        "firewall.py", _sub(r'\n +f"-A SBX_OUT -p tcp -j REDIRECT --to-ports \{relay\}",', ""),
        frozenset({"egress-raw-ip"})),
    # The agent's filter records each drop but lets the packet out all the same: the
    # firewall's record is there, so only the answer that comes back shows it (the probe
    # counts an answer as reached whatever the record says).
    "agent-logs-then-accepts": Break(
        "firewall.py", _sub(r'(f"-A OUTPUT \{log_rule\}",)', r'\1 "-A OUTPUT -j ACCEPT",'),
        frozenset({"host-bridge-udp", "host-bridge-icmp"})),
    # The agent's filter lets everything out: the host bridge answers UDP and ICMP.
    "agent-accepts-all-output": Break(
        "firewall.py", _sub(r'f"-A OUTPUT \{log_rule\}",', '"-A OUTPUT -j ACCEPT",'),
        frozenset({"host-bridge-udp", "host-bridge-icmp"})),
}


def _patched_tree(root: Path, brk: Break) -> Path:
    """A copy of the runtime files with one of them patched; returns the package dir."""
    for rel, path in images.runtime_files():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    target = root / "sbx" / "sandbox" / "runtime" / brk.file
    target.write_text(brk.patch(target.read_text()))
    return root / "sbx"


def _build(client: docker.DockerClient, case: str, package: Path,
           monkeypatch: pytest.MonkeyPatch) -> str:
    """The broken runtime image for `package`: built once per content, then reused."""
    with monkeypatch.context() as mp:
        mp.setattr(images, "_PACKAGE_ROOT", package)
        files = [(rel, path.read_bytes()) for rel, path in images.runtime_files()]
    base = images.ensure_runtime_image(client) and images.base_runtime_image_tag()
    dockerfile = images._thin_runtime_dockerfile(base)
    digest = hashlib.sha256(dockerfile + b"".join(rel.encode() + b"\0" + data
                                                  for rel, data in files)).hexdigest()[:12]
    tag = f"{BROKEN_REPO}:{case}-{digest}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    context = pack_files({"Dockerfile": dockerfile, **dict(files)})
    client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, pull=False,
                        rm=True, forcerm=True, network_mode="none",
                        labels={images.MANAGED_LABEL: "1", BROKEN_LABEL: "broken-runtime"})
    return tag


@pytest.fixture(scope="module")
def stale_broken_images_removed(docker_client: docker.DockerClient) -> Iterator[set[str]]:
    """Collects the tags this run uses; afterwards removes the others (older code)."""
    used: set[str] = set()
    yield used
    for image in docker_client.images.list(name=BROKEN_REPO,
                                           filters={"label": f"{BROKEN_LABEL}=broken-runtime"}):
        for tag in image.tags:
            if tag not in used:
                try:
                    docker_client.images.remove(tag)
                except docker.errors.APIError:
                    pass  # still used by a container of a concurrent run: next time


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_a_broken_sandbox_blocks_the_step(
        case: str, tmp_path: Path, run_step: Any, internet: Internet,
        docker_client: docker.DockerClient, signing_key: KeyPair,
        monkeypatch: pytest.MonkeyPatch, stale_broken_images_removed: set[str]) -> None:
    brk = BREAKS[case]
    tag = _build(docker_client, case, _patched_tree(tmp_path / "src", brk), monkeypatch)
    stale_broken_images_removed.add(tag)
    # The run uses the broken image exactly as it would its own runtime image.
    monkeypatch.setattr(images, "ensure_runtime_image", lambda *_a, **_k: tag)
    run: StepRun = run_step({
        "name": "noop", "image": images.STEP_IMAGE, "run": "mkdir -p out && echo ran > out/ran",
        "outputs": ["out/"], "egress": {"mode": "enforce", "allow": [f"{internet.web.name}:80"]},
        "resources": {"timeout": 60}})
    step = run.step
    assert step["status"] == "blocked", step
    assert step["step_started"] is None, "the command must never start"
    assert "fail closed: probes got through" in step["reason"]
    assert not (run.out / "outputs" / "noop" / "out" / "ran").exists()
    reached = {p["name"] for p in step["probes"] + step["peer_probes"] if not p["blocked"]}
    assert brk.caught_by <= reached, (reached, step["probes"])
    for p in step["probes"]:
        assert p["reached_if"], p  # each result says what it tested
    assert any(e.get("kind") == "probe" and e.get("verdict") == "reached" for e in run.events)
    # Signed: the step's link Statement carries the verdict and the probes that got through
    # (a step that never ran has no sandbox facts to sign), and verification refuses it.
    failed = failed_checks(run.out, signing_key)
    assert "probes got through" in failed["steps-succeeded"], failed
    for name in brk.caught_by:
        assert name in failed["steps-succeeded"]
