"""The report's text: header, verification, per-step tables of decisions, probes and
events, and the embedded evidence. Every value is escaped on its way into markup."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any, Final

from sbx.attest.verify.evidence import ATTESTATIONS_DIR, BUNDLE_FILE, EVENTS_FILE
from sbx.pipelines.report.html.model import (
    _d,
    _e,
    _l,
    _read_regular,
    _Run,
    _s,
    _Step,
    _time,
)
from sbx.pipelines.report.html.style import (
    FAILED_FILL,
    PENDING_FILL,
    RUNNING_FILL,
    SKIPPED_FILL,
    SUCCEEDED_FILL,
    fill_for,
)

# One embedded evidence file is cut after this many bytes: a crafted run directory
# must not turn a report into a gigabyte page. sbx's own documents are a few KiB.
MAX_EMBED: Final = 2 << 20

# --------------------------------------------------------------------------- formatting


def _destination(event: dict[str, Any]) -> str:
    """`name (ip:port)`, `ip:port` or `name:port`, as far as the event knows."""
    name = _s(event.get("name"))
    ip = _s(event.get("dst_ip"))
    port = _s(event.get("dst_port"))
    address = (f"[{ip}]" if ":" in ip else ip) + (f":{port}" if ip and port else "")
    if name and address:
        return f"{name} ({address})"
    if name:
        return f"{name}:{port}" if port else name
    return address or (f"port {port}" if port else "?")


def _short_time(value: Any) -> str:
    """The time of day of an RFC 3339 stamp (the date is in the header)."""
    text = _s(value)
    if "T" in text:
        clock = text.split("T", 1)[1].rstrip("Z")
        return clock[:12]
    return text


def _duration(start: Any, end: Any) -> str:
    a, b = _time(start), _time(end)
    if a is None or b is None:
        return ""
    seconds = (b - a).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return _s(value)
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(value)


def _clip(text: str, limit: int) -> str:
    """Cut before escaping, so an entity is never cut in half."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _badge(status: str) -> str:
    return f'<span class="badge st-{_e(_status_class(status))}">{_e(status)}</span>'


def _status_class(status: str) -> str:
    fill = fill_for(status)
    return {SUCCEEDED_FILL: "ok", FAILED_FILL: "bad", SKIPPED_FILL: "skip",
            RUNNING_FILL: "run", PENDING_FILL: "pend"}.get(fill, "unknown")


def _table(headers: list[str], rows: list[list[str]], empty: str,
           row_classes: list[str] | None = None) -> str:
    """A table; cells are markup that the caller has already escaped."""
    if not rows:
        return f'<p class="none">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return (f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table>")


def _facts(pairs: list[tuple[str, str]]) -> str:
    """A definition list; values are markup that the caller has already escaped."""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs if v != "")
    return f'<dl class="facts">{items}</dl>'


def _code(value: Any) -> str:
    return f"<code>{_e(value)}</code>" if _s(value) else ""


# --------------------------------------------------------------------------- sections


def _header(run: _Run, run_dir: Path, verification: dict[str, Any] | None) -> str:
    r = run.record
    spec = _d(r.get("spec"))
    status = _s(r.get("status")) or "unknown"
    evidence = _d(r.get("evidence"))
    pairs = [
        ("run id", _code(r.get("run_id"))),
        ("kind", _e(r.get("kind"))),
        ("status", _badge(status) + (f" {_e(r.get('reason'))}" if r.get("reason") else "")),
        ("verification", _verdict_badge(verification)),
        ("spec", _code(spec.get("path")) + (f" {_code(spec.get('digest'))}"
                                            if spec.get("digest") else "")),
        ("started", _e(r.get("started"))),
        ("ended", _e(r.get("ended")) or '<span class="none">not ended</span>'),
        ("duration", _e(_duration(r.get("started"), r.get("ended")))),
        ("interrupted", "yes" if r.get("interrupted") is True else ""),
        ("sbx version", _e(r.get("sbx_version"))),
        ("engine", _e(_d(r.get("engine")).get("version"))),
        ("signer", _e(evidence.get("signer"))),
        ("run directory", _code(r.get("out_dir") or run_dir)),
    ]
    problems = "".join(f"<li>{_e(p)}</li>" for p in run.problems)
    warn = f'<ul class="problems">{problems}</ul>' if problems else ""
    title = _e(r.get("run_id")) or "unknown run"
    return (f"<header><h1>sbx run {title}</h1>{_facts(pairs)}{warn}</header>")


