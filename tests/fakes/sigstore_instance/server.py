"""Minimal JSON-over-HTTP plumbing: one ThreadingHTTPServer per service, on 127.0.0.1.

Every service is a plain function from `Request` to `Response`; an exception in a
handler becomes an HTTP 500 with a JSON body, so a client never waits on a dead
request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """An HTTP request as a service sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises `HTTPError` 400 when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HTTPError(400, f"request body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, body bytes, content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


class HTTPError(Exception):
    """Raised by a handler to answer with an error status and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A `Response` whose body is `obj` as JSON."""
    return Response(status, json.dumps(obj).encode(), "application/json", dict(headers or {}))


def error_response(status: int, message: str) -> Response:
    """The `{"code": ..., "message": ...}` error body Fulcio and Rekor both use."""
    return json_response(status, {"code": status, "message": message})


Handler = Callable[[Request], Response]


class LoopbackServer:
    """One HTTP service on 127.0.0.1 with an ephemeral port, served from a daemon thread."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self._handler = handler
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (only once started)."""
        if self._httpd is None:
            raise RuntimeError(f"{self.name} server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Bind 127.0.0.1:0 and serve until `stop`."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} server already started")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_request_handler(self._handler))
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-sigstore-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _make_request_handler(handler: Handler) -> type[BaseHTTPRequestHandler]:
    class _RequestHandler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so no idle keep-alive threads linger.
        protocol_version = "HTTP/1.0"
        server_version = "fake-sigstore"

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(error_response(413, "request body too large"))
                return
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message)
            except Exception as exc:  # a fake must answer, never hang the client
                response = error_response(500, f"{type(exc).__name__}: {exc}")
            self._send(response)

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = _dispatch
        do_POST = _dispatch
        do_HEAD = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _RequestHandler
