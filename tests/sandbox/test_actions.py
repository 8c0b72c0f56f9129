"""Every request checked, for real: clients in a step, through the gateway, to a test host.

One step runs real clients (curl, Python urllib, pip download, git clone) and hand-made
attacks through TLS inspection and the request checker against a web host the suite
starts: one address with three names (pkg.sbx.test, plain.sbx.test, evil.sbx.test),
HTTPS with a CA this test makes and gives as `upstream_ca`. The host logs every request
it gets, so "denied" means it never arrived there.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
from cryptography.hazmat.primitives import serialization

from sbx.attest.signing.local import KeyPair, load_public_key
from sbx.attest.verify.model import Check, Status
from sbx.attest.verify.policy import DEFAULT_POLICY, IsolationPolicy, ReleasePolicy
from sbx.attest.verify.trust import KeyTrust
from sbx.attest.verify.verifier import verify_run
from sbx.sandbox.archive import pack_files
from tests.conftest import TEST_LABEL, Internet, _ca, _cert, run_spec

pytestmark = pytest.mark.docker

NAMES = ("pkg.sbx.test", "plain.sbx.test", "evil.sbx.test")
SERVER = Path(__file__).parent / "servers" / "actions_host.py"
CLIENT = Path(__file__).parent / "steps" / "actions_client.py"


def _wheel() -> tuple[str, bytes]:
    name = "sbxdemo-1.0-py3-none-any.whl"
    files = {"sbxdemo/__init__.py": b"VALUE = 1\n",
             "sbxdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sbxdemo\n"
                                               b"Version: 1.0\n",
             "sbxdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                            b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},,\n" for p in files) + "sbxdemo-1.0.dist-info/RECORD,,\n"
    files["sbxdemo-1.0.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name, buf.getvalue()


def _www(tmp: Path) -> dict[str, bytes]:
    """The host's files: a simple index with one wheel, and a git repository (dumb HTTP)."""
    wheel, data = _wheel()
    digest = hashlib.sha256(data).hexdigest()
    files = {
        "www/simple/index.html": b'<a href="sbxdemo/">sbxdemo</a>\n',
        "www/first": b"first\n",
        "www/simple/sbxdemo/index.html":
            f'<a href="../../packages/{wheel}#sha256={digest}">{wheel}</a>\n'.encode(),
        f"www/packages/{wheel}": data,
    }
    work, bare = tmp / "work", tmp / "repo.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    (work / "README").write_text("hello through inspection\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "one"], check=True)
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["git", "--git-dir", str(bare), "update-server-info"], check=True)
    for path in sorted(bare.rglob("*")):
        if path.is_file():
            files[f"www/repo.git/{path.relative_to(bare).as_posix()}"] = path.read_bytes()
    return files


@dataclass
class ActionsRun:
    results: dict[str, Any]
    events: list[dict[str, Any]]
    host_log: list[dict[str, Any]]
    out: Path
    step_dir: Path


@pytest.fixture(scope="module")
def actions_run(internet: Internet, docker_client: docker.DockerClient,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActionsRun]:
    api = docker_client.api
    tmp = tmp_path_factory.mktemp("actions")
    ca_key, ca = _ca()
    # Every name on one certificate: fronting would work against this host.
    cert, key = _cert(NAMES[0], ca_key, ca, NAMES)
    tag = secrets.token_hex(4)
    cid = api.create_container(
        "sbx-step:bookworm", command=["python3", "/srv/actions_host.py"],
        name=f"sbx-test-{tag}-actions", labels={TEST_LABEL: tag},
        networking_config=api.create_networking_config(
            {internet.network: api.create_endpoint_config(aliases=list(NAMES))}),
        host_config=api.create_host_config(network_mode=internet.network))["Id"]
    try:
        api.put_archive(cid, "/srv", pack_files({"actions_host.py": SERVER.read_bytes(),
                                                 "cert.pem": cert, "key.pem": key,
                                                 **_www(tmp)}))
        api.start(cid)
        for _ in range(200):
            if b'"ready"' in api.logs(cid):
                break
            time.sleep(0.05)
        spec = {
            "name": "actions", "image": "sbx-step:bookworm",
            "run": [["python3", "actions_client.py"]],
            "inputs": ["actions_client.py"], "outputs": ["results.json"],
            "egress": {"upstream_ca": "ca.pem", "allow": [
                {"host": "pkg.sbx.test", "port": 8443, "methods": ["GET", "HEAD"],
                 "paths": ["/simple/**", "/packages/**", "/repo.git/**"]},
                {"host": "pkg.sbx.test", "port": 8080, "methods": ["GET"],
                 "paths": ["/simple/**"]},
                "plain.sbx.test:8080",
            ]},
        }
        run = run_spec(tmp, spec, {"actions_client.py": CLIENT.read_bytes(),
                                   "ca.pem": ca.public_bytes(serialization.Encoding.PEM)},
                       internet.network)
        results = json.loads(run.output("results.json"))
        host_log = [json.loads(line) for line in api.logs(cid, stderr=False).decode().splitlines()]
        yield ActionsRun(results, run.events, [h for h in host_log if h.get("kind") == "http"],
                         run.out, tmp / "ws")
    finally:
        api.remove_container(cid, force=True)


