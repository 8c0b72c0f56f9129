"""`sbx report`: the HTML page of a run directory (no Docker; Chromium for the screenshot)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sbx.pipelines.report.html import (
    FAILED_FILL,
    SKIPPED_FILL,
    SUCCEEDED_FILL,
    render_html,
    write_html,
)

T0 = datetime(2026, 11, 22, 10, 15, 0, tzinfo=UTC)
RUN_ID = "20261122T101500Z-1a2b3c4d"
SCRIPT = "<script>alert(1)</script>"


def stamp(seconds: float) -> str:
    """A time as sbx writes it (RFC 3339, microseconds, Z)."""
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def step_record(name: str, index: int, *, status: str, needs: list[str], start: float,
                exit_code: int | None = 0, reason: str | None = None,
                inputs: list[dict[str, Any]] | None = None,
                outputs: list[dict[str, Any]] | None = None,
                flows: dict[str, int] | None = None, ran: bool = True) -> dict[str, Any]:
    """One `steps` entry of run.json, as docs/records.md lays it out."""
    subnet = f"10.222.{index}.0/28"
    return {
        "name": name, "needs": needs, "status": status, "exit_code": exit_code,
        "reason": reason,
        "started": stamp(start) if ran else None,
        "step_started": stamp(start + 5) if ran else None,
        "ended": stamp(start + 20) if ran else None,
        "image": {"ref": "sbx-step:bookworm", "id": "sha256:" + sha("image")},
        "policy": {"mode": "enforce", "digest": "sha256:" + sha(name),
                   "allow": ["pypi.mirror.test:8080", "files.mirror.test:443"]},
        "docker": ({"network": sha(name + "net"), "network_name": f"sbx-{RUN_ID}-{name}",
                    "subnet": subnet, "egress_network": f"sbx-{RUN_ID}-{name}-egress",
                    "internal": True,
                    "containers": {"gateway": sha("g" + name), "agent": sha("a" + name),
                                   "probe": sha("p" + name), "step": sha("s" + name)}}
                   if ran else {}),
        "probes": ([{"name": "egress-raw-ip", "kind": "tcp", "target": "198.18.0.1:80",
                     "blocked": True, "detail": "connection refused by the gateway"},
                    {"name": "host-bridge-udp", "kind": "udp", "target": "172.17.0.1:53",
                     "blocked": True, "detail": "sendto: EPERM"}] if ran else []),
        "peer_probes": ([{"name": "peer-tcp", "kind": "tcp",
                          "target": "10.222.9.3:80 (other)", "blocked": True,
                          "detail": "no route"}] if ran else []),
        "inputs": inputs or [],
        "outputs": outputs or [],
        "flows": flows if flows is not None else {"allowed": 0, "audit": 0, "denied": 0,
                                                  "failed": 0},
        "faults": [],
    }


def event(seconds: float, step: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"time": stamp(seconds), "step": step, "kind": kind, **fields}


def envelope(statement: dict[str, Any]) -> str:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({"payloadType": "application/vnd.in-toto+json",
                       "payload": base64.b64encode(payload).decode(),
                       "signatures": [{"keyid": "k1", "sig": "c2ln"}]})


def make_run(root: Path, *, names: tuple[str, str, str, str] = ("fetch", "build", "test",
                                                                 "lint"),
             evil: str = "evil.example.com") -> Path:
    """A finished 4-step pipeline run: fetch → build → (test, lint).

    test fails; lint needs build and test, so it is skipped (a step it needs failed).
    """
    fetch, build, test, lint = names
    wheel = "a" * 64
    deps = "b" * 64
    run = root / "run"
    (run / "logs").mkdir(parents=True)
    steps = {
        fetch: step_record(fetch, 1, status="succeeded", needs=[], start=0,
                           outputs=[{"path": "deps/requests.whl", "sha256": deps,
                                     "size": 64_123}],
                           flows={"allowed": 2, "audit": 0, "denied": 1, "failed": 0}),
        build: step_record(build, 2, status="succeeded", needs=[fetch], start=30,
                           inputs=[{"path": "src/app.py", "sha256": "c" * 64,
                                    "from": "workspace"},
                                   {"path": "deps/requests.whl", "sha256": deps,
                                    "from": fetch}],
                           outputs=[{"path": "dist/app.whl", "sha256": wheel,
                                     "size": 2048}],
                           flows={"allowed": 0, "audit": 0, "denied": 1, "failed": 0}),
        test: step_record(test, 3, status="failed", needs=[build], start=60, exit_code=1,
                          reason="exit code 1",
                          inputs=[{"path": "dist/app.whl", "sha256": wheel, "from": build}],
                          flows={"allowed": 1, "audit": 0, "denied": 1, "failed": 0}),
        lint: step_record(lint, 4, status="skipped", needs=[build, test], start=0,
                          exit_code=None, reason=f"skipped: {test} failed", ran=False,
                          inputs=[{"path": "dist/app.whl", "sha256": wheel, "from": build}]),
    }
    record = {
        "schema": "https://sbx.dev/run/v1", "kind": "pipeline", "run_id": RUN_ID,
        "sbx_version": "0.1.0",
        "spec": {"path": "examples/wheel/pipeline.yaml", "digest": "sha256:" + sha("spec")},
        "out_dir": str(run), "started": stamp(0), "ended": stamp(90), "interrupted": False,
        "status": "failed", "reason": f"step {test} failed",
        "engine": {"version": "20.10.24"},
        "order": [fetch, build, test, lint], "steps": steps,
        "evidence": {"signer": "ed25519 key 3f2a", "error": None,
                     "files": [f"attestations/{n}.link.dsse.json" for n in names]},
    }
    (run / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    events = [
        # Probing (before fetch's step_started at 5 s): the probes' own, not the step's.
        event(3, fetch, "tcp", dst_ip="198.18.0.1", dst_port=80, verdict="denied",
              reason="probe-denied-raw-ip", via="relay", violation=True),
        event(3.2, fetch, "probe", phase="done", probe="egress-raw-ip", verdict="blocked"),
        event(4, fetch, "agent", phase="ready", caps="CapEff=0"),
        event(6, fetch, "dns", name="pypi.mirror.test", qtype="A", verdict="allowed",
              reason="allowlisted name", rule="pypi.mirror.test:8080",
              rule_source="pipeline.yaml:14"),
        event(6.5, fetch, "tcp", name="pypi.mirror.test", dst_ip="198.18.0.10",
              dst_port=8080, verdict="allowed", reason="allowlisted", via="relay",
              connected_ip="198.18.0.10", rule="pypi.mirror.test:8080",
              rule_source="pipeline.yaml:14"),
        event(7, fetch, "tcp", name="pypi.mirror.test", dst_ip="198.18.0.10",
              dst_port=8080, phase="close", bytes_in=64123, bytes_out=512),
        event(8, fetch, "tcp", name=evil, dst_ip="198.18.0.66", dst_port=443,
              verdict="denied", reason="no rule allows this name", via="relay",
              violation=True),
        event(40, build, "udp", dst_ip="8.8.8.8", dst_port=53, verdict="denied",
              reason="udp is never forwarded", violation=True),
        event(70, test, "tcp", name="files.mirror.test", dst_ip="198.18.0.11",
              dst_port=443, verdict="allowed", reason="allowlisted", via="proxy",
              method="CONNECT", rule="files.mirror.test:443",
              rule_source="pipeline.yaml:31"),
        event(71, test, "icmp", dst_ip="198.18.0.66", verdict="denied",
              reason="icmp is never forwarded", violation=True),
    ]
    (run / "events.jsonl").write_text(
        "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in events))
    att = run / "attestations"
    att.mkdir()
    lines = []
    for name in names:
        statement = {"_type": "https://in-toto.io/Statement/v1",
                     "subject": [{"name": f"outputs/{name}/x", "digest": {"sha256": wheel}}],
                     "predicateType": "https://in-toto.io/attestation/link/v0.3",
                     "predicate": {"name": name, "command": ["sh", "-ec",
                                                             "echo '<tag>' && make"]}}
        doc = envelope(statement)
        # A file name is untrusted too: keep the markup, lose the slash.
        (att / f"{name.replace('/', '_')}.link.dsse.json").write_text(doc)
        lines.append(doc)
    (att / "provenance.dsse.json").write_text(envelope(
        {"_type": "https://in-toto.io/Statement/v1", "subject": [],
         "predicateType": "https://slsa.dev/provenance/v1",
         "predicate": {"buildDefinition": {"buildType": "https://sbx.dev/run/v1"}}}))
    (run / "attestations.intoto.jsonl").write_text("\n".join(lines) + "\n")
    return run


VERIFICATION: dict[str, Any] = {
    "run_dir": "/tmp/run", "trust": "ed25519 key 3f2a", "passed": False,
    "checks": [{"check": "signatures", "status": "pass", "reason": "5 documents verify"},
               {"check": "steps-succeeded", "status": "fail",
                "reason": "test exited 1; lint skipped"},
               {"check": "release-artifacts", "status": "skip", "reason": "no --artifact"}],
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)


# --------------------------------------------------------------------------- content


def test_page_is_self_contained(run_dir: Path) -> None:
    page = render_html(run_dir, VERIFICATION)
    lowered = page.lower()
    assert lowered.startswith("<!doctype html>")
    for attr in re.findall(r'(?:src|href|xlink:href|action)\s*=\s*["\']?([^"\'\s>]*)',
                           lowered):
        assert attr.startswith("#"), f"a reference that leaves the page: {attr!r}"
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", lowered)
    assert "<link" not in lowered
    assert "@import" not in lowered
    assert "url(http" not in lowered and "url(//" not in lowered
    assert "<script" not in lowered  # the graph needs no script at all
    assert "<svg" in lowered


def test_every_step_and_decision_appears(run_dir: Path) -> None:
    page = render_html(run_dir, VERIFICATION)
    for name in ("fetch", "build", "test", "lint"):
        assert f">{name} <span class=\"badge" in page  # each step's section
    assert page.count('class="zone"') == 4
    # Zones are coloured by status.
    assert page.count(f'fill="{SUCCEEDED_FILL}"') == 2
    assert page.count(f'fill="{FAILED_FILL}"') == 1
    assert page.count(f'fill="{SKIPPED_FILL}"') == 1
    # Denied flows with their reason, allowed flows with their rule and its source.
    for reason in ("no rule allows this name", "udp is never forwarded",
                   "icmp is never forwarded"):
        assert reason in page
    assert "evil.example.com (198.18.0.66:443)" in page
    assert "<code>pypi.mirror.test:8080</code>" in page
    assert "<code>pipeline.yaml:14</code>" in page
    assert "<code>files.mirror.test:443</code>" in page
    assert "<code>pipeline.yaml:31</code>" in page
    # The probe-phase denial is kept apart from the step's own decisions.
    fetch_section = page.split('id="step-0"')[1].split('id="step-1"')[0]
    own, probing = fetch_section.split("Decisions while probing", 1)
    assert "probe-denied-raw-ip" not in own and "probe-denied-raw-ip" in probing
    # Hand-offs label the needs edges; subnets and counts are in the zones.
    assert "deps/requests.whl" in page and "dist/app.whl" in page
    assert "net 10.222.1.0/28" in page
    assert "allowed 2 · audit 0 · denied 1" in page
    assert "✓ pypi.mirror.test:8080 (1)" in page  # the egress box lists what got out
    # Outputs with their digest, probes with their result.
    assert "a" * 64 in page and "b" * 64 in page
    assert "egress-raw-ip" in page and "blocked" in page
    assert "peer-tcp" in page
    # Header facts.
    for fact in (RUN_ID, "examples/wheel/pipeline.yaml", "0.1.0", stamp(0), stamp(90)):
        assert fact in page


def test_verification_verdict_appears(run_dir: Path) -> None:
    page = render_html(run_dir, VERIFICATION)
    assert "FAILED" in page
    for check in VERIFICATION["checks"]:
        assert f"<code>{check['check']}</code>" in page
        assert check["reason"] in page
    assert "not verified" not in page
    unverified = render_html(run_dir, None)
    assert "not verified" in unverified


def test_evidence_is_embedded_escaped(run_dir: Path) -> None:
    page = render_html(run_dir, None)
    for name in ("fetch", "build", "test", "lint"):
        assert f"attestations/{name}.link.dsse.json" in page
    assert "attestations/provenance.dsse.json" in page
    assert "attestations.intoto.jsonl" in page
    raw = (run_dir / "attestations" / "fetch.link.dsse.json").read_text()
    assert json.loads(raw)["payload"] in page  # the document itself, verbatim
    assert "&quot;payloadType&quot;" in page  # ... and escaped
    assert "https://slsa.dev/provenance/v1" in page  # the decoded payload
    assert "echo &#x27;&lt;tag&gt;&#x27; &amp;&amp; make" in page
    assert "<tag>" not in page


def test_untrusted_text_is_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path, names=("fetch", SCRIPT, "test", "lint"), evil=SCRIPT)
    with (run / "events.jsonl").open("a") as fh:
        fh.write(json.dumps(event(72, "test", "dns", name="x.test", verdict="denied",
                                  reason=SCRIPT, rule=SCRIPT, rule_source=SCRIPT)) + "\n")
    (run / "attestations" / "evil.dsse.json").write_text(f"</pre>{SCRIPT}<pre>")
    page = render_html(run, {"run_dir": SCRIPT, "trust": SCRIPT, "passed": True,
                             "checks": [{"check": SCRIPT, "status": SCRIPT,
                                         "reason": SCRIPT}]})
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "</pre><script" not in page
    # The name is shown as text in the zone and its section.
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 5


def test_partial_run_renders(tmp_path: Path) -> None:
    """Interrupted early: no events, no evidence, steps still pending."""
    run = tmp_path / "run"
    run.mkdir()
    record = {
        "schema": "https://sbx.dev/run/v1", "kind": "pipeline", "run_id": RUN_ID,
        "sbx_version": "0.1.0", "spec": {"path": "p.yaml"}, "started": stamp(0),
        "ended": None, "interrupted": True, "status": "running",
        "order": ["fetch", "build"],
        "steps": {"fetch": {"name": "fetch", "needs": [], "status": "probing"},
                  "build": {"name": "build", "needs": ["fetch"], "status": "pending",
                            "inputs": [{"path": "deps/", "from": "fetch"}]},
                  "weird": {"needs": "not-a-list", "status": 7, "flows": [1],
                            "probes": "x", "docker": None, "outputs": [None, 3]}},
    }
    (run / "run.json").write_text(json.dumps(record))
    page = render_html(run, None)
    assert "pending" in page and "probing" in page
    assert "not ended" in page
    assert "No evidence" in page
    assert "no events.jsonl" in page.lower() or "(no events.jsonl)" in page
    # A half-written events line and a run.json cut short are reported, not raised.
    (run / "events.jsonl").write_text('{"time": "x", "step": "fetch", "kind": "dns"}\n{"ti')
    assert "1 line(s) are not JSON" in render_html(run, None)
    (run / "run.json").write_text('{"run_id": ')
    assert "is not JSON" in render_html(run, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no run.json" in render_html(empty, None)


def test_single_step_record_renders(tmp_path: Path) -> None:
    """The single-step run.json (`step` plus top-level facts) is shown as one zone."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "run_id": RUN_ID, "step": {"name": "hello", "status": "succeeded", "exit_code": 0},
        "step_started": stamp(1), "docker": {"subnet": "10.222.7.0/28"},
        "flows": {"allowed": 1, "audit": 0, "denied": 0, "failed": 0}}))
    page = render_html(run, None)
    assert page.count('class="zone"') == 1 and "net 10.222.7.0/28" in page


