"""`sbx plan` and `sbx learn` on checked HTTP requests (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sbx.pipelines.policy_tools.actions import (
    learn_actions,
    plan_requests,
    recorded_requests,
    render_learned_actions,
    render_request_plan,
)
from sbx.sandbox.policy import Policy, parse_rule, with_actions

STARTED = "2026-01-01T00:00:10Z"


def _http(path: str, verdict: str = "allowed", method: str = "GET", reason: str = "matched",
          time: str = "2026-01-01T00:00:11Z", host: str = "pypi.org") -> dict[str, Any]:
    return {"kind": "http", "step": "build", "time": time, "host": host, "dst_port": 443,
            "method": method, "path": path, "verdict": verdict, "reason": reason,
            "inspected": True}


def write_run(run_dir: Path, events: list[dict[str, Any]]) -> Path:
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"steps": {"build": {
        "step_started": STARTED, "policy": {"mode": "enforce", "allow": ["pypi.org:443"]}}}}))
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def test_plan_replays_requests_through_changed_action_rules(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [
        _http("/simple/requests/"), _http("/packages/a/b.whl"),
        _http("/upload", "denied", "POST", "no rule allows POST pypi.org:443/upload"),
        # Refused for what it was, not by a rule: no rule change can let it through.
        _http("/simple/", "denied", reason="Host 'evil.example' is not pypi.org:443"),
        # The probes' traffic, before the step started: not the step's own.
        _http("/probe", time="2026-01-01T00:00:01Z"),
    ])
    requests = recorded_requests(run)
    assert [r.path for r in requests] == ["/simple/requests/", "/packages/a/b.whl", "/upload"]
    narrow = with_actions(parse_rule("pypi.org:443"), ["GET"], ["/simple/**"])
    denied, allowed = plan_requests({"build": Policy(rules=(narrow,))}, requests)
    assert [c.request.path for c in denied] == ["/packages/a/b.whl"] and allowed == []
    wide = with_actions(parse_rule("pypi.org:443"), ["GET", "POST"], None)
    denied, allowed = plan_requests({"build": Policy(rules=(wide,))}, requests)
    assert denied == [] and [c.request.path for c in allowed] == ["/upload"]
    text = render_request_plan(denied, allowed)
    assert "+ http POST pypi.org:443/upload: denied -> allowed by pypi.org:443 GET,POST" in text


def test_learn_proposes_methods_and_prefixes_only_for_what_was_seen(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", [
        _http("/simple/requests/"), _http("/simple/idna/", method="HEAD"),
        _http("/packages/a/b.whl"), _http("/robots.txt"),
        _http("/upload", "denied", "POST", "no rule allows POST pypi.org:443/upload"),
        _http("/x", "audit", "PUT", "no rule allows PUT", host="files.example"),
    ])
    learned = learn_actions(recorded_requests(run))
    assert learned == {"build": [
        {"host": "files.example", "port": 443, "methods": ["PUT"], "paths": ["/x"]},
        {"host": "pypi.org", "port": 443, "methods": ["GET", "HEAD"],
         "paths": ["/packages/**", "/robots.txt", "/simple/**"]}]}
    text = render_learned_actions(learned)
    assert "/**\"" not in text.replace("/packages/**", "").replace("/simple/**", "")
    # What learn writes is a step file's allow list: the step validator accepts it.
    import yaml

    from sbx.pipelines.spec.step import StepSpec

    snippet = yaml.safe_load(text.split("\n", 1)[1])
    StepSpec.model_validate({"name": "b", "image": "x", "run": "true", **snippet})
