"""`--alert-webhook`: violations POSTed to a real HTTP server on loopback (no Docker).

The server is `http.server` on 127.0.0.1 with a scripted answer per request: a status,
or a hang (the connection is accepted and never answered). Elapsed wall time is
measured only to check that the run is never held up past the close budget.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sbx.errors import InputError
from sbx.pipelines.report.alerts import (
    AlertStats,
    WebhookAlerter,
    WebhookOptions,
    alert_text,
    check_webhook_url,
    is_violation,
)
from sbx.pipelines.run.records import EventLog, Masker

RUN_ID = "20261122T101500Z-1a2b3c4d"
HANG = -1  # a scripted "status" meaning: accept the request and never answer
SLACK = 2.0  # generous: the bound is what is checked, not the speed of this machine

DENIED_TCP: dict[str, Any] = {
    "time": "2026-11-22T10:15:03.000000Z", "step": "build", "kind": "tcp",
    "name": "other.sbx.test", "dst_ip": "198.18.0.3", "dst_port": 443, "via": "relay",
    "verdict": "denied", "reason": "no rule allows other.sbx.test:443", "violation": True,
    "source": "gateway"}
AUDIT_DNS: dict[str, Any] = {
    "time": "2026-11-22T10:15:04.000000Z", "step": "build", "kind": "dns",
    "name": "other.sbx.test", "qtype": "A", "verdict": "audit", "violation": True,
    "answers": ["198.18.0.3"], "source": "gateway"}
PROBE_REACHED: dict[str, Any] = {
    "time": "2026-11-22T10:15:01.000000Z", "step": "build", "kind": "probe",
    "probe": "egress-raw-ip", "protocol": "tcp", "dst": "198.18.0.1:80",
    "verdict": "reached", "reason": "got data back", "violation": True, "source": "sbx"}
GATEWAY_CRASHED: dict[str, Any] = {
    "time": "2026-11-22T10:15:05.000000Z", "step": "build", "kind": "gateway",
    "phase": "crashed", "reason": "the gateway exited during the step (code 137)",
    "source": "sbx"}
VIOLATIONS = [DENIED_TCP, AUDIT_DNS, PROBE_REACHED, GATEWAY_CRASHED]

ALLOWED_OPEN: dict[str, Any] = {
    "time": "2026-11-22T10:15:02.000000Z", "step": "build", "kind": "tcp", "phase": "open",
    "name": "web.sbx.test", "dst_ip": "198.18.0.2", "dst_port": 443, "verdict": "allowed",
    "reason": "matched", "rule": "web.sbx.test:443", "rule_source": "step.yaml:9"}
AUDIT_OPEN = {**AUDIT_DNS, "kind": "tcp", "phase": "open", "dst_port": 443}
NOT_VIOLATIONS: list[dict[str, Any]] = [
    ALLOWED_OPEN,
    {**ALLOWED_OPEN, "phase": "close", "bytes_out": 10, "bytes_in": 20},
    # A close event repeats its flow's fields, violation included: still not a second alert.
    {**AUDIT_OPEN, "phase": "close", "bytes_out": 1, "bytes_in": 2},
    {"time": "2026-11-22T10:15:00.000000Z", "step": "build", "kind": "gateway",
     "phase": "ready", "source": "gateway"},
    {"time": "2026-11-22T10:15:00.100000Z", "step": "build", "kind": "agent",
     "phase": "ready", "caps": {"CapEff": "0"}, "source": "agent"},
    {**PROBE_REACHED, "verdict": "blocked", "violation": None},
    {**DENIED_TCP, "verdict": "failed", "violation": None, "reason": "no answer"},
    {**ALLOWED_OPEN, "kind": "dns", "phase": None, "qtype": "A"},
]


# --------------------------------------------------------------------------- the webhook


class Webhook:
    """A loopback HTTP server that records POSTs and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: list[int] = []  # one status per request; 200 once it runs out
        self.release = threading.Event()  # frees hung requests at teardown
        self.lock = threading.Lock()
        self.received = threading.Condition(self.lock)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with hook.lock:
                    hook.requests.append(json.loads(body))
                    hook.headers.append({k.lower(): v for k, v in self.headers.items()})
                    status = hook.script.pop(0) if hook.script else 200
                    hook.received.notify_all()
                if status == HANG:
                    hook.release.wait(30)
                    self.close_connection = True
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        with self.received:
            self.received.wait_for(lambda: len(self.requests) >= count, timeout)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    # urllib honours proxy variables; loopback must never be sent to a proxy.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hook = Webhook()
    yield hook
    hook.stop()


def fast(url: str, **overrides: Any) -> WebhookOptions:
    """Options with short pauses, so retries take milliseconds."""
    values: dict[str, Any] = {"timeout": 2.0, "retries": 3, "backoff": 0.01,
                              "close_budget": 5.0}
    values.update(overrides)
    return WebhookOptions(url=url, **values)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- what is an alert


