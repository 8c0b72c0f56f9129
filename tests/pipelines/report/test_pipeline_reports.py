"""One recorded audit-mode pipeline run, read the ways users read it: webhook alerts
as they happen, the JUnit and Code Quality reports, the HTML report, `sbx plan` and
`sbx learn`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from sbx.errors import EXIT_OK
from sbx.pipelines.cli import main
from tests.conftest import Internet

pytestmark = pytest.mark.docker
IMAGE = "sbx-step:bookworm"


@dataclass
class Recorded:
    """The run, what the webhook received, and the files sbx wrote."""

    code: int
    out: Path
    record: dict[str, Any]
    posts: list[dict[str, Any]]
    junit: Path
    codequality: Path
    pipeline: Path


class _Hook(BaseHTTPRequestHandler):
    posts: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, internet: Internet,
             signing_key: Any) -> Iterator[Recorded]:
    tmp = tmp_path_factory.mktemp("reports")
    posts: ClassVar[list[dict[str, Any]]] = []
    handler = type("Hook", (_Hook,), {"posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    steps = {
        "fetch": {"image": IMAGE, "outputs": ["deps/"],
                  "run": "mkdir -p deps && curl -fsS http://web.sbx.test:8080/dep "
                         "> deps/dep.txt && (curl -sS --max-time 3 "
                         "http://other.sbx.test:8080/exfil || true)",
                  "egress": {"mode": "audit", "allow": ["web.sbx.test:8080"]}},
        "build": {"image": IMAGE, "inputs": [{"from": "fetch", "path": "deps/"}],
                  "outputs": ["dist/"], "run": "mkdir -p dist && cp deps/dep.txt dist/"},
    }
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "audited", "steps": steps}))
    out, junit, cq = tmp / "run", tmp / "junit.xml", tmp / "cq.json"
    try:
        code = main(["run", str(pipeline), "--out", str(out), "--quiet",
                     "--egress-network", internet.network,
                     "--alert-webhook", f"http://127.0.0.1:{server.server_port}/hook",
                     "--junit", str(junit), "--codequality", str(cq)])
    finally:
        server.shutdown()
    yield Recorded(code, out, json.loads((out / "run.json").read_text()), posts, junit, cq,
                   pipeline)


def test_audit_mode_lets_the_run_pass_and_records_the_violation(recorded: Recorded) -> None:
    assert recorded.code == EXIT_OK, recorded.record["reason"]
    assert recorded.record["steps"]["fetch"]["flows"]["audit"] >= 1


def test_the_webhook_receives_each_violation_and_nothing_else(recorded: Recorded) -> None:
    assert recorded.posts, "no alert arrived"
    for post in recorded.posts:
        assert post["step"] == "fetch" and post["verdict"] == "audit"
        assert "other.sbx.test" in post["text"] and recorded.record["run_id"] in post["text"]
    assert recorded.record["alerts"]["sent"] == len(recorded.posts)
    assert recorded.record["alerts"]["failed"] == recorded.record["alerts"]["dropped"] == 0


def test_the_junit_report_parses_with_steps_and_violations(recorded: Recorded) -> None:
    from junitparser import JUnitXml

    xml = JUnitXml.fromfile(str(recorded.junit))
    cases = {(c.classname, c.name): c for suite in xml for c in suite}
    assert ("sbx.steps", "fetch") in cases and ("sbx.steps", "build") in cases
    assert cases[("sbx.steps", "build")].is_passed
    violations = [c for (cls, _), c in cases.items() if cls == "sbx.egress.fetch"]
    assert violations and all("other.sbx.test" in c.name for c in violations)
    issues = json.loads(recorded.codequality.read_text())
    assert issues and all(i["location"]["path"] == str(recorded.pipeline) for i in issues)


def test_the_html_report_renders_the_run(recorded: Recorded, tmp_path: Path,
                                         signing_key: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "report.html"
    policy = tmp_path / "release.yaml"
    policy.write_text("version: 1\nisolation: {allow_audit_mode: true}\n")
    assert main(["report", str(recorded.out), "--html", str(html), "--policy", str(policy),
                 "--key", str(signing_key.public)]) == EXIT_OK
    assert "verification passed" in capsys.readouterr().out
    page = html.read_text()
    assert "fetch" in page and "build" in page and "other.sbx.test" in page
    assert "<script" not in page and "http://" not in page.split("<body", 1)[0]


def test_plan_shows_what_a_tightened_policy_would_deny(recorded: Recorded, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    spec = yaml.safe_load(recorded.pipeline.read_text())
    spec["steps"]["fetch"]["egress"] = {"mode": "enforce", "allow": []}
    changed = tmp_path / "pipeline.yaml"
    changed.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(changed), "--against", str(recorded.out)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "web.sbx.test" in out and "newly denied" in out.lower()
    spec["steps"]["fetch"]["egress"] = {"mode": "enforce",
                                        "allow": ["web.sbx.test:8080", "other.sbx.test:8080"]}
    changed.write_text(yaml.safe_dump(spec))
    assert main(["plan", str(changed), "--against", str(recorded.out)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "other.sbx.test" in out and "newly allowed" in out.lower()


def test_learn_proposes_the_smallest_allowlist(recorded: Recorded,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learn", str(recorded.out)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "web.sbx.test:8080" in out and "other.sbx.test:8080" in out
    assert "*" not in out.replace("# any port", "")
