"""`--alert-webhook URL`: every egress violation POSTed to a webhook as it happens.

`WebhookAlerter` is an `EventLog` listener. It picks violations out of the event
stream (`is_violation`) and hands them to one background thread that POSTs each as
JSON with a Slack-compatible `text` line plus structured fields. The run is never
held up by the webhook: `__call__` only puts onto a bounded queue (a full queue
drops and counts), and `close()` waits at most `close_budget` seconds in total.

Events reach listeners already masked; nothing here adds any value that was not in
the event, and the webhook URL itself (which often carries a token, as Slack's do)
is never written into an error, a log line or the stats.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sbx import __version__
from sbx.errors import InputError
from sbx.pipelines.run.records import is_decision
from sbx.shown import plain

log = logging.getLogger(__name__)

Post = Callable[[str, bytes, float], int]
"""Sends one body to a URL within a timeout and returns the HTTP status code.

Raises `OSError` (or `http.client.HTTPException`) when no status came back.
"""

_FLAG = "--alert-webhook"
_EXAMPLE = "https://hooks.example.com/services/T000/B000/XXXX"
# Slack reads <...> as links and mentions (<!channel>) and & as an entity; a step can
# choose the text of a DNS name or a Host header, so these are escaped in `text`.
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Line breaks and other controls become a space (one line); what is left that a reader
# would not see (bidi overrides, zero-width characters) is spelled out by `plain`.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_FIELD_MAX = 200  # one field of the text line; the full event is in the structured part


def check_webhook_url(url: str) -> str:
    """Return `url` if it is an absolute http(s) URL with a host, else raise InputError.

    The message names the flag and the fix, never the URL: a webhook URL is a secret.
    """

    def refuse(problem: str) -> InputError:
        return InputError(f"{_FLAG}: {problem}; give an http:// or https:// URL "
                          f"such as {_EXAMPLE}")

    if not url or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise refuse("the URL is empty or contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # a bad port raises here, not at the first violation
    except ValueError:
        raise refuse("the URL cannot be parsed (check the host and port)") from None
    if not parts.scheme:
        raise refuse("the URL has no scheme")
    if parts.scheme.lower() not in ("http", "https"):
        # urlsplit accepts only letters, digits and +-. in a scheme: safe to repeat.
        raise refuse(f"scheme {parts.scheme.lower()}:// is not supported")
    if not parts.hostname:
        raise refuse("the URL has no host")
    if parts.username is not None or parts.password is not None:
        # urllib would not send them as Basic auth; put the token in the path or query.
        raise refuse("user:password@ in the URL is not supported")
    if port == 0:
        raise refuse("port 0 is not a valid port")
    return url


def is_violation(event: dict[str, Any]) -> bool:
    """Whether an event is worth an alert.

    A decision that denied or audited a flow (`violation: true`), a probe that got
    through (the sandbox could not be proven), or the gateway or agent dying mid-step.
    A `phase: close` event repeats its flow's verdict but is not a decision, so it is
    never a second alert for the same flow.
    """
    if is_decision(event):
        return event.get("verdict") in ("denied", "audit") or event.get("violation") is True
    if event.get("kind") == "probe":
        return event.get("verdict") == "reached"
    return event.get("phase") == "crashed"


def destination(event: dict[str, Any]) -> str:
    """Where an event went, as `name:port`, `ip:port`, `[v6]:port` or `-`."""
    if event.get("kind") == "probe":
        return str(event.get("dst") or "-")
    host = event.get("name") or event.get("dst_ip")
    if not host:
        return "-"
    host = str(host)
    port = event.get("dst_port")
    if port in (None, ""):
        return host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _field(value: Any) -> str:
    text = plain(_CONTROL.sub(" ", str(value)).strip(), limit=10 * _FIELD_MAX)
    return text if len(text) <= _FIELD_MAX else text[: _FIELD_MAX - 1] + "…"


def alert_text(run_id: str, event: dict[str, Any]) -> str:
    """One human line for a violation: run, step, verdict, kind, destination, reason, rule."""
    verdict = event.get("verdict") or event.get("phase") or "?"
    head = (f"sbx run {_field(run_id)} step {_field(event.get('step') or '?')}: "
            f"{_field(verdict)} {_field(event.get('kind') or '?')}")
    where = destination(event)
    parts = [head if where == "-" else f"{head} {_field(where)}"]
    if event.get("kind") == "probe" and event.get("probe"):
        parts.append(f"probe {_field(event['probe'])}")
    if event.get("reason"):
        parts.append(f"reason: {_field(event['reason'])}")
    elif verdict == "audit":  # audited DNS answers carry no reason of their own
        parts.append("reason: let through by audit mode, enforce mode would deny it")
    if is_decision(event):  # only a decision has a rule, or a missing one worth saying
        parts.append(f"rule: {_field(event['rule'])}" if event.get("rule") else "rule: none")
    return " — ".join(parts).translate(_SLACK_ESCAPES)


def alert_payload(run_id: str, event: dict[str, Any]) -> bytes:
    """The JSON body POSTed for one violation (Slack reads `text`, tools read the rest)."""
    body = {
        "text": alert_text(run_id, event),
        "run_id": run_id,
        "step": event.get("step"),
        "verdict": event.get("verdict") or event.get("phase"),
        "kind": event.get("kind"),
        "destination": destination(event),
        "event": event,
        "sbx_version": __version__,
    }
    # default=str: an odd value in an event must cost a string, not the alert.
    return json.dumps(body, sort_keys=True, default=str).encode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an HTTPError: re-POSTing the alert elsewhere is not ours to decide."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        return None


def urllib_post(url: str, body: bytes, timeout: float) -> int:
    """POST `body` as application/json with urllib; return the status code.

    `timeout` bounds each socket operation (connect, each read), as urllib does.
    """
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"sbx/{__version__}"})
    # Built per call so that proxy variables (HTTPS_PROXY, NO_PROXY) are read as they are now.
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:  # 3xx, 4xx and 5xx arrive as exceptions
        exc.close()
        return int(exc.code)


@dataclass(frozen=True)
class WebhookOptions:
    """How to deliver alerts.

    `timeout` bounds each attempt's socket operations; `retries` is the number of
    attempts after the first, `backoff` the first pause between attempts (doubling);
    `close_budget` the most `close()` may take; `max_queue` the violations held while
    the webhook is slow (more are dropped and counted).
    """

    url: str
    timeout: float = 3.0
    retries: int = 3
    backoff: float = 0.5
    close_budget: float = 5.0
    max_queue: int = 1000

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if self.retries < 0 or self.backoff < 0 or self.close_budget < 0:
            raise ValueError("retries, backoff and close_budget must not be negative")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")


@dataclass(frozen=True)
class AlertStats:
    """What became of the violations: delivered, given up on, or never attempted.

    `failed`: every attempt failed, the webhook refused it (4xx other than 429), or
    it was still being sent when the close budget ran out. `dropped`: the queue was
    full, or it was still queued when the budget ran out. `last_error` says why the
    last failure happened (never the URL).
    """

    sent: int
    failed: int
    dropped: int
    last_error: str | None = None


def _is_retryable(status: int) -> bool:
    return status == 429 or status >= 500


def _describe(exc: BaseException) -> str:
    # Not str(exc) alone: some exceptions repeat the URL they were given.
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, OSError) and reason.strerror:
        return f"{type(reason).__name__}: {reason.strerror}"
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


class WebhookAlerter:
    """An `EventLog` listener that POSTs every violation to a webhook.

    One daemon thread sends, in order, with retries on connection errors, timeouts,
    5xx and 429 (exponential backoff); any other status is final. Call `close()` once
    the run is over: it returns the stats after at most `close_budget` seconds.

    Probe-phase denials are expected (the probes provoke them): a runner that calls
    `step_probing(step)` before a step's probes and `arm(step)` when its command starts
    (as it arms `LiveView`) keeps them out. A step never marked as probing has every
    violation sent: an extra alert is better than a missed one.
    """

    def __init__(self, options: WebhookOptions, run_id: str, *,
                 post: Post | None = None) -> None:
        check_webhook_url(options.url)
        self.options = options
        self.run_id = run_id
        self._post: Post = post or urllib_post
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=options.max_queue)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._deadline: float | None = None
        self._accepted = 0
        self._sent = 0
        self._failed = 0
        self._dropped = 0
        self._inflight = False
        self._frozen = False
        self._stats: AlertStats | None = None
        self._last_error: str | None = None
        self._probing: set[str] = set()
        self._thread = threading.Thread(target=self._worker, name="sbx-alert-webhook",
                                        daemon=True)
        self._thread.start()

    # -- the listener side: never blocks, never raises --------------------------------------
    def __call__(self, event: dict[str, Any]) -> None:
        """Queue `event` if it is a violation; drop and count it if the queue is full."""
        try:
            if not is_violation(event):
                return
            with self._lock:
                if is_decision(event) and event.get("step") in self._probing:
                    return
                if self._frozen:
                    self._dropped += 1
                    return
                try:
                    self._queue.put_nowait(dict(event))
                except queue.Full:
                    self._dropped += 1
                    return
                self._accepted += 1
        except Exception:  # a listener that raised would break the run's event log
            log.debug("alert listener failed", exc_info=True)

    def step_probing(self, step: str) -> None:
        """The step's probes start: its decisions are the probes' own, not alerts."""
        with self._lock:
            self._probing.add(step)

    def arm(self, step: str) -> None:
        """The step's command starts: from now on its decisions are alerts."""
        with self._lock:
            self._probing.discard(step)

    def close(self) -> AlertStats:
        """Send what is queued within `close_budget` seconds, then give up on the rest.

        Idempotent: a second call returns the same stats at once.
        """
        with self._lock:
            if self._stats is not None:
                return self._stats
            self._deadline = time.monotonic() + self.options.close_budget
            deadline = self._deadline
        self._closing.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._lock:
            # From here the worker's late results are not counted: the stats are final.
            self._frozen = True
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            unresolved = self._accepted - self._sent - self._failed
            abandoned = 1 if self._inflight and unresolved > 0 else 0
            if abandoned:
                self._last_error = "the close budget ran out while sending"
            self._stats = AlertStats(sent=self._sent, failed=self._failed + abandoned,
                                     dropped=self._dropped + unresolved - abandoned,
                                     last_error=self._last_error)
            return self._stats

    # -- the sending thread -----------------------------------------------------------------
    def _remaining(self) -> float | None:
        """Seconds left before the close deadline, or None while the run goes on."""
        deadline = self._deadline
        return None if deadline is None else deadline - time.monotonic()

    def _pause(self, seconds: float) -> bool:
        """Sleep between attempts; False if the close deadline comes first."""
        end = time.monotonic() + seconds
        while True:
            remaining = self._remaining()
            left = end - time.monotonic()
            if remaining is not None and remaining <= left:
                return False
            if left <= 0:
                return True
            # Woken early by close(), which may set a deadline shorter than the pause.
            self._closing.wait(left if remaining is None else min(left, remaining))

    def _stats_final(self) -> bool:
        # A method, not the attribute: close() flips it from another thread.
        return self._frozen

    def _worker(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            with self._lock:
                remaining = self._remaining()
                if self._frozen or (remaining is not None and remaining <= 0):
                    # Out of time: close() counts what was never attempted as dropped.
                    return
                self._inflight = True
            try:
                ok, error = self._deliver(event)
            except Exception as exc:  # the thread must outlive any one alert
                ok, error = False, _describe(exc)
            with self._lock:
                self._inflight = False
                if self._stats_final():  # close() gave up on this one and reported it
                    return
                if ok:
                    self._sent += 1
                else:
                    self._failed += 1
                    self._last_error = error
                    log.warning("sbx: alert webhook: %s", error)

    def _deliver(self, event: dict[str, Any]) -> tuple[bool, str | None]:
        body = alert_payload(self.run_id, event)
        error: str | None = None
        for attempt in range(self.options.retries + 1):
            if attempt and not self._pause(self.options.backoff * 2 ** (attempt - 1)):
                return False, error
            timeout = self.options.timeout
            remaining = self._remaining()
            if remaining is not None:
                if remaining <= 0:
                    return False, error or "the close budget ran out"
                timeout = min(timeout, remaining)
            try:
                status = self._post(self.options.url, body, timeout)
            except (OSError, http.client.HTTPException) as exc:
                error = _describe(exc)
                continue
            if 200 <= status < 300:
                return True, None
            error = f"HTTP {status}"
            if not _is_retryable(status):
                return False, error
        return False, error