@pytest.mark.parametrize("event", VIOLATIONS, ids=lambda e: f"{e['kind']}-{e.get('verdict')}")
def test_violations_are_recognised(event: dict[str, Any]) -> None:
    assert is_violation(event)


@pytest.mark.parametrize("event", NOT_VIOLATIONS,
                         ids=lambda e: f"{e['kind']}-{e.get('verdict')}-{e.get('phase')}")
def test_other_events_are_not_violations(event: dict[str, Any]) -> None:
    assert not is_violation(event)


def test_text_is_one_escaped_line_naming_everything() -> None:
    event = {**DENIED_TCP, "name": "<!channel>.evil\nsecond line", "rule": "a&b:443"}
    text = alert_text(RUN_ID, event)
    assert "\n" not in text
    assert "<" not in text and ">" not in text  # no Slack mention or link can be smuggled
    assert "&lt;!channel&gt;" in text and "a&amp;b:443" in text
    for part in (RUN_ID, "build", "denied", "tcp", ":443", "no rule allows"):
        assert part in text


# --------------------------------------------------------------------------- delivery


def test_each_violation_arrives_once_with_text_and_event(webhook: Webhook) -> None:
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    for event in [*NOT_VIOLATIONS[:3], *VIOLATIONS, *NOT_VIOLATIONS[3:]]:
        alerter(event)
    stats = alerter.close()

    assert stats == AlertStats(sent=4, failed=0, dropped=0)
    assert [r["event"] for r in webhook.requests] == VIOLATIONS  # in order, once each
    for body, headers, event in zip(webhook.requests, webhook.headers, VIOLATIONS,
                                    strict=True):
        assert headers["content-type"] == "application/json"
        assert body["run_id"] == RUN_ID and body["step"] == "build"
        assert body["kind"] == event["kind"]
        assert isinstance(body["text"], str) and RUN_ID in body["text"]
    assert "denied tcp other.sbx.test:443" in webhook.requests[0]["text"]
    assert "reached probe 198.18.0.1:80" in webhook.requests[2]["text"]
    assert "crashed gateway" in webhook.requests[3]["text"]


def test_alerts_from_the_event_log_carry_no_secret(webhook: Webhook, tmp_path: Path) -> None:
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    log = EventLog(tmp_path / "events.jsonl", Masker(["hunter2"]), listeners=[alerter])
    log.add({**DENIED_TCP, "kind": "dns", "name": "hunter2.exfil.test", "dst_port": None,
             "reason": "no rule allows this name"})
    log.close()
    assert alerter.close().sent == 1
    raw = json.dumps(webhook.requests)
    assert "hunter2" not in raw and "***.exfil.test" in raw


def test_probe_phase_denials_are_held_back_when_the_runner_says_so(webhook: Webhook) -> None:
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    alerter.step_probing("build")
    alerter(DENIED_TCP)  # provoked by the probes: expected, not an alert
    alerter(PROBE_REACHED)  # a probe that got through always is
    alerter({**DENIED_TCP, "step": "test"})  # another step is not probing
    alerter.arm("build")
    alerter(AUDIT_DNS)
    assert alerter.close().sent == 3
    assert [(r["step"], r["kind"]) for r in webhook.requests] == [
        ("build", "probe"), ("test", "tcp"), ("build", "dns")]


def test_5xx_is_retried_until_it_gets_through(webhook: Webhook) -> None:
    webhook.script = [503, 503]
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    alerter(DENIED_TCP)
    assert alerter.close() == AlertStats(sent=1, failed=0, dropped=0)
    assert len(webhook.requests) == 3
    assert webhook.requests[0] == webhook.requests[2]  # the same message each time


def test_429_is_retried(webhook: Webhook) -> None:
    webhook.script = [429]
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    alerter(DENIED_TCP)
    assert alerter.close().sent == 1
    assert len(webhook.requests) == 2


def test_400_is_not_retried(webhook: Webhook) -> None:
    webhook.script = [400, 400, 400]
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    alerter(DENIED_TCP)
    stats = alerter.close()
    assert (stats.sent, stats.failed, stats.dropped) == (0, 1, 0)
    assert stats.last_error == "HTTP 400"
    assert len(webhook.requests) == 1


def test_a_redirect_is_not_followed(webhook: Webhook) -> None:
    webhook.script = [307]
    alerter = WebhookAlerter(fast(webhook.url), RUN_ID)
    alerter(DENIED_TCP)
    assert alerter.close().failed == 1
    assert len(webhook.requests) == 1


def test_retries_are_bounded(webhook: Webhook) -> None:
    webhook.script = [500] * 10
    alerter = WebhookAlerter(fast(webhook.url, retries=2), RUN_ID)
    alerter(DENIED_TCP)
    alerter(AUDIT_DNS)
    stats = alerter.close()
    assert (stats.sent, stats.failed, stats.last_error) == (0, 2, "HTTP 500")
    assert len(webhook.requests) == 6  # 1 + 2 retries, for each of the two


