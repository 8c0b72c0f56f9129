"""`sbx plan` and `sbx learn` as a library: flows from a hand-made run directory (no Docker)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sbx.errors import InputError
from sbx.pipelines.policy_tools import (
    Change,
    Flow,
    PlanResult,
    decide,
    learn,
    plan,
    recorded_flows,
    render_learn,
    render_plan,
    unlearnable,
)
from sbx.sandbox.policy import Policy, is_internal, parse_rule

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def stamp(seconds: float) -> str:
    """An event time as the runtime writes it (RFC 3339, Z)."""
    return (
        (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def policy(*allow: str, mode: str = "enforce") -> Policy:
    return Policy(mode=mode, rules=tuple(parse_rule(a) for a in allow))


def event(t: float, step: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"time": stamp(t), "step": step, "kind": kind, **fields}


FETCH_ALLOW = ["web.sbx.test:8080"]
BUILD_ALLOW = ["pypi.mirror.test:443"]


def write_run(run_dir: Path) -> Path:
    """A two-step audit run as docs/records.md describes it.

    fetch starts at t=10, build at t=30; each has probe-phase decisions before that.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = {
        "fetch": {"name": "fetch", "needs": [], "status": "succeeded", "started": stamp(0),
                  "step_started": stamp(10), "ended": stamp(29),
                  "policy": {"mode": "audit", "digest": "sha256:0", "allow": FETCH_ALLOW}},
        "build": {"name": "build", "needs": ["fetch"], "status": "succeeded",
                  "started": stamp(20), "step_started": stamp(30), "ended": stamp(50),
                  "policy": {"mode": "audit", "digest": "sha256:1", "allow": BUILD_ALLOW}},
        # Blocked by its probes: it never started, so nothing it recorded is its own.
        "lint": {"name": "lint", "needs": [], "status": "blocked", "started": stamp(0),
                 "step_started": None, "ended": stamp(5),
                 "policy": {"mode": "audit", "digest": "sha256:2", "allow": []}},
    }
    (run_dir / "run.json").write_text(json.dumps({
        "schema": "https://sbx.dev/run/v1", "kind": "pipeline", "run_id": "r1",
        "order": ["fetch", "build", "lint"], "steps": steps}), encoding="utf-8")
    relay = {"via": "relay", "method": "CONNECT"}
    events = [
        event(1, "fetch", "gateway", phase="ready"),
        # Probe phase: the probe's own denial must be ignored.
        event(2, "fetch", "tcp", name="denied.sbx.test", dst_ip="198.18.0.9", dst_port=443,
              verdict="denied", reason="no rule allows", violation=True, **relay),
        event(3, "fetch", "probe", name="egress-raw-ip", blocked=True),
        event(4, "lint", "tcp", dst_ip="198.18.0.9", dst_port=80, verdict="audit"),
        # fetch's own traffic.
        event(11, "fetch", "dns", name="web.sbx.test", qtype="A", verdict="allowed",
              answers=["198.18.0.2"], rule="web.sbx.test:8080", rule_source="p.yaml:4"),
        event(11.5, "fetch", "dns", name="web.sbx.test", qtype="AAAA", verdict="allowed",
              answers=[], rule="web.sbx.test:8080", rule_source="p.yaml:4"),
        event(12, "fetch", "tcp", name="web.sbx.test", dst_ip="198.18.0.2", dst_port=8080,
              verdict="allowed", phase="open", connected_ip="198.18.0.2",
              rule="web.sbx.test:8080", rule_source="p.yaml:4", **relay),
        event(13, "fetch", "tcp", name="web.sbx.test", dst_ip="198.18.0.2", dst_port=8080,
              verdict="allowed", phase="close", bytes_out=10, bytes_in=99,
              rule="web.sbx.test:8080", **relay),
        event(14, "fetch", "dns", name="other.sbx.test", qtype="A", verdict="audit",
              answers=["198.18.0.3"], violation=True),
        event(15, "fetch", "tcp", name="other.sbx.test", dst_ip="198.18.0.3", dst_port=443,
              verdict="audit", phase="open", violation=True, **relay),
        # No SNI or Host (ssh): judged by the address the DNS answer gave.
        event(16, "fetch", "tcp", dst_ip="198.18.0.3", dst_port=22, verdict="audit",
              phase="open", violation=True, **relay),
        event(17, "fetch", "tcp", dst_ip="203.0.113.7", dst_port=22, verdict="audit",
              phase="open", violation=True, **relay),
        event(18, "fetch", "tcp", dst_ip="10.0.0.5", dst_port=5432, verdict="denied",
              reason="10.0.0.5 is an internal or host address", violation=True, **relay),
        event(19, "fetch", "udp", dst_ip="198.18.0.3", dst_port=53, protocol="udp",
              verdict="denied", source="agent", violation=True),
        event(20, "fetch", "tcp", dst_ip="169.254.169.254", dst_port=80, verdict="denied",
              reason="169.254.169.254 is an internal or host address", **relay),
        # The gateway resolved this name only to internal addresses: denied whatever the
        # policy says.
        event(21, "fetch", "tcp", name="intranet.sbx.test", dst_ip="198.18.0.4", dst_port=443,
              verdict="denied", reason="intranet.sbx.test resolves only to internal addresses",
              violation=True, **relay),
        event(22, "fetch", "agent", phase="log-overrun", reason="ENOBUFS"),
        # build: probe phase, then its own traffic.
        event(25, "build", "dns", name="denied.sbx.test", qtype="A", verdict="denied",
              violation=True),
        event(31, "build", "dns", name="pypi.mirror.test", qtype="A", verdict="allowed",
              answers=["198.18.0.10"], rule="pypi.mirror.test:443"),
        event(32, "build", "tcp", name="pypi.mirror.test", dst_ip="198.18.0.10", dst_port=443,
              verdict="allowed", phase="open", rule="pypi.mirror.test:443", **relay),
        event(33, "build", "dns", name="files.mirror.test", qtype="A", verdict="audit",
              answers=["198.18.0.11"], violation=True),
        event(34, "build", "tcp", name="files.mirror.test", dst_ip="198.18.0.11", dst_port=443,
              verdict="audit", phase="open", violation=True, **relay),
        event(35, "build", "tcp", name="files.mirror.test", dst_ip="198.18.0.11", dst_port=80,
              verdict="audit", phase="open", violation=True, via="proxy", method="GET"),
        event(36, "build", "dns", name="cdn.mirror.test", qtype="A", verdict="audit",
              answers=[], violation=True),
        event(37, "build", "dns", name="metadata.google.internal", qtype="A", verdict="audit",
              answers=[], violation=True),
        event(38, "build", "tcp", dst_ip="127.0.0.1", dst_port=80, verdict="denied",
              reason="127.0.0.1 is an internal or host address", violation=True, via="proxy"),
        event(39, "build", "gateway", phase="stopped"),
    ]
    lines = [json.dumps(e, sort_keys=True) for e in events]
    lines.insert(5, "this is not json {")
    lines.insert(9, "[1, 2, 3]")
    lines.insert(12, json.dumps({"time": "yesterday", "step": "fetch", "kind": "tcp",
                                 "verdict": "allowed", "name": "garbage.sbx.test"}))
    lines.insert(14, json.dumps({"step": "fetch", "kind": "dns", "verdict": "allowed",
                                 "name": "no-time.sbx.test"}))
    text = "\n".join(lines) + "\n"
    (run_dir / "events.jsonl").write_bytes(text.encode() + b"\xff\xfe not utf-8\n" + b"{\"trunc")
    return run_dir


