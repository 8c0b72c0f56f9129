"""`sbx report RUN_DIR --html FILE`: one self-contained HTML page about a run.

The page is made only from the run directory contract (docs/records.md): run.json,
events.jsonl, attestations/ and attestations.intoto.jsonl, plus, optionally, the
`--json` form of `sbx verify`. It has no external assets (inline CSS and SVG, no
script at all), so it can be archived as a CI artifact and opened offline years later.

Everything read from the run directory is untrusted: a step could have written
anything into a DNS name, a step file could name a step `<script>`, and a run
directory handed over for review could be crafted. So every piece of text goes
through `html.escape` on its way into markup, nothing read is ever used as markup
or as a URL, and a Content-Security-Policy forbids scripts and remote loads as a
second line of defence. Records may be missing or half written (an interrupted run):
every accessor tolerates missing keys and wrong types, and problems are listed on the
page instead of raised.
"""

from __future__ import annotations

import base64
import binascii
import errno
import html
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sbx.attest.verify.evidence import ATTESTATIONS_DIR, BUNDLE_FILE, EVENTS_FILE
from sbx.pipelines.run.records import is_decision, parse_time

RUN_FILE: Final = "run.json"

# Zone fills of the step graph, by status. They are used for the zones only (nowhere
# else on the page but the small legend), so a screenshot test can find each zone by
# its exact colour. Light tints keep the dark zone text readable.
SUCCEEDED_FILL: Final = "#9be3a8"
FAILED_FILL: Final = "#f4a3a3"  # failed, blocked, timeout, error, interrupted
SKIPPED_FILL: Final = "#c8c8c8"
RUNNING_FILL: Final = "#f7d98b"  # preparing, probing, waiting, running
PENDING_FILL: Final = "#dce3f5"
UNKNOWN_FILL: Final = "#e6d3f0"  # a status this version of sbx does not know

STATUS_FILLS: Final[dict[str, str]] = {
    "succeeded": SUCCEEDED_FILL,
    "failed": FAILED_FILL, "blocked": FAILED_FILL, "timeout": FAILED_FILL,
    "error": FAILED_FILL, "interrupted": FAILED_FILL,
    "skipped": SKIPPED_FILL,
    "preparing": RUNNING_FILL, "probing": RUNNING_FILL, "waiting": RUNNING_FILL,
    "running": RUNNING_FILL,
    "pending": PENDING_FILL,
}

# Darker outlines of the same hues, so the zones stay distinct in greyscale prints.
_STROKES: Final[dict[str, str]] = {
    SUCCEEDED_FILL: "#2f8a43", FAILED_FILL: "#b83232", SKIPPED_FILL: "#7a7a7a",
    RUNNING_FILL: "#b08a1e", PENDING_FILL: "#6a7fb5", UNKNOWN_FILL: "#8a5aa6",
}

# Geometry of the graph (pixels). Four columns fit a 1400 px wide window.
ZONE_W: Final = 228
ZONE_H: Final = 118
EGRESS_H: Final = 96
LINK_H: Final = 34  # the gateway edge between a zone and its internet box
COL_GAP: Final = 140  # room for the hand-off labels between columns
SLOT_GAP: Final = 30
LANE_H: Final = 22  # one lane below the zones per edge that skips a column
MARGIN: Final = 20

# One embedded evidence file is cut after this many bytes: a crafted run directory
# must not turn a report into a gigabyte page. sbx's own documents are a few KiB.
MAX_EMBED: Final = 2 << 20


def fill_for(status: str) -> str:
    """The zone fill colour of a step status (`UNKNOWN_FILL` for anything unexpected)."""
    return STATUS_FILLS.get(status, UNKNOWN_FILL)


# --------------------------------------------------------------------------- reading


def _e(value: Any) -> str:
    """Text for markup: None is empty, everything else is escaped, quotes included."""
    return "" if value is None else html.escape(str(value), quote=True)


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _read_regular(path: Path, limit: int | None = None) -> tuple[bytes | None, str | None]:
    """A regular file's bytes, never through a symbolic link; (None, why) otherwise.

    A run directory can come from elsewhere: a link to /etc/shadow named
    attestations/x.dsse.json must not end up embedded in a published report.
    """
    try:
        # O_NONBLOCK: a FIFO planted as events.jsonl must not hang the report.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{path.name}: not read: a symbolic link"
        return None, f"{path.name}: not read: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, f"{path.name}: not read: not a regular file"
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            data = fh.read() if limit is None else fh.read(limit + 1)
        return data, None
    except OSError as exc:
        return None, f"{path.name}: not read: {exc.strerror or exc}"
    finally:
        if fd >= 0:
            os.close(fd)