def _verdict_badge(verification: dict[str, Any] | None) -> str:
    if verification is None:
        return '<span class="badge st-pend">not verified</span>'
    passed = verification.get("passed") is True
    return (f'<span class="badge st-{"ok" if passed else "bad"}">'
            f'{"passed" if passed else "FAILED"}</span>')


def _verification(verification: dict[str, Any] | None) -> str:
    if verification is None:
        return ('<section id="verification"><h2>Verification</h2><p class="none">not '
                "verified: this report was made without <code>sbx verify</code>, so "
                "nothing on this page has been checked against the signed evidence.</p>"
                "</section>")
    rows, classes = [], []
    for check in _l(verification.get("checks")):
        c = _d(check)
        status = _s(c.get("status"))
        rows.append([_code(c.get("check")), f"<b>{_e(status)}</b>", _e(c.get("reason"))])
        classes.append({"pass": "ok", "fail": "bad"}.get(status, "dim"))
    table = _table(["check", "status", "reason"], rows, "no checks in the verdict", classes)
    facts = _facts([("trust", _e(verification.get("trust"))),
                    ("run directory", _code(verification.get("run_dir")))])
    return (f'<section id="verification"><h2>Verification {_verdict_badge(verification)}'
            f"</h2>{facts}{table}</section>")


def _decision_table(events: list[dict[str, Any]], empty: str) -> str:
    rows, classes = [], []
    for e in events:
        verdict = _s(e.get("verdict"))
        rows.append([
            f'<span title="{_e(e.get("time"))}">{_e(_short_time(e.get("time")))}</span>',
            _e(e.get("kind")),
            _e(_destination(e)),
            f"<b>{_e(verdict)}</b>",
            _e(e.get("reason")),
            _code(e.get("rule")),
            _code(e.get("rule_source")),
            _e(" ".join(x for x in (_s(e.get("via")), _s(e.get("method")),
                                    _s(e.get("qtype"))) if x)),
        ])
        classes.append({"allowed": "ok", "denied": "bad", "audit": "warn",
                        "failed": "dim"}.get(verdict, ""))
    return _table(["time", "kind", "destination", "verdict", "reason", "rule", "rule source",
                   "via"], rows, empty, classes)


def _request_table(events: list[dict[str, Any]]) -> str:
    """Each checked HTTP request: what it asked, the verdict and the rule that decided."""
    rows, classes = [], []
    for e in events:
        verdict = _s(e.get("verdict"))
        port = e.get("dst_port")
        where = f"{_s(e.get('host'))}{':' + str(port) if isinstance(port, int) else ''}"
        rows.append([
            f'<span title="{_e(e.get("time"))}">{_e(_short_time(e.get("time")))}</span>',
            _e(e.get("method")), _e(where), _code(_clip(_s(e.get("path")), 200)),
            f"<b>{_e(verdict)}</b>", _e(e.get("status")),
            _e(_size(e.get("bytes_in"))), "inspected" if e.get("inspected") is True else "",
            _code(e.get("rule")), _code(e.get("rule_source")), _e(e.get("reason")),
        ])
        classes.append({"allowed": "ok", "denied": "bad", "audit": "warn",
                        "failed": "dim"}.get(verdict, ""))
    return _table(["time", "method", "host", "path", "verdict", "status", "received", "tls",
                   "rule", "rule source", "reason"], rows, "no checked HTTP requests", classes)