@pytest.fixture()
def flows(tmp_path: Path) -> list[Flow]:
    return recorded_flows(write_run(tmp_path / "run"))


def key(flow: Flow) -> tuple[str, str, str, str]:
    return (flow.step, flow.kind, flow.target(), flow.verdict)


def keys(changes: Sequence[Change]) -> list[tuple[str, str, str, str]]:
    return [key(c.flow) for c in changes]


RECORDED = [
    ("fetch", "dns", "web.sbx.test", "allowed"),
    ("fetch", "tcp", "web.sbx.test:8080 (198.18.0.2)", "allowed"),
    ("fetch", "dns", "other.sbx.test", "audit"),
    ("fetch", "tcp", "other.sbx.test:443 (198.18.0.3)", "audit"),
    ("fetch", "tcp", "198.18.0.3:22", "audit"),
    ("fetch", "tcp", "203.0.113.7:22", "audit"),
    ("fetch", "tcp", "10.0.0.5:5432", "denied"),
    ("fetch", "udp", "198.18.0.3:53", "denied"),
    ("fetch", "tcp", "169.254.169.254:80", "denied"),
    ("fetch", "tcp", "intranet.sbx.test:443 (198.18.0.4)", "denied"),
    ("build", "dns", "pypi.mirror.test", "allowed"),
    ("build", "tcp", "pypi.mirror.test:443 (198.18.0.10)", "allowed"),
    ("build", "dns", "files.mirror.test", "audit"),
    ("build", "tcp", "files.mirror.test:443 (198.18.0.11)", "audit"),
    ("build", "tcp", "files.mirror.test:80 (198.18.0.11)", "audit"),
    ("build", "dns", "cdn.mirror.test", "audit"),
    ("build", "dns", "metadata.google.internal", "audit"),
    ("build", "tcp", "127.0.0.1:80", "denied"),
]