def test_symlinked_evidence_is_not_embedded(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HOST-FILE")
    (run / "attestations" / "zz.dsse.json").symlink_to(secret)
    page = render_html(run, None)
    assert "TOP-SECRET-HOST-FILE" not in page
    assert "not a regular file" in page or "not read" in page


def test_write_html(run_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "report.html"
    write_html(run_dir, dest, VERIFICATION)
    assert dest.read_text(encoding="utf-8") == render_html(run_dir, VERIFICATION)


# --------------------------------------------------------------------------- screenshot


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) to rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            upleft = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else upleft
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line) if channels == 3 else bytes(
            b for j in range(0, stride, 4) for b in line[j:j + 3]))
        prev = line
    return width, height, rows


def _rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_file: Path, png: Path, profile: Path) -> None:
    """Headless Chromium's screenshot of a page (1400x1000)."""
    browser = _chromium()
    assert browser is not None
    # A fresh profile per call: parallel runs must not fight over one profile lock.
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--user-data-dir={profile}",
                    f"--screenshot={png}", "--window-size=1400,1000",
                    html_file.as_uri()],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(_chromium() is None,
                    reason="no chromium binary (apt-get install -y chromium)")
def test_screenshot_shows_the_graph(run_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_html(run_dir, page, VERIFICATION)
    png = tmp_path / "report.png"
    screenshot(page, png, tmp_path / "chromium-profile")
    width, height, rows = _png_pixels(png.read_bytes())
    assert (width, height) == (1400, 1000)
    wanted = {_rgb(c): c for c in (SUCCEEDED_FILL, FAILED_FILL, SKIPPED_FILL)}
    upper = int(height * 0.8)
    counts: Counter[str] = Counter()
    for y in range(upper):
        row = rows[y]
        for x in range(0, len(row), 3):
            colour = wanted.get(row[x:x + 3])
            if colour is not None:
                counts[colour] += 1
    # A zone is 228x118 px; text covers part of it. Two zones succeeded, one each
    # failed and skipped (the legend's swatches add about a hundred pixels each).
    assert counts[SUCCEEDED_FILL] > 2 * 15_000, counts
    assert counts[FAILED_FILL] > 15_000, counts
    assert counts[SKIPPED_FILL] > 15_000, counts


def test_checked_requests_are_listed_per_step_with_their_rule(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with (run / "events.jsonl").open("a") as fh:
        for verdict, method, path in (("allowed", "GET", "/simple/requests/"),
                                      ("denied", "POST", f"/upload{SCRIPT}")):
            fh.write(json.dumps(event(71, "build", "http", host="pypi.mirror.test",
                                      dst_port=443, method=method, path=path,
                                      verdict=verdict, status=200 if verdict == "allowed"
                                      else 403, inspected=True,
                                      rule="pypi.mirror.test:443 GET /simple/**"
                                      if verdict == "allowed" else None,
                                      rule_source="step.yaml:7", reason=SCRIPT)) + "\n")
    page = render_html(run, None)
    assert "HTTP requests (2)" in page
    assert "<code>/simple/requests/</code>" in page
    assert "pypi.mirror.test:443 GET /simple/**" in page
    assert "<script" not in page.lower()