def _other_events(events: list[dict[str, Any]]) -> str:
    rows = []
    for e in events:
        rest = {k: v for k, v in e.items() if k not in ("time", "kind", "step", "phase")}
        rows.append([f'<span title="{_e(e.get("time"))}">{_e(_short_time(e.get("time")))}'
                     "</span>", _e(e.get("kind")), _e(e.get("phase")),
                     f'<code class="wrap">{_e(json.dumps(rest, sort_keys=True))}</code>'])
    return _table(["time", "kind", "phase", "fields"], rows, "none")


def _probe_table(probes: list[Any], empty: str) -> str:
    rows, classes = [], []
    for p in probes:
        d = _d(p)
        blocked = d.get("blocked") is True
        rows.append([_e(d.get("name")), _e(d.get("kind")), _e(d.get("target")),
                     "blocked" if blocked else "<b>GOT THROUGH</b>", _e(d.get("detail"))])
        classes.append("ok" if blocked else "bad")
    return _table(["probe", "kind", "target", "result", "detail"], rows, empty, classes)


def _recorded(rec: dict[str, Any]) -> str:
    """"N attempts, M itemized", and what each layer counted without itemizing."""
    if not rec:
        return ""
    parts = [f"{rec.get('attempts')} attempts, {rec.get('itemized')} itemized"]
    for key, label in (("firewall_unlogged", "dropped by the firewall beyond its log"),
                       ("dns_socket_drops", "DNS queries lost in socket buffers"),
                       ("refused", "connections refused for want of a slot"),
                       ("decisions_not_itemized", "decisions past the itemized limit")):
        if rec.get(key):
            parts.append(f"{rec[key]} {label}")
    return " · ".join(parts)


def _step_section(step: _Step, run: _Run) -> str:
    d = step.data
    image = _d(d.get("image"))
    policy = _d(d.get("policy"))
    docker = _d(d.get("docker"))
    containers = _d(docker.get("containers"))
    flows = step.flow_counts()
    faults = [_s(f) for f in _l(d.get("faults"))]
    pairs = [
        ("status", _badge(step.status)),
        ("exit code", _e(d.get("exit_code"))),
        ("reason", _e(d.get("reason"))),
        ("needs", ", ".join(_code(n) for n in step.needs)),
        ("started", _e(d.get("started"))),
        ("step started", _e(d.get("step_started"))),
        ("ended", _e(d.get("ended"))),
        ("duration", _e(_duration(d.get("step_started"), d.get("ended")))),
        ("image", _code(image.get("ref")) + (f" {_code(image.get('id'))}"
                                             if image.get("id") else "")),
        ("image source", " ".join(x for x in (_code(image.get("repo_digest")),
                                              _e(image.get("platform"))) if x)),
        ("policy", _e(policy.get("mode")) + (f" {_code(policy.get('digest'))}"
                                             if policy.get("digest") else "")),
        ("allowlist", ", ".join(_code(a) for a in _l(policy.get("allow")))),
        ("network", " ".join(x for x in (_code(docker.get("network_name")),
                                         _code(docker.get("subnet")),
                                         "internal" if docker.get("internal") is True
                                         else "") if x)),
        ("egress network", _code(docker.get("egress_network"))),
        ("containers", ", ".join(f"{_e(k)} {_code(_clip(_s(v), 12))}"
                                 for k, v in containers.items())),
        ("flows", _e(" · ".join(f"{k} {v}" for k, v in flows.items()))),
        ("recorded", _e(_recorded(_d(d.get("recording"))))),
        ("run CA", _code(_d(d.get("requests")).get("caFingerprint"))),
        ("faults", "<br>".join(_e(f) for f in faults)),
    ]
    inputs = [[_code(_d(i).get("path")), _e(_d(i).get("from")), _code(_d(i).get("sha256"))]
              for i in _l(d.get("inputs"))]
    outputs = [[_code(_d(o).get("path")), _e(_size(_d(o).get("size"))),
                _code(_d(o).get("sha256"))] for o in _l(d.get("outputs"))]
    no_events = "" if run.events_present else f" (no {EVENTS_FILE})"
    if d.get("step_started"):
        after = "after the step started"
    else:
        after = "(the step's command never started)"
    return (
        f'<section class="step" id="{step.anchor}"><h3>{_e(step.name)} '
        f"{_badge(step.status)}</h3>{_facts(pairs)}"
        f"<h4>Flow decisions {_e(after)}</h4>"
        f"{_decision_table(step.decisions, 'no flow decisions' + no_events)}"
        f"<h4>HTTP requests ({len(step.requests)})</h4>{_request_table(step.requests)}"
        f"<h4>Probes</h4>{_probe_table(_l(d.get('probes')), 'no probes recorded')}"
        f"<h4>Peer probes</h4>{_probe_table(_l(d.get('peer_probes')), 'no peer probes')}"
        f"<h4>Inputs</h4>{_table(['path', 'from', 'sha256'], inputs, 'no inputs')}"
        f"<h4>Outputs</h4>{_table(['path', 'size', 'sha256'], outputs, 'no outputs')}"
        f"<details><summary>Decisions while probing, before the step started "
        f"({len(step.probing)})</summary>"
        f"{_decision_table(step.probing, 'none')}</details>"
        f"<details><summary>Probe, lifecycle and flow-close events ({len(step.other)})"
        f"</summary>{_other_events(step.other)}</details></section>"
    )