# --------------------------------------------------------------------------- records


def test_recorded_flows_are_the_steps_own_decisions_deduplicated(flows: list[Flow]) -> None:
    """Probe phase, close, lifecycle and probe events and garbage lines are left out;
    the A and AAAA lookups of one name are one flow."""
    assert [key(f) for f in flows] == RECORDED


def test_recorded_flows_carry_what_the_gateway_decided_with(flows: list[Flow]) -> None:
    by_target = {(f.step, f.target()): f for f in flows}
    ssh = by_target[("fetch", "198.18.0.3:22")]
    assert ssh.name is None and ssh.port == 22 and not ssh.always_denied
    assert by_target[("fetch", "web.sbx.test:8080 (198.18.0.2)")].rule == "web.sbx.test:8080"
    # Denied although the run's own (audit) policy let the name through: the address.
    assert by_target[("fetch", "intranet.sbx.test:443 (198.18.0.4)")].always_denied
    # Denied by the rules (internal address without an IP rule): a policy can change it.
    assert not by_target[("fetch", "10.0.0.5:5432")].always_denied


def test_recorded_flows_refuse_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"run\.json"):
        recorded_flows(tmp_path)
    (tmp_path / "run.json").write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="steps"):
        recorded_flows(tmp_path)


def test_replaying_the_recorded_policies_changes_nothing(flows: list[Flow]) -> None:
    """The dry run agrees with the gateway on the run it recorded."""
    same = {"fetch": policy(*FETCH_ALLOW, mode="audit"),
            "build": policy(*BUILD_ALLOW, mode="audit")}
    result = plan(same, flows)
    assert result == PlanResult((), (), len(RECORDED), ())
    for flow in flows:
        verdict, _ = decide(same[flow.step], flow)
        assert verdict == flow.verdict


# --------------------------------------------------------------------------- plan


def test_plan_with_a_tightened_policy_shows_exactly_the_newly_denied(flows: list[Flow]) -> None:
    tightened = {
        "fetch": policy("web.sbx.test:80"),  # the name still resolves; port 8080 does not
        "build": policy(),
    }
    result = plan(tightened, flows)
    assert keys(result.newly_denied) == [
        ("build", "dns", "pypi.mirror.test", "allowed"),
        ("build", "tcp", "pypi.mirror.test:443 (198.18.0.10)", "allowed"),
        ("fetch", "tcp", "web.sbx.test:8080 (198.18.0.2)", "allowed"),
    ]
    assert all(c.before == "allowed" and c.after == "denied" and c.rule is None
               for c in result.newly_denied)
    assert result.newly_allowed == ()
    assert result.unchanged == len(RECORDED) - 3
    assert result.unknown_steps == ()