@dataclass
class _Step:
    """One step as the page shows it: its run.json entry and its events."""

    index: int
    name: str
    data: dict[str, Any]
    depth: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    probing: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        # Ids come from the position, never from the untrusted name.
        return f"step-{self.index}"

    @property
    def status(self) -> str:
        return _s(self.data.get("status")) or "unknown"

    @property
    def needs(self) -> list[str]:
        return [n for n in _l(self.data.get("needs")) if isinstance(n, str)]

    def flow_counts(self) -> dict[str, int]:
        """run.json's counts, else counted from the events (an interrupted run)."""
        recorded = _d(self.data.get("flows"))
        if recorded:
            return {k: v if isinstance(v, int) else 0 for k, v in recorded.items()}
        counts = Counter(_s(e.get("verdict")) for e in self.decisions)
        return {k: counts.get(k, 0) for k in ("allowed", "audit", "denied", "failed")}


@dataclass
class _Run:
    record: dict[str, Any]
    steps: list[_Step]
    unattributed: list[dict[str, Any]]
    events_present: bool
    problems: list[str]


def _load_record(run_dir: Path, problems: list[str]) -> dict[str, Any]:
    data, why = _read_regular(run_dir / RUN_FILE)
    if why:
        problems.append(why)
    if data is None:
        problems.append(f"no {RUN_FILE}: the run left no record (or this is not a run "
                        "directory)")
        return {}
    try:
        record = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError as exc:
        problems.append(f"{RUN_FILE} is not JSON ({exc}); it may have been cut short")
        return {}
    if not isinstance(record, dict):
        problems.append(f"{RUN_FILE} is not a JSON object")
        return {}
    return record


