"""The report's SVG step graph: one zone per step with its internet box, hand-off edges
between columns, and the legend."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from sbx.pipelines.report.html.model import (
    _d,
    _e,
    _l,
    _Run,
    _s,
    _Step,
)
from sbx.pipelines.report.html.style import (
    _STROKES,
    FAILED_FILL,
    PENDING_FILL,
    RUNNING_FILL,
    SKIPPED_FILL,
    SUCCEEDED_FILL,
    UNKNOWN_FILL,
    fill_for,
)
from sbx.pipelines.report.html.tables import (
    _clip,
)

# Geometry of the graph (pixels). Four columns fit a 1400 px wide window.
ZONE_W: Final = 228
ZONE_H: Final = 118
EGRESS_H: Final = 96
LINK_H: Final = 34  # the gateway edge between a zone and its internet box
COL_GAP: Final = 140  # room for the hand-off labels between columns
SLOT_GAP: Final = 30
LANE_H: Final = 22  # one lane below the zones per edge that skips a column
MARGIN: Final = 20


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