def test_plan_with_a_widened_policy_shows_exactly_the_newly_allowed(flows: list[Flow]) -> None:
    widened = {
        "fetch": policy("web.sbx.test:8080", "other.sbx.test:22", "203.0.113.0/24:22",
                        "10.0.0.0/8:5432", "intranet.sbx.test:443"),
        "build": policy("pypi.mirror.test:443", "*.mirror.test:443"),
    }
    result = plan(widened, flows)
    assert [(*key(c.flow), c.rule) for c in result.newly_allowed] == [
        ("build", "dns", "files.mirror.test", "audit", "*.mirror.test:443"),
        ("build", "tcp", "files.mirror.test:443 (198.18.0.11)", "audit", "*.mirror.test:443"),
        ("build", "dns", "cdn.mirror.test", "audit", "*.mirror.test:443"),
        ("fetch", "dns", "other.sbx.test", "audit", "other.sbx.test:22"),
        ("fetch", "tcp", "203.0.113.7:22", "audit", "203.0.113.0/24:22"),
        # An internal address opens only with an IP rule that names it.
        ("fetch", "tcp", "10.0.0.5:5432", "denied", "10.0.0.0/8:5432"),
    ]
    assert all(c.before == "denied" and c.after == "allowed" for c in result.newly_allowed)
    # other.sbx.test:443 is not on port 22; intranet resolves only to internal addresses.
    assert result.newly_denied == ()


def test_plan_in_audit_mode_counts_audit_as_denied(flows: list[Flow]) -> None:
    result = plan({"fetch": policy(mode="audit"), "build": policy(*BUILD_ALLOW)}, flows)
    assert keys(result.newly_denied) == [
        ("fetch", "dns", "web.sbx.test", "allowed"),
        ("fetch", "tcp", "web.sbx.test:8080 (198.18.0.2)", "allowed"),
    ]
    assert {c.after for c in result.newly_denied} == {"audit"}


def test_plan_names_steps_it_could_not_compare(flows: list[Flow]) -> None:
    result = plan({"fetch": policy(*FETCH_ALLOW), "deploy": policy("x.sbx.test:443")}, flows)
    assert result.unknown_steps == ("build", "deploy")
    assert all(c.flow.step == "fetch" for c in result.newly_denied + result.newly_allowed)


def test_plan_never_opens_what_sbx_never_passes() -> None:
    wide = policy("198.18.0.0/15", "10.0.0.0/8", "a.test")
    for flow in [
        Flow("s", "udp", None, "198.18.0.3", 53, "denied", None),
        Flow("s", "icmp", None, "198.18.0.3", None, "denied", None),
        Flow("s", "ipv6", None, "2001:db8::1", 443, "denied", None),
        Flow("s", "tcp", None, "10.222.0.3", 80, "denied", None),  # sbx's step pool
        Flow("s", "tcp", None, None, None, "denied", None),  # a request the gateway refused
        Flow("s", "dns", "bad..name", None, None, "denied", None),
        Flow("s", "tcp", "a.test", "198.18.0.4", 443, "denied", "a.test", always_denied=True),
    ]:
        assert decide(wide, flow) == ("denied", None), flow


def test_render_plan_one_line_per_change_grouped_by_step(flows: list[Flow]) -> None:
    result = plan({"fetch": policy("other.sbx.test:443"), "build": policy(*BUILD_ALLOW),
                   "deploy": policy()}, flows)
    text = render_plan(result)
    assert text.splitlines() == [
        "sbx plan: 2 newly denied, 2 newly allowed, 14 unchanged",
        "fetch:",
        "  - dns web.sbx.test: allowed -> denied",
        "  - tcp web.sbx.test:8080 (198.18.0.2): allowed -> denied",
        "  + dns other.sbx.test: audit -> allowed by other.sbx.test:443",
        "  + tcp other.sbx.test:443 (198.18.0.3): audit -> allowed by other.sbx.test:443",
        "not compared (no recorded flows, or not in the spec): deploy",
    ]


def test_render_plan_escapes_control_characters_from_the_wire() -> None:
    evil = Flow("s", "tcp", "a.test\x1b[2J", None, 443, "allowed", "a.test:443")
    text = render_plan(plan({"s": policy()}, [evil]))
    assert "\x1b" not in text and "\\x1b[2J" in text