def _step_map(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`steps` from run.json; a single-step record (`step` plus top-level facts) too."""
    steps = record.get("steps")
    if isinstance(steps, dict):
        return {str(k): _d(v) for k, v in steps.items()}
    single = record.get("step")
    if isinstance(single, dict) and single.get("name"):
        # The single-step form keeps the step's facts at the top level.
        facts = ("image", "policy", "docker", "probes", "outputs", "flows", "faults",
                 "started", "step_started", "ended")
        merged: dict[str, Any] = {k: record[k] for k in facts if k in record}
        merged.update(single)
        return {str(single["name"]): merged}
    return {}


def _load_events(run_dir: Path, problems: list[str]) -> tuple[list[dict[str, Any]], bool]:
    data, why = _read_regular(run_dir / EVENTS_FILE)
    if why:
        problems.append(why)
    if data is None:
        return [], False
    events: list[dict[str, Any]] = []
    bad = 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad += 1  # the last line of a killed run can be half written
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            bad += 1
    if bad:
        problems.append(f"{EVENTS_FILE}: {bad} line(s) are not JSON objects and are not shown")
    return events, True


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = parse_time(value)
    except ValueError:
        return None
    # A stamp without a zone would not compare with sbx's own: read it as UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _depths(steps: dict[str, _Step]) -> None:
    """Column of each step: 0 without needs, else one past its deepest need.

    run.json is untrusted, so neither a cycle nor a chain of thousands of steps may
    loop or overflow the stack: the walk is iterative, and a need met again while
    its own depth is being worked out counts as depth 0.
    """
    done: dict[str, int] = {}
    for root in steps:
        if root in done:
            continue
        stack = [root]
        visiting = {root}
        while stack:
            name = stack[-1]
            needs = [n for n in steps[name].needs if n in steps and n != name]
            pending = [n for n in needs if n not in done and n not in visiting]
            if pending:
                stack.append(pending[0])
                visiting.add(pending[0])
                continue
            done[name] = 1 + max((done.get(n, 0) for n in needs), default=-1)
            stack.pop()
            visiting.discard(name)
    for name, step in steps.items():
        step.depth = done[name]


def _load(run_dir: Path) -> _Run:
    problems: list[str] = []
    record = _load_record(run_dir, problems)
    raw = _step_map(record)
    order = [n for n in _l(record.get("order")) if isinstance(n, str) and n in raw]
    names = list(dict.fromkeys([*order, *sorted(raw)]))
    steps = {n: _Step(i, n, raw[n]) for i, n in enumerate(names)}
    _depths(steps)
    events, present = _load_events(run_dir, problems)
    unattributed: list[dict[str, Any]] = []
    for event in events:
        step = steps.get(_s(event.get("step")))
        if step is None:
            unattributed.append(event)
            continue
        if is_decision(event):
            # Decisions before the step's own start are the probes' (docs/records.md).
            started = _time(step.data.get("step_started"))
            when = _time(event.get("time"))
            if started is None or (when is not None and when < started):
                step.probing.append(event)
            else:
                step.decisions.append(event)
        else:
            step.other.append(event)
    return _Run(record, list(steps.values()), unattributed, present, problems)


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


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class _Box:
    x: int
    y: int  # top of the zone (the internet box sits above it)


def _layout(steps: list[_Step]) -> tuple[dict[str, _Box], int, int]:
    """Columns by depth; within a column `order`'s order; columns centred vertically."""
    columns: dict[int, list[_Step]] = {}
    for step in steps:
        columns.setdefault(step.depth, []).append(step)
    slot = EGRESS_H + LINK_H + ZONE_H
    tallest = max((len(c) for c in columns.values()), default=0)
    height = MARGIN * 2 + tallest * slot + max(tallest - 1, 0) * SLOT_GAP
    boxes: dict[str, _Box] = {}
    for col, members in columns.items():
        used = len(members) * slot + (len(members) - 1) * SLOT_GAP
        top = MARGIN + (height - 2 * MARGIN - used) // 2
        for i, step in enumerate(members):
            slot_top = top + i * (slot + SLOT_GAP)
            boxes[step.name] = _Box(MARGIN + col * (ZONE_W + COL_GAP),
                                    slot_top + EGRESS_H + LINK_H)
    ncols = max(columns, default=-1) + 1
    width = MARGIN * 2 + ncols * ZONE_W + max(ncols - 1, 0) * COL_GAP
    return boxes, width, height


def _svg_text(x: int, y: int, text: str, cls: str, limit: int = 40,
              anchor: str = "start") -> str:
    shown = _clip(text, limit)
    title = f"<title>{_e(text)}</title>" if shown != text else ""
    return (f'<text x="{x}" y="{y}" class="{cls}" text-anchor="{anchor}">{title}'
            f"{_e(shown)}</text>")


def _handoffs(steps: list[_Step]) -> list[tuple[str, str, list[str]]]:
    """(producer, consumer, artifacts) for every needs edge and every hand-off."""
    known = {s.name for s in steps}
    edges: dict[tuple[str, str], list[str]] = {}
    for step in steps:
        for need in step.needs:
            if need in known:
                edges.setdefault((need, step.name), [])
        for item in _l(step.data.get("inputs")):
            source = _s(_d(item).get("from"))
            if source in known and source != step.name:
                edges.setdefault((source, step.name), []).append(_s(_d(item).get("path")))
    return [(a, b, paths) for (a, b), paths in edges.items()]


def _egress_lines(step: _Step) -> list[tuple[str, str]]:
    """(css class, text) lines of the step's internet box: what the gateway let out."""
    reached: Counter[str] = Counter()
    audited: Counter[str] = Counter()
    for event in step.decisions:
        name = _s(event.get("name")) or _s(event.get("dst_ip")) or "?"
        port = _s(event.get("dst_port"))
        key = f"{name}:{port}" if port else name
        if event.get("verdict") == "allowed":
            reached[key] += 1
        elif event.get("verdict") == "audit":
            audited[key] += 1
    lines = [("dest-ok", f"✓ {k} ({n})") for k, n in reached.most_common()]
    lines += [("dest-audit", f"! {k} ({n}, audit)") for k, n in audited.most_common()]
    if len(lines) > 3:
        lines = [*lines[:2], ("dest-more", f"+{len(lines) - 2} more, see the step")]
    if not lines:
        allow = [_s(a) for a in _l(_d(step.data.get("policy")).get("allow"))]
        lines = [("dest-none", "no destination reached")]
        if allow:
            lines.append(("dest-none", "allowlist: " + ", ".join(allow)))
    denied = step.flow_counts().get("denied", 0)
    if denied:
        lines.append(("dest-denied", f"✗ {denied} denied"))
    return lines


def _zone(step: _Step, box: _Box) -> str:
    data = step.data
    fill = fill_for(step.status)
    stroke = _STROKES.get(fill, "#555555")
    flows = step.flow_counts()
    docker = _d(data.get("docker"))
    subnet = _s(docker.get("subnet"))
    probes = [_d(p) for p in _l(data.get("probes")) + _l(data.get("peer_probes"))]
    blocked = sum(1 for p in probes if p.get("blocked") is True)
    code = data.get("exit_code")
    status_line = step.status.upper() + (f" · exit {code}" if code is not None else "")
    x, y = box.x, box.y
    parts = [
        f'<a href="#{step.anchor}" class="zone">',
        f"<title>{_e(step.name)}: {_e(step.status)}</title>",
        f'<rect x="{x}" y="{y}" width="{ZONE_W}" height="{ZONE_H}" rx="14" ry="14" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="2"/>',
        _svg_text(x + 12, y + 24, step.name, "zname", 24),
        _svg_text(x + 12, y + 44, status_line, "zstatus", 30),
        _svg_text(x + 12, y + 64, f"net {subnet}" if subnet else "no network"
                  + (" yet" if fill in (PENDING_FILL, RUNNING_FILL) else ""),
                  "zline", 34),
        _svg_text(x + 12, y + 83, f"allowed {flows.get('allowed', 0)} · audit "
                  f"{flows.get('audit', 0)} · denied {flows.get('denied', 0)}", "zline", 36),
        _svg_text(x + 12, y + 102, f"probes {blocked}/{len(probes)} blocked"
                  if probes else "no probes recorded",
                  "zline" if blocked == len(probes) else "zalarm", 34),
        "</a>",
    ]
    # The step's egress: an edge from the zone through its gateway to the internet.
    ex, ey = x, y - LINK_H - EGRESS_H
    mid = x + ZONE_W // 2
    parts.append(f'<line x1="{mid}" y1="{y}" x2="{mid}" y2="{y - LINK_H + 2}" '
                 'class="egress" marker-end="url(#arrow-egress)"/>')
    parts.append(_svg_text(mid + 8, y - LINK_H // 2 + 4, "gateway", "elabel", 12))
    parts.append(f'<rect x="{ex}" y="{ey}" width="{ZONE_W}" height="{EGRESS_H}" rx="8" '
                 'ry="8" class="internet"/>')
    mode = _s(_d(data.get("policy")).get("mode"))
    parts.append(_svg_text(ex + 10, ey + 18, "internet" + (f" · {mode}" if mode else ""),
                           "ihead", 34))
    for i, (cls, text) in enumerate(_egress_lines(step)[:5]):
        parts.append(_svg_text(ex + 10, ey + 36 + i * 15, text, cls, 34))
    return "\n".join(parts)


def _rounded(points: list[tuple[int, int]], radius: int = 10) -> str:
    """An orthogonal polyline as a path with rounded corners."""
    out = [f"M{points[0][0]},{points[0][1]}"]
    for (ax, ay), (px, py), (bx, by) in zip(points, points[1:], points[2:], strict=False):
        r = min(radius, abs(px - ax + py - ay) // 2, abs(bx - px + by - py) // 2)
        sx = (px > ax) - (px < ax)
        sy = (py > ay) - (py < ay)
        tx = (bx > px) - (bx < px)
        ty = (by > py) - (by < py)
        out.append(f"L{px - sx * r},{py - sy * r} Q{px},{py} {px + tx * r},{py + ty * r}")
    out.append(f"L{points[-1][0]},{points[-1][1]}")
    return " ".join(out)


def _edge(start: tuple[int, int], end: tuple[int, int], artifacts: list[str],
          lane: int | None, tracks: tuple[int, int]) -> str:
    """A needs edge from a port on the producer's right side to one on the consumer's left.

    Between neighbouring columns it is a curve through the gap. An edge that skips a
    column (or points backwards, in a crafted run.json) would run under the zones in
    between, so it goes down its gap to a lane of its own below every zone, along it,
    and up the gap before its target, on the vertical `tracks` (x) given.
    """
    (x1, y1), (x2, y2) = start, end
    if lane is None:
        bend = max((x2 - x1) // 2, 40)
        path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
        shown = artifacts[:3] if len(artifacts) <= 3 else [
            *artifacts[:2], f"+{len(artifacts) - 2} more"]
        mx, my = (x1 + x2) // 2, (y1 + y2) // 2 - 8 - 14 * (len(shown) - 1)
        labels = [_svg_text(mx, my + i * 14, text, "alabel", 22, anchor="middle")
                  for i, text in enumerate(shown)]
    else:
        down, up = tracks
        path = _rounded([(x1, y1), (down, y1), (down, lane), (up, lane), (up, y2), (x2, y2)])
        label = ", ".join(artifacts)
        labels = [_svg_text((down + up) // 2, lane - 5, label, "alabel", 60,
                            anchor="middle")] if label else []
    return "\n".join([f'<path d="{path}" class="need" marker-end="url(#arrow-need)"/>',
                      *labels])


def _tracks(lanes: dict[int, int], column: dict[int, int], side: int) -> dict[int, int]:
    """Offset of each long edge's vertical track from the zones beside it.

    Per column side, the deeper its lane the closer a track keeps to the zones: an
    edge that leaves lower then never crosses one that runs down further out. Tracks
    hug the zones, which keeps the labels in the middle of a gap clear of them.
    """
    offsets: dict[int, int] = {}
    for col in set(column.values()):
        members = sorted((i for i in lanes if column[i] == col), key=lambda i: lanes[i])
        for k, i in enumerate(members):
            offsets[i] = side * (14 + ((len(members) - 1 - k) * 7) % (COL_GAP // 3))
    return offsets


def _ports(box: _Box, count: int) -> list[int]:
    """Where `count` edges meet one side of a zone: spread out, so arrows stay apart."""
    return [box.y + ZONE_H * (i + 1) // (count + 1) for i in range(count)]


def _graph(run: _Run) -> str:
    if not run.steps:
        return '<p class="none">No steps recorded.</p>'
    boxes, width, height = _layout(run.steps)
    depth = {s.name: s.depth for s in run.steps}
    handoffs = _handoffs(run.steps)
    # A lane per edge that does not go to the next column; those leave and enter a
    # zone at the bottom of its side, the others in the order of where they go.
    lanes: dict[int, int] = {}
    for i, (a, b, _) in enumerate(handoffs):
        if depth[b] - depth[a] != 1:
            lanes[i] = height - MARGIN + LANE_H * (len(lanes) + 1)

    def order(i: int, other: str) -> tuple[int, int, int]:
        return (i in lanes, lanes.get(i, 0), boxes[other].y)

    leaving: dict[str, list[int]] = {}
    entering: dict[str, list[int]] = {}
    for i, (a, b, _) in enumerate(handoffs):
        leaving.setdefault(a, []).append(i)
        entering.setdefault(b, []).append(i)
    starts: dict[int, tuple[int, int]] = {}
    ends: dict[int, tuple[int, int]] = {}
    for step in run.steps:
        box = boxes[step.name]
        out = sorted(leaving.get(step.name, []), key=lambda i: order(i, handoffs[i][1]))
        for i, y in zip(out, _ports(box, len(out)), strict=True):
            starts[i] = (box.x + ZONE_W, y)
        into = sorted(entering.get(step.name, []), key=lambda i: order(i, handoffs[i][0]))
        for i, y in zip(into, _ports(box, len(into)), strict=True):
            ends[i] = (box.x - 4, y)
    leave = _tracks(lanes, {i: depth[handoffs[i][0]] for i in lanes}, 1)
    enter = _tracks(lanes, {i: depth[handoffs[i][1]] for i in lanes}, -1)
    edges = []
    for i, (_, _, paths) in enumerate(handoffs):
        tracks = (starts[i][0] + leave.get(i, 0), ends[i][0] + 4 + enter.get(i, 0))
        edges.append(_edge(starts[i], ends[i], paths, lanes.get(i), tracks))
    height += LANE_H * len(lanes)
    zones = [_zone(s, boxes[s.name]) for s in run.steps]
    defs = (
        "<defs>"
        '<marker id="arrow-need" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#33415c"/></marker>'
        '<marker id="arrow-egress" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#2d63b3"/></marker>'
        "</defs>"
    )
    return (f'<div class="graph"><svg role="img" aria-label="step graph" '
            f'width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">{defs}\n' + "\n".join(edges) + "\n"
            + "\n".join(zones) + "</svg></div>")


def _legend() -> str:
    items = [("succeeded", SUCCEEDED_FILL), ("failed · blocked · timeout · error · "
             "interrupted", FAILED_FILL), ("skipped", SKIPPED_FILL),
             ("preparing · probing · waiting · running", RUNNING_FILL),
             ("pending", PENDING_FILL), ("other", UNKNOWN_FILL)]
    spans = "".join(f'<span><i style="background:{c}"></i>{_e(t)}</span>' for t, c in items)
    return (f'<p class="legend">{spans}<span>arrows: needs, labelled with the artifacts '
            "handed over · dashed: the step's egress through its gateway</span></p>")


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


_CSS: Final = """
:root { color-scheme: light; }
body { font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1d2433;
       margin: 0 24px 40px; background: #ffffff; }
h1 { font-size: 20px; margin: 14px 0 6px; }
h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #d5d9e2; }
h3 { font-size: 15px; margin: 22px 0 6px; }
h4 { font-size: 13px; margin: 14px 0 4px; color: #3a4560; }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px; }
code { overflow-wrap: anywhere; }
pre { background: #f6f7f9; border: 1px solid #e1e4ea; padding: 8px; overflow-x: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr
           max-content 1fr; gap: 2px 12px; margin: 4px 0; }
dl.facts dt { color: #5b6478; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: 4px 0 8px; font-size: 12.5px; }
th, td { border: 1px solid #dfe2e8; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #eef0f4; }
tr.ok td { background: #f1faf3; } tr.bad td { background: #fdeeee; }
tr.warn td { background: #fff8e6; } tr.dim td { color: #6b7280; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
         font-weight: bold; border: 1px solid; }
.st-ok { color: #1f6b32; border-color: #1f6b32; } .st-bad { color: #a11d1d; border-color: #a11d1d; }
.st-skip { color: #555; border-color: #777; } .st-run { color: #7a5b00; border-color: #a07a10; }
.st-pend, .st-unknown { color: #3f4f7a; border-color: #6a7fb5; }
.none { color: #6b7280; font-style: italic; }
.problems { color: #a11d1d; }
.graph { overflow-x: auto; margin: 6px 0 0; }
.legend span { margin-right: 14px; font-size: 12px; color: #3a4560; white-space: nowrap; }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 3px;
            margin-right: 4px; vertical-align: -1px; border: 1px solid #888; }
code.wrap { white-space: pre-wrap; }
svg text { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
svg .zname { font-size: 15px; font-weight: bold; fill: #10151f; }
svg .zstatus { font-size: 12px; font-weight: bold; fill: #1d2433; }
svg .zline { font-size: 12px; fill: #1d2433; }
svg .zalarm { font-size: 12px; font-weight: bold; fill: #8f0000; }
svg .internet { fill: #f4f8fe; stroke: #2d63b3; stroke-width: 1.5; stroke-dasharray: 6 4; }
svg .ihead { font-size: 12px; font-weight: bold; fill: #2d63b3; }
svg .dest-ok { font-size: 11.5px; fill: #1f6b32; }
svg .dest-audit { font-size: 11.5px; fill: #8a6500; }
svg .dest-denied { font-size: 11.5px; font-weight: bold; fill: #a11d1d; }
svg .dest-none, svg .dest-more { font-size: 11.5px; fill: #5b6478; }
svg .egress { stroke: #2d63b3; stroke-width: 2; stroke-dasharray: 5 4; }
svg .elabel { font-size: 11px; fill: #2d63b3; }
svg .need { fill: none; stroke: #33415c; stroke-width: 2; }
svg .alabel { font-size: 11px; fill: #1d2433; paint-order: stroke; stroke: #ffffff;
              stroke-width: 4px; stroke-linejoin: round; }
svg a.zone:hover rect { stroke-width: 3; }
"""

# No script runs and nothing is fetched, even if escaping were ever broken somewhere.
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render_html(run_dir: Path, verification: dict[str, Any] | None) -> str:
    """The report page of a run directory, as one self-contained HTML document.

    `verification` is `sbx verify --json`'s object (`Report.to_dict()`), or None when
    the run was not verified. Missing or partial records never raise: what could not
    be read is listed at the top of the page.
    """
    run = _load(run_dir)
    title = _s(run.record.get("run_id")) or run_dir.name
    steps = "".join(_step_section(s, run) for s in run.steps)
    unattributed = ""
    if run.unattributed:
        unattributed = ("<section><h2>Events of no known step</h2>"
                        f"{_other_events(run.unattributed)}</section>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sbx run {_e(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(run, run_dir, verification)}"
        f'<section id="graph"><h2>Steps</h2>{_graph(run)}{_legend()}</section>'
        f"{_verification(verification)}"
        f'<section id="steps"><h2>Step details</h2>'
        f"{steps or '<p class=none>No steps recorded.</p>'}</section>"
        f"{unattributed}{_evidence(run, run_dir)}"
        f"<footer><p class=\"none\">made by sbx report from {_e(RUN_FILE)}, "
        f"{_e(EVENTS_FILE)} and the evidence files</p></footer></body></html>\n"
    )


def write_html(run_dir: Path, dest: Path, verification: dict[str, Any] | None) -> None:
    """Render the report and write it to `dest` atomically (a reader never sees half)."""
    page = render_html(run_dir, verification)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, dest)