def test_a_hanging_webhook_holds_close_only_for_its_budget(webhook: Webhook) -> None:
    webhook.script = [HANG] * 10
    # The per-attempt timeout is longer than the budget: the budget must win.
    alerter = WebhookAlerter(fast(webhook.url, timeout=30.0, close_budget=1.0), RUN_ID)
    for event in (DENIED_TCP, AUDIT_DNS, PROBE_REACHED):
        alerter(event)
    webhook.wait_for(1)
    start = time.monotonic()
    stats = alerter.close()
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + SLACK
    assert stats.sent == 0
    assert stats.failed == 1  # the one on the wire when time ran out
    assert stats.dropped == 2  # never attempted
    assert stats.last_error is not None
    assert alerter.close() is stats  # idempotent, and immediate


def test_an_unreachable_webhook_holds_close_only_for_its_budget() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    alerter = WebhookAlerter(fast(url, retries=50, backoff=0.05, close_budget=0.5), RUN_ID)
    for event in VIOLATIONS:
        alerter(event)
    start = time.monotonic()
    stats = alerter.close()
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + SLACK
    assert stats.sent == 0
    assert stats.failed >= 1
    assert stats.failed + stats.dropped == len(VIOLATIONS)
    assert stats.last_error is not None and "127.0.0.1" not in stats.last_error


def test_a_flood_never_blocks_the_run_and_drops_are_counted() -> None:
    gate = threading.Event()
    calls: list[bytes] = []

    def stuck_post(url: str, body: bytes, timeout: float) -> int:
        calls.append(body)
        gate.wait(10)  # the webhook takes its time with the first one
        return 200

    alerter = WebhookAlerter(WebhookOptions(url="https://hooks.example.com/x", max_queue=100,
                                            close_budget=1.0), RUN_ID, post=stuck_post)
    start = time.monotonic()
    for i in range(5000):
        alerter({**DENIED_TCP, "dst_port": i})
    elapsed = time.monotonic() - start
    assert elapsed < SLACK  # put-or-drop only: no network on the run's thread
    gate.set()
    stats = alerter.close()
    assert stats.sent + stats.failed + stats.dropped == 5000
    assert stats.dropped >= 5000 - 100 - 1  # at most the queue plus the one in flight
    assert stats.sent >= 1


def test_a_post_that_raises_is_a_failure_not_a_dead_sender() -> None:
    answers: list[int | Exception] = [RuntimeError("boom"), 200]

    def flaky(url: str, body: bytes, timeout: float) -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    alerter = WebhookAlerter(WebhookOptions(url="http://hook.test/x"), RUN_ID, post=flaky)
    alerter(DENIED_TCP)
    alerter(AUDIT_DNS)
    stats = alerter.close()
    assert (stats.sent, stats.failed, stats.last_error) == (1, 1, "RuntimeError")


def test_a_listener_never_raises_on_odd_events() -> None:
    alerter = WebhookAlerter(WebhookOptions(url="http://hook.test/x"), RUN_ID,
                             post=lambda url, body, timeout: 200)
    alerter({})
    alerter({"kind": "tcp", "verdict": "denied", "violation": True, "dst_port": object()})
    stats = alerter.close()
    assert stats.sent + stats.failed == 1


def test_close_without_alerts_is_immediate() -> None:
    alerter = WebhookAlerter(WebhookOptions(url="http://hook.test/x"), RUN_ID)
    start = time.monotonic()
    assert alerter.close() == AlertStats(sent=0, failed=0, dropped=0)
    assert time.monotonic() - start < SLACK


# --------------------------------------------------------------------------- the flag


@pytest.mark.parametrize("url", ["http://hooks.example.com/x", "https://hooks.slack.com/T/B/X",
                                 "HTTPS://127.0.0.1:8443/hook?token=abc", "http://[::1]:80/"])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_webhook_url(url) == url


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "http://", "", "file:///etc/passwd",
                                 "hooks.example.com/x", "http://host:99999/", "http://[::1/",
                                 "https://user:pw@hooks.example.com/", "http://host/\nx",
                                 "javascript:alert(1)"])
def test_bad_urls_are_input_errors_naming_the_flag(url: str) -> None:
    with pytest.raises(InputError) as info:
        check_webhook_url(url)
    message = info.value.diagnostics()
    assert message.startswith("--alert-webhook: ")
    assert "\n" not in message and "http:// or https://" in message
    if "pw" in url:
        assert "pw" not in message  # the URL (and any token in it) is never repeated


def test_the_alerter_refuses_a_bad_url() -> None:
    with pytest.raises(InputError):
        WebhookAlerter(WebhookOptions(url="ftp://x"), RUN_ID)
