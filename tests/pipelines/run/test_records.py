"""A run's records on disk: secret masking, the event log and run.json writes (no Docker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sbx.pipelines.run.records import EventLog, Masker, is_decision, parse_time, write_json

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def stamp(seconds: float) -> str:
    """An event time as the runtime writes it (RFC 3339, Z)."""
    return (
        (T0 + timedelta(seconds=seconds)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


# --------------------------------------------------------------------------- Masker


def test_masker_replaces_every_occurrence_in_text_and_bytes() -> None:
    masker = Masker(["s3cr3t", "tok-123"])
    assert masker.text("a s3cr3t b s3cr3t tok-123") == "a *** b *** ***"
    assert masker.data(b"Authorization: tok-123\ns3cr3t") == b"Authorization: ***\n***"


def test_masker_replaces_the_longest_secret_first() -> None:
    """A secret that contains another must not leave its tail visible."""
    masker = Masker(["abc", "abcdef"])
    assert masker.text("xabcdefx") == "x***x"
    assert masker.data(b"xabcdefx abc") == b"x***x ***"
    assert Masker(["abcdef", "abc"]).text("xabcdefx") == "x***x"


def test_masker_ignores_empty_secrets() -> None:
    masker = Masker(["", "k"])
    assert masker.text("ok") == "o***"
    assert Masker([""]).text("text") == "text"
    assert Masker([]).data(b"bytes") == b"bytes"


def test_masker_handles_non_ascii_secrets_in_bytes() -> None:
    masker = Masker(["pässwörd"])
    assert masker.data("x=pässwörd".encode()) == b"x=***"


# --------------------------------------------------------------------------- EventLog


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    events = EventLog(tmp_path / "events.jsonl", Masker(["hunter2"]))
    yield events
    events.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_event_log_writes_masked_json_lines_as_they_arrive(log: EventLog) -> None:
    seen: list[dict[str, Any]] = []
    log.listeners.append(seen.append)
    log.add(
        {
            "kind": "tcp",
            "time": stamp(1),
            "name": "hunter2.example.com",
            "reason": "password=hunter2",
        }
    )
    # Flushed at once: a crash right after leaves the line on disk.
    [written] = lines(log.path)
    assert written["name"] == "***.example.com"
    assert written["reason"] == "password=***"
    assert "hunter2" not in log.path.read_text()
    assert seen == [written]


def test_event_log_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind":"earlier"}\n')
    events = EventLog(path, Masker([]))
    events.add({"kind": "later"})
    events.close()
    assert [e["kind"] for e in lines(path)] == ["earlier", "later"]


def test_flow_counts_counts_the_steps_decisions_from_arm_on(log: EventLog) -> None:
    log.add({"kind": "dns", "step": "s", "time": stamp(-9), "verdict": "denied"})  # a probe's
    log.arm("s", T0)
    for event in [
        {"kind": "dns", "time": stamp(-5), "verdict": "denied"},  # a probe's, arriving late
        {"kind": "probe", "time": stamp(1), "verdict": "denied"},
        {"kind": "tcp", "time": stamp(1), "verdict": "allowed", "phase": "open",
         "name": "a.test", "dst_port": 443},
        {"kind": "tcp", "time": stamp(2), "verdict": "allowed", "phase": "close"},
        {"kind": "dns", "time": stamp(2), "verdict": "allowed"},
        {"kind": "dns", "time": stamp(3), "verdict": "denied"},
        {"kind": "udp", "time": stamp(3), "verdict": "denied"},
        {"kind": "icmp", "time": stamp(3), "verdict": "denied"},
        {"kind": "ipv6", "time": stamp(3), "verdict": "denied"},
        {"kind": "tcp", "time": stamp(4), "verdict": "audit", "dst_ip": "198.18.0.9",
         "dst_port": 22},
        {"kind": "tcp", "time": stamp(4), "verdict": "failed"},
        {"kind": "gateway", "time": stamp(4), "phase": "ready"},
        {"kind": "agent", "time": stamp(4), "verdict": "denied"},
    ]:
        log.add({**event, "step": "s"})
    log.add({"kind": "dns", "step": "other", "time": stamp(3), "verdict": "denied"})
    assert log.flow_counts("s") == {"allowed": 2, "audit": 1, "denied": 4, "failed": 1}
    assert log.itemized("s") == 8
    assert log.destinations("s") == ("198.18.0.9:22", "a.test:443")
    assert log.flow_counts("other") == {"allowed": 0, "audit": 0, "denied": 0, "failed": 0}


def test_an_event_exactly_at_since_counts(log: EventLog) -> None:
    log.arm("s", T0)
    log.add({"kind": "tcp", "step": "s", "time": stamp(0), "verdict": "denied"})
    assert log.flow_counts("s")["denied"] == 1


def test_a_raising_listener_is_disabled_and_recorded_and_recording_goes_on(
        log: EventLog) -> None:
    """The live view once raised MarkupError on a name from a step; that must cost the
    display, never the record: the event and every later one are written."""
    def boom(_event: dict[str, Any]) -> None:
        raise ValueError("closing tag '[/x]' doesn't match any open tag")

    seen: list[dict[str, Any]] = []
    log.listeners[:] = [boom, seen.append]
    for i in range(3):
        log.add({"kind": "dns", "step": "s", "time": stamp(i), "name": f"x[/x]y{i}",
                 "verdict": "denied"})
    assert [e["name"] for e in lines(log.path)] == ["x[/x]y0", "x[/x]y1", "x[/x]y2"]
    assert len(seen) == 3 and log.listeners == [seen.append]
    [fault] = log.faults
    assert "boom" in fault and "ValueError" in fault and "disabled" in fault
    assert log.digest("s")[1] == 3


def test_past_the_limit_decisions_are_counted_not_itemized(tmp_path: Path) -> None:
    """A flood: memory and events.jsonl stay bounded, the counts stay exact, and the log
    says where itemizing stopped; the digest is that of the lines written."""
    log = EventLog(tmp_path / "events.jsonl", Masker([]), limit=10)
    log.arm("s", T0)
    for i in range(1000):
        log.add({"kind": "dns", "step": "s", "time": stamp(1), "name": f"n{i}.test",
                 "verdict": "denied"})
    log.add({"kind": "agent", "step": "s", "time": stamp(2), "phase": "stopped"})
    log.close()
    written = lines(log.path)
    assert log.flow_counts("s")["denied"] == 1000 and log.itemized("s") == 10
    assert [e.get("phase") for e in written[10:]] == ["itemizing-stopped", "stopped"]
    assert len(written) == 12
    import hashlib
    assert log.digest("s") == (hashlib.sha256(log.path.read_bytes()).hexdigest(), 12)
    assert not hasattr(log, "events")


def test_is_decision() -> None:
    assert is_decision({"kind": "tcp", "verdict": "denied"})
    assert not is_decision({"kind": "tcp", "verdict": "allowed", "phase": "close"})
    assert not is_decision({"kind": "probe", "verdict": "blocked"})
    assert not is_decision({"kind": "dns"})


def test_parse_time_reads_the_runtime_format() -> None:
    assert parse_time("2024-05-01T12:00:00.000001Z") == T0 + timedelta(microseconds=1)


@pytest.mark.parametrize("secret", ['pa"ss', "c:\\key", "pässwörd"])
def test_secrets_that_json_escapes_are_masked_too(tmp_path: Path, secret: str) -> None:
    events = EventLog(tmp_path / "events.jsonl", Masker([secret]))
    events.add({"kind": "tcp", "reason": f"token {secret} refused"})
    events.close()
    [written] = lines(events.path)
    assert secret not in written["reason"]


def test_a_numeric_secret_does_not_break_the_log(tmp_path: Path) -> None:
    events = EventLog(tmp_path / "events.jsonl", Masker(["4242"]))
    events.add({"kind": "tcp", "verdict": "allowed", "bytes_out": 424242, "dst_port": 4242})
    events.close()
    assert len(lines(events.path)) == 1


# --------------------------------------------------------------------------- write_json


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json(path, {"step": {"status": "preparing"}})
    write_json(path, {"step": {"status": "succeeded"}, "n": [1, 2]})
    assert json.loads(path.read_text()) == {"step": {"status": "succeeded"}, "n": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_write_json_that_fails_keeps_the_previous_record(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