# --------------------------------------------------------------------------- learn


EXPECTED_LEARNED = {
    "build": ["cdn.mirror.test", "files.mirror.test:443", "files.mirror.test:80",
              "pypi.mirror.test:443"],
    # ssh to 198.18.0.3 named nothing: its address, never other.sbx.test (looked up
    # before it), whose DNS lookup is covered by other.sbx.test:443.
    "fetch": ["198.18.0.3:22", "203.0.113.7:22", "other.sbx.test:443", "web.sbx.test:8080"],
}


def test_learn_proposes_the_minimal_entries(flows: list[Flow]) -> None:
    assert learn(flows) == EXPECTED_LEARNED


def test_learn_lists_what_it_cannot_cover(flows: list[Flow]) -> None:
    skipped = unlearnable(flows)
    assert {s: [key(u.flow) for u in items] for s, items in skipped.items()} == {
        "build": [("build", "dns", "metadata.google.internal", "audit"),
                  ("build", "tcp", "127.0.0.1:80", "denied")],
        "fetch": [("fetch", "tcp", "10.0.0.5:5432", "denied"),
                  ("fetch", "udp", "198.18.0.3:53", "denied"),
                  ("fetch", "tcp", "169.254.169.254:80", "denied"),
                  ("fetch", "tcp", "intranet.sbx.test:443 (198.18.0.4)", "denied")],
    }
    assert "metadata" in skipped["build"][0].reason
    reasons = {u.flow.target(): u.reason for items in skipped.values() for u in items}
    for address in ("10.0.0.5:5432", "169.254.169.254:80", "127.0.0.1:80"):
        assert "internal address" in reasons[address]
    assert "never lets udp" in reasons["198.18.0.3:53"]


def test_learned_policies_deny_nothing_the_run_let_through(flows: list[Flow]) -> None:
    learned = {step: policy(*entries) for step, entries in learn(flows).items()}
    result = plan(learned, flows)
    assert result.newly_denied == ()
    passed = [f for f in flows if f.verdict in ("allowed", "audit")
              and f.name != "metadata.google.internal"]
    assert all(decide(learned[f.step], f)[0] == "allowed" for f in passed)


def test_learn_never_proposes_internal_addresses() -> None:
    flows = [Flow("s", "tcp", None, ip, 80, "allowed", "x")
             for ip in ("10.0.0.5", "169.254.169.254", "127.0.0.1", "10.222.0.3", "192.168.1.1",
                        "::1", "::ffff:169.254.169.254", "fd00::1", "198.18.0.1")]
    assert learn(flows) == {"s": ["198.18.0.1:80"]}
    assert len(unlearnable(flows)["s"]) == 8


def test_learn_never_proposes_a_name_for_a_flow_that_named_nothing() -> None:
    """A nameless flow (ssh to an address the step looked up as b.test) is covered by its
    address: a name rule would launder it, and the gateway would deny it under one."""
    flows = [
        Flow("s", "dns", "b.test", None, None, "audit", None),
        Flow("s", "tcp", None, "198.18.0.5", 22, "audit", None),
        Flow("s", "tcp", None, "2001:db8::7", 443, "audit", None),
    ]
    assert learn(flows) == {"s": ["198.18.0.5:22", "[2001:db8::7]:443", "b.test"]}
    b_test = policy("b.test:22")
    assert decide(b_test, flows[1])[0] == "denied"


def test_render_learn_is_yaml_a_user_can_paste(flows: list[Flow]) -> None:
    proposal = learn(flows)
    text = render_learn(proposal, unlearnable(flows))
    blocks: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("# step "):
            current = line.split()[2].rstrip(":")
            blocks[current] = []
        blocks[current].append(line)
    assert sorted(blocks) == ["build", "fetch"]
    for step, lines in blocks.items():
        doc = yaml.safe_load("\n".join(lines))
        assert doc == {"egress": {"mode": "enforce", "allow": proposal[step]}}
    assert "cdn.mirror.test  # any port" in text
    assert "# not learned: tcp 127.0.0.1:80" in text
    # Entries YAML would misread are quoted.
    tricky = render_learn({"s": ["[2001:db8::7]:443"], "t": []})
    assert yaml.safe_load(tricky.split("# step t")[0]) == {
        "egress": {"mode": "enforce", "allow": ["[2001:db8::7]:443"]}}
    assert "allow: []" in tricky