def _decoded_payload(data: bytes) -> str | None:
    """The Statement inside a DSSE envelope or Sigstore bundle, pretty-printed.

    Shown for reading only: whether it is genuine is the verification's business.
    """
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    envelope = _d(doc.get("dsseEnvelope")) or doc
    payload = envelope.get("payload")
    if not isinstance(payload, str):
        return None
    try:
        statement = json.loads(base64.b64decode(payload, validate=True))
    except (ValueError, binascii.Error):
        return None
    return json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=False)


def _embed(label: str, path: Path) -> str:
    data, why = _read_regular(path, MAX_EMBED)
    if data is None:
        return f'<p class="problems">{_e(why or f"{label}: missing")}</p>'
    cut = len(data) > MAX_EMBED
    shown = data[:MAX_EMBED]
    text = shown.decode("utf-8", errors="replace")
    decoded = None if cut else _decoded_payload(shown)
    note = f" — cut at {_size(MAX_EMBED)}" if cut else ""
    inner = ""
    if decoded is not None:
        inner = (f"<details><summary>decoded payload (unverified here)</summary>"
                 f"<pre>{_e(decoded)}</pre></details>")
    return (f'<details class="evidence"><summary><code>{_e(label)}</code> '
            f"({_e(_size(len(data) if not cut else MAX_EMBED))}{_e(note)})</summary>"
            f"{inner}<pre>{_e(text)}</pre></details>")


def _evidence(run: _Run, run_dir: Path) -> str:
    ev = _d(run.record.get("evidence"))
    pairs = [("signer", _e(ev.get("signer"))), ("signing error", _e(ev.get("error"))),
             ("files", ", ".join(_code(f) for f in _l(ev.get("files"))))]
    parts = [f'<section id="evidence"><h2>Evidence</h2>{_facts(pairs)}']
    folder = run_dir / ATTESTATIONS_DIR
    found = False
    if folder.is_symlink():
        parts.append(f'<p class="problems">{_e(ATTESTATIONS_DIR)}/ is a symbolic link: '
                     "not read</p>")
    elif folder.is_dir():
        try:
            entries = sorted(folder.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            entries = []
            parts.append(f'<p class="problems">{_e(ATTESTATIONS_DIR)}/: {_e(exc)}</p>')
        for path in entries:
            found = True
            parts.append(_embed(f"{ATTESTATIONS_DIR}/{path.name}", path))
    bundle = run_dir / BUNDLE_FILE
    if bundle.exists() or bundle.is_symlink():
        found = True
        parts.append(_embed(BUNDLE_FILE, bundle))
    if not found:
        parts.append(f'<p class="none">No evidence: no {_e(ATTESTATIONS_DIR)}/ and no '
                     f"{_e(BUNDLE_FILE)} (the run may have been killed before signing).</p>")
    parts.append("</section>")
    return "".join(parts)

