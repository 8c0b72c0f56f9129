"""Names a step makes up are data, never markup or terminal control, and never a way to
stop the recorder: console markup (`x[/x]y` once killed the event follower), ANSI
escapes, XML- and HTML-special characters, NUL, bidi overrides and raw bytes, sent as
DNS labels (UDP and TCP), TLS SNI, HTTP Host, CONNECT targets and proxy URLs. The
ordinary denied attempts made after them must be in events.jsonl, in the counts and
in the signed digest, in enforce and in audit mode, and the console shows no raw
control character from them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from sbx.attest.verify.evidence import event_digests
from sbx.pipelines.report.live import LiveView
from sbx.pipelines.run.records import is_decision, parse_time
from sbx.pipelines.run.runner import RunOptions, run_file
from tests.conftest import Internet
from tests.redteam.faults_support import failed_checks

STEP_SCRIPT = Path(__file__).parent / "steps" / "hostile.py"
LABELS = [b"x[/x]y", b"[bold]b[/bold]", b"\x1b[31mred\x1b]0;title\x07", b"<script>",
          b"\"q'&amp;", b"]]>", b"\x00nul", "\u202eevil".encode(), b"\xff\xfe\x80",
          b"a\\b", b"\r\nX-Injected: 1", b"{{x}}", b"%s%n", b"\x7f\x9b"]


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_hostile_names_are_recorded_shown_safely_and_stop_nothing(
        mode: str, tmp_path: Path, internet: Internet, signing_key: Any) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    after = f"after-{mode}.denied.test"
    (ws / "hostile.py").write_bytes(STEP_SCRIPT.read_bytes())
    (ws / "cfg.json").write_text(json.dumps({"labels": [x.hex() for x in LABELS],
                                             "other_ip": internet.other.ip, "after": after}))
    spec = {"name": "hostile", "image": "sbx-step:bookworm",
            "run": "mkdir -p out && python3 hostile.py cfg.json out/r.json",
            "inputs": ["hostile.py", "cfg.json"], "outputs": ["out/"],
            "egress": {"mode": mode, "allow": ["web.sbx.test:8080"]},
            "resources": {"timeout": 120}}
    (ws / "step.yaml").write_text(yaml.safe_dump(spec))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=False, width=200, color_system=None)
    result = run_file(ws / "step.yaml", RunOptions(out_dir=tmp_path / "run",
                                                   egress_network=internet.network),
                      LiveView(console, quiet=False))
    out = result.out_dir
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    step = result.record["steps"]["hostile"]
    assert step["exit_code"] == 0, step
    report = json.loads((out / "outputs" / "hostile" / "out" / "r.json").read_text())
    assert len(report["sent"]) == len(LABELS)
    began = parse_time(step["step_started"])
    own = [e for e in events if is_decision(e) and parse_time(e["time"]) >= began]

    # The hostile names themselves: one DNS decision per query at least (UDP and TCP).
    hostile_dns = [e for e in own if e["kind"] == "dns" and "hostile" in json.dumps(e)]
    assert len(hostile_dns) >= 2 * len(LABELS), len(hostile_dns)
    # ... and the ordinary attempts after them, each recorded.
    assert [e for e in own if e["kind"] == "dns" and e.get("name") == after]
    assert [e for e in own if e["kind"] == "tcp" and e.get("dst_ip") == internet.other.ip
            and e.get("dst_port") == 8080 and "other.sbx.test" in json.dumps(e)]
    assert [e for e in own if e["kind"] == "udp" and e.get("dst_ip") == internet.other.ip
            and e.get("dst_port") == 9999]
    assert not [e for e in events if e.get("phase") in ("crashed", "recorder-failed")]
    assert step["faults"] == []
    # The counts are those of the events, and the signed digest covers every line.
    counted = {v: sum(e["verdict"] == v for e in own) for v in step["flows"]}
    assert step["flows"] == counted
    assert step["recording"]["attempts"] >= sum(counted.values())
    assert step["recording"]["itemized"] == sum(counted.values())
    failed = failed_checks(out, signing_key)
    for check in ("signatures", "statements", "run-files", "attestations-bundle"):
        assert check not in failed, failed
    iso = next(out.glob("attestations/hostile.isolation.*"))
    signed = json.loads(__import__("base64").b64decode(json.loads(iso.read_text())["payload"]))
    assert signed["predicate"]["sandbox"]["events"]["digest"]["sha256"] == \
        event_digests(out)["hostile"][0]
    # What a person saw: the names, spelled out, and no control character from them.
    shown = screen.getvalue()
    # ESC spelled out: by `shown` (\x1b) where a name reaches the console as text, or in
    # RFC 1035 zone-file form (\027) where the gateway records a DNS name as dnslib spells it.
    assert "x[/x]y" in shown and ("\\x1b" in shown or "\\027" in shown)
    assert not any(ch in shown for ch in "\x1b\x07\x00\x7f\x9b\r\u202e")