# --------------------------------------------------------------------------- properties

NAMES = ("a.test", "b.test", "x.a.test", "A.Test.", "localhost", "metadata.google.internal",
         "1.2.3.4", "123", "bad..name")
IPS = ("198.18.0.1", "198.18.0.2", "203.0.113.7", "2001:db8::1", "10.0.0.5", "10.222.0.9",
       "169.254.169.254", "127.0.0.1")
PORTS = (22, 80, 443, 8080)
ENTRIES = ("a.test:443", "a.test", "*.a.test:80", "b.test:22", "198.18.0.0/24:22",
           "203.0.113.7", "[2001:db8::1]:443")


@st.composite
def attempt(draw: st.DrawFn) -> Flow:
    """A destination a step tried, with no verdict yet."""
    kind = draw(st.sampled_from(("dns", "tcp", "tcp", "tcp", "udp")))
    if kind == "dns":
        return Flow("", kind, draw(st.sampled_from(NAMES)), None, None, "", None)
    port = draw(st.sampled_from(PORTS))
    if kind == "udp" or draw(st.booleans()):
        ip = draw(st.sampled_from(IPS))
        return Flow("", kind, None, ip, port, "", None)
    return Flow("", kind, draw(st.sampled_from(NAMES)), draw(st.sampled_from(IPS)), port, "",
                None)


@st.composite
def recorded_run(draw: st.DrawFn) -> list[Flow]:
    """Flows of a consistent run: each verdict is what its recorded policy decided."""
    flows: list[Flow] = []
    for step in ("s1", "s2"):
        recorded = policy(*draw(st.lists(st.sampled_from(ENTRIES), unique=True)),
                          mode=draw(st.sampled_from(("audit", "enforce"))))
        for tried in draw(st.lists(attempt(), max_size=12)):
            verdict, rule = decide(recorded, tried)
            flows.append(Flow(step, tried.kind, tried.name, tried.ip, tried.port, verdict,
                              rule.text if rule else None))
    return flows


@settings(max_examples=300, deadline=None)
@given(recorded_run())
def test_property_learn_then_plan_denies_nothing(flows: list[Flow]) -> None:
    proposal = learn(flows)
    learned = {step: policy(*entries) for step, entries in proposal.items()}
    result = plan(learned, flows)
    assert result.newly_denied == ()
    skipped = {u.flow for items in unlearnable(flows).values() for u in items}
    for flow in flows:
        if flow not in skipped:
            assert decide(learned[flow.step], flow)[0] == "allowed", flow
    for entries in proposal.values():
        assert entries == sorted(set(entries))
        for entry in entries:
            rule = parse_rule(entry)
            assert rule.suffix is None  # never a wildcard
            if rule.network is not None:
                assert not is_internal(str(rule.network.network_address))
                assert rule.network.prefixlen == rule.network.max_prefixlen


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(
    lambda tried, step, verdict, rule, always: Flow(
        step, tried.kind, tried.name, tried.ip, tried.port, verdict, rule, always),
    attempt(), st.sampled_from(("s1", "s2")),
    st.sampled_from(("allowed", "audit", "denied", "failed")),
    st.sampled_from((None, "r")), st.booleans()), max_size=20))
def test_property_only_unlearnable_flows_are_newly_denied(flows: list[Flow]) -> None:
    """Whatever the verdicts say, a flow the proposal does not cover is reported."""
    learned = {step: policy(*entries) for step, entries in learn(flows).items()}
    skipped = {u.flow for items in unlearnable(flows).values() for u in items}
    for change in plan(learned, flows).newly_denied:
        assert change.flow in skipped
    for entries in learn(flows).values():
        for entry in entries:
            network = parse_rule(entry).network
            assert network is None or not is_internal(str(network.network_address))