def _line_of_first_rule(run: ActionsRun) -> int:
    lines = (run.step_dir / "step.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == "- host: pkg.sbx.test")


def _http(run: ActionsRun) -> list[dict[str, Any]]:
    return [e for e in run.events if e.get("kind") == "http"]


def test_real_clients_work_through_inspection_within_their_rules(actions_run: ActionsRun) -> None:
    r = actions_run.results
    assert r["curl_get"]["out"] == "200", r["curl_get"]
    assert r["urllib_get"] == {"status": 200}
    assert r["pip_download"]["exit"] == 0, r["pip_download"]
    assert r["pip_files"] == ["sbxdemo-1.0-py3-none-any.whl"]
    assert r["git_clone"]["exit"] == 0, r["git_clone"]
    assert r["git_readme"] == "hello through inspection\n"
    inspected = [e for e in _http(actions_run) if e.get("inspected")]
    allowed = [e for e in inspected if e["verdict"] == "allowed"]
    assert {e["path"] for e in allowed} >= {"/simple/sbxdemo/", "/repo.git/info/refs",
                                            "/packages/sbxdemo-1.0-py3-none-any.whl"}
    for e in allowed:
        assert e["rule"].startswith("pkg.sbx.test:8443 GET,HEAD")
        assert e["rule_source"].endswith(f"step.yaml:{_line_of_first_rule(actions_run)}")
        assert e["status"] in (200, 404) and "?" not in e["path"]


def test_post_and_paths_outside_the_rule_are_denied_recorded_and_never_arrive(
        actions_run: ActionsRun) -> None:
    r = actions_run.results
    assert r["curl_post"]["out"] == "403"
    assert (r["proxy_get"]["out"], r["proxy_post"]["out"]) == ("200", "403")
    assert any(e["via"] == "proxy" and e["inspected"] and e["method"] == "POST"
               for e in _http(actions_run) if e["verdict"] == "denied" and "method" in e)
    assert r["urllib_outside"] == {"status": 403}
    assert r["git_push"]["exit"] != 0
    assert r["plain_action_post"]["statuses"] == [403]
    for name in ("dotdot", "pct_dotdot", "pct_slash", "double_slash", "params"):
        assert r[f"trick_{name}"]["statuses"] == [403], (name, r[f"trick_{name}"])
    denied = [e for e in _http(actions_run) if e["verdict"] == "denied"]
    assert any(e["method"] == "POST" and e["path"] == "/simple/sbxdemo/" and e["inspected"]
               for e in denied)
    assert any(e.get("path") == "/upload" and e["inspected"] for e in denied)
    assert all(e.get("violation") for e in denied)
    seen = actions_run.host_log
    assert [h for h in seen if h["method"] != "GET" and h["method"] != "HEAD"] == []
    assert not [h for h in seen if h["path"].endswith("/upload") or "%" in h["path"]
                or ";" in h["path"] or h["path"].startswith("//")]


def test_the_three_bypasses_are_blocked_and_recorded(actions_run: ActionsRun) -> None:
    r = actions_run.results
    for name in ("keepalive", "pipelined", "proxy_absolute"):
        assert r[name].get("statuses") == [200, 403], (name, r[name])
    assert [h["path"] for h in actions_run.host_log if h["host"].startswith("plain.")
            ].count("/first") == 3
    assert not [h for h in actions_run.host_log if "evil" in (h["host"] or "")]
    denied = [e for e in _http(actions_run) if e["verdict"] == "denied"
              and e.get("host") == "evil.sbx.test"]
    assert len(denied) >= 4  # three bypasses and the fronting attempt
    assert {e["via"] for e in denied} >= {"relay", "proxy"}


def test_fronting_on_an_inspected_host_is_blocked(actions_run: ActionsRun) -> None:
    assert actions_run.results["fronting"]["statuses"] == [403]
    assert any(e.get("inspected") and e.get("host") == "evil.sbx.test"
               and e["verdict"] == "denied" for e in _http(actions_run))


def test_smuggling_and_h2c_are_refused_and_recorded(actions_run: ActionsRun) -> None:
    r = actions_run.results
    for name in ("cl_te", "dup_cl"):
        assert r[name].get("statuses") == [400], (name, r[name])
    for name in ("h2c_upgrade", "h2_over_tls"):
        assert r[name].get("statuses") == [403], (name, r[name])
    # Prior knowledge names no host in its first bytes: the connection's decision (issue 12)
    # refuses it before any request is read, so the step sees a reset, not a 403.
    assert "ConnectionResetError" in r["h2c_prior"].get("error", ""), r["h2c_prior"]
    reasons = " ".join(e["reason"] for e in actions_run.events
                       if e.get("kind") in ("http", "tcp") and e.get("verdict") == "denied")
    for words in ("both Content-Length and Transfer-Encoding", "duplicate Content-Length",
                  "HTTP/2 prior knowledge", "Upgrade to 'h2c'"):
        assert words in reasons
    assert not [h for h in actions_run.host_log if h["path"] in ("/smuggle-clte", "/smuggled",
                                                                   "/smuggle-dupcl", "/h2c")]


def test_a_client_with_its_own_store_fails_closed(actions_run: ActionsRun) -> None:
    assert actions_run.results["curl_own_store"]["exit"] != 0
    assert any("refused the run CA" in e["reason"] for e in _http(actions_run))


def test_the_step_gets_the_ca_certificate_and_never_its_key(actions_run: ActionsRun) -> None:
    ca = actions_run.results["ca"]
    assert ca["run_ca_in_bundle"] and not ca["private_key_in_bundle"]
    assert set(ca["env"].values()) == {ca["bundle"]}
    assert ca["key_files"] == []
    ready = [e for e in actions_run.events if e.get("kind") == "gateway"
             and e.get("phase") == "ready"]
    assert ready and ready[0]["ca_fingerprint"].startswith("sha256:")
    for path in actions_run.out.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_the_evidence_names_each_request_rule_and_the_run_ca(actions_run: ActionsRun,
                                                             signing_key: KeyPair) -> None:
    record = json.loads((actions_run.out / "run.json").read_text())
    step = record["steps"]["actions"]
    assert step["status"] == "failed"
    requests = step["requests"]
    ready = next(e for e in actions_run.events if e.get("kind") == "gateway"
                 and e.get("phase") == "ready")
    assert requests["caFingerprint"] == ready["ca_fingerprint"]
    rule = "pkg.sbx.test:8443 GET,HEAD /simple/** /packages/** /repo.git/**"
    assert requests["requests"][rule]["allowed"] >= 5
    assert requests["deniedCount"] == len([e for e in _http(actions_run)
                                           if e["verdict"] == "denied"])
    assert "pkg.sbx.test" in requests["inspectedHosts"]
    trust = KeyTrust([load_public_key(signing_key.public)])
    report = verify_run(actions_run.out, trust, DEFAULT_POLICY)
    status = {r.check: r for r in report.results}
    assert status[Check.SIGNATURES].status is Status.PASS
    # The denied requests are signed evidence: the release gate refuses the run for them.
    assert status[Check.ACTIONS].status is Status.FAIL
    assert "HTTP request(s) denied" in status[Check.ACTIONS].reason
    lax = ReleasePolicy(version=1, isolation=IsolationPolicy(
        max_denied_flows=1000, max_denied_requests=1000),
        inspected_hosts={"actions": ("pkg.sbx.test",)})
    assert {r.check: r.status for r in verify_run(actions_run.out, trust, lax).results}[
        Check.ACTIONS] is Status.PASS
