"""The request checker with bytes alone: every request on a connection is read and judged.

Each attack is the client's bytes in; the test looks at what would reach upstream
(`to_upstream`), what the client gets and what is recorded.
"""

from __future__ import annotations

import pytest

from sbx.sandbox.policy import Policy, parse_rule, with_actions
from sbx.sandbox.runtime.http.exchange import UNTIL_CLOSE, Exchange, Out
from sbx.sandbox.runtime.http.judge import Judge

HOST = "files.example"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def host_level(mode: str = "enforce") -> Policy:
    return Policy(mode=mode, rules=(parse_rule(f"{HOST}:80", "step.yaml:7"),))


def action_level(mode: str = "enforce") -> Policy:
    rule = with_actions(parse_rule(f"{HOST}:80", "step.yaml:9"), ["GET", "HEAD"], ["/simple/**"])
    return Policy(mode=mode, rules=(rule,))


def exchange(policy: Policy, proxy_form: bool = False) -> Exchange:
    return Exchange(Judge(policy, HOST, 80, proxy_form=proxy_form))


def get(path: str = "/simple/", host: str = HOST, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"


def test_allowed_request_is_reframed_by_h11_and_recorded_with_its_response() -> None:
    ex = exchange(action_level())
    out = ex.client_bytes(get("/simple/requests/?x=secret"))
    assert out.to_upstream == (b"GET /simple/requests/?x=secret HTTP/1.1\r\n"
                               b"Host: files.example\r\n\r\n")
    back = ex.upstream_bytes(OK)
    assert back.to_client == OK
    [record] = back.records
    assert (record.verdict.verdict, record.verdict.method, record.verdict.path, record.status,
            record.bytes_in) == ("allowed", "GET", "/simple/requests/", 200, 2)
    assert record.verdict.rule is not None and record.verdict.rule.source == "step.yaml:9"


def test_keep_alive_second_request_to_another_host_is_refused() -> None:
    ex = exchange(host_level())
    first = ex.client_bytes(get("/", HOST))
    assert first.to_upstream.startswith(b"GET / ")
    second = ex.client_bytes(get("/", "denied.example"))
    assert second.to_upstream == b""  # not one byte of it reaches upstream
    assert second.to_client == b"" and not second.close  # waits for the first response
    end = ex.upstream_bytes(OK)
    assert end.to_client.startswith(OK + b"HTTP/1.1 403 ")
    assert end.close
    assert [r.verdict.verdict for r in end.records] == ["allowed", "denied"]
    assert end.records[1].verdict.host == "denied.example"
    assert ex.client_bytes(get("/", HOST)).to_upstream == b""  # nothing after it, ever


def test_pipelined_requests_are_each_judged() -> None:
    ex = exchange(host_level())
    out = ex.client_bytes(get("/", HOST) + get("/", "denied.example") + get("/", HOST))
    assert out.to_upstream.count(b"GET ") == 1
    assert b"denied.example" not in out.to_upstream
    end = ex.upstream_bytes(OK)
    assert b"403 Forbidden" in end.to_client and end.close


def test_explicit_proxy_absolute_uris_must_name_the_allowed_host() -> None:
    ex = exchange(host_level(), proxy_form=True)
    out = ex.client_bytes(b"GET http://files.example/a HTTP/1.1\r\nHost: files.example\r\n"
                          b"Proxy-Authorization: Basic eA==\r\n\r\n"
                          b"GET http://denied.example/ HTTP/1.1\r\nHost: denied.example\r\n\r\n")
    assert out.to_upstream == b"GET /a HTTP/1.1\r\nHost: files.example\r\n\r\n"
    end = ex.upstream_bytes(OK)
    assert end.records[1].verdict.verdict == "denied" and b"403" in end.to_client


def test_proxy_uri_authority_and_host_must_agree() -> None:
    ex = exchange(host_level(), proxy_form=True)
    out = ex.client_bytes(b"GET http://files.example/ HTTP/1.1\r\nHost: denied.example\r\n\r\n")
    assert out.to_upstream == b"" and out.close
    assert "Host 'denied.example'" in out.records[0].verdict.reason


def test_absolute_uri_in_a_tunnel_cannot_name_another_host() -> None:
    ex = exchange(host_level())
    out = ex.client_bytes(b"GET http://denied.example/ HTTP/1.1\r\nHost: files.example\r\n\r\n")
    assert out.to_upstream == b"" and out.close


@pytest.mark.parametrize("request_", [
    b"POST /simple/x HTTP/1.1\r\nHost: files.example\r\nContent-Length: 1\r\n\r\nx",
    get("/upload"),
    get("/simple/../upload"),
    get("/simple/%2e%2e/upload"),
    get("/simple%2f..%2fupload"),
    get("//simple/x"),
    get("/simple;x/../upload"),
])
def test_method_and_path_outside_the_rule_are_denied(request_: bytes) -> None:
    ex = exchange(action_level())
    out = ex.client_bytes(request_)
    assert out.to_upstream == b""
    assert out.close and out.to_client.startswith(b"HTTP/1.1 403 ")
    assert out.records[0].verdict.verdict == "denied"


@pytest.mark.parametrize(("request_", "words"), [
    (b"POST /simple/ HTTP/1.1\r\nHost: files.example\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /upload HTTP/1.1\r\n", "Transfer-Encoding"),
    (b"POST /simple/ HTTP/1.1\r\nHost: files.example\r\nContent-Length: 5\r\n"
     b"Content-Length: 5\r\n\r\nhello", "duplicate Content-Length"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2"),
    (get("/simple/", extra=b"Upgrade: h2c\r\nConnection: Upgrade\r\n"
         b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"), "Upgrade"),
    (b"GET /simple/ HTTP/1.1\nHost: files.example\n\n", "bare LF"),
    (b"GET /simple/ HTTP/1.1\r\nHost: files.example\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
    (b"CONNECT denied.example:443 HTTP/1.1\r\nHost: denied.example:443\r\n\r\n", ""),
    (b"\x00\x01garbage\r\n\r\n", ""),
])
def test_smuggling_and_h2c_are_refused_even_in_audit_mode(request_: bytes, words: str) -> None:
    for policy in (host_level(), host_level("audit")):
        ex = exchange(policy)
        out = ex.client_bytes(request_)
        assert out.to_upstream == b"", out
        assert out.close and out.records[0].verdict.verdict == "denied"
        assert words in out.records[0].verdict.reason


def test_audit_mode_relays_what_it_would_deny_and_records_it() -> None:
    ex = exchange(action_level("audit"))
    out = ex.client_bytes(b"POST /upload HTTP/1.1\r\nHost: files.example\r\nContent-Length: 2"
                          b"\r\n\r\nhi")
    assert out.to_upstream.endswith(b"\r\n\r\nhi")
    back = ex.upstream_bytes(OK)
    assert back.records[0].verdict.verdict == "audit" and back.records[0].bytes_out == 2


def test_chunked_body_is_reframed_and_a_request_hidden_in_it_is_not_a_request() -> None:
    ex = exchange(host_level())
    out = ex.client_bytes(b"POST / HTTP/1.1\r\nHost: files.example\r\nTransfer-Encoding: chunked"
                          b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert out.to_upstream.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    ex.upstream_bytes(OK)
    out = ex.client_bytes(get("/", "denied.example"))
    assert out.close and out.to_upstream == b""


def test_a_request_arriving_byte_by_byte_is_read_whole() -> None:
    ex = exchange(action_level())
    outs: list[Out] = [ex.client_bytes(bytes([b])) for b in get("/simple/x")]
    assert b"".join(o.to_upstream for o in outs).startswith(b"GET /simple/x HTTP/1.1")


def test_head_response_without_body_does_not_desynchronise_the_next() -> None:
    ex = exchange(action_level())
    ex.client_bytes(b"HEAD /simple/ HTTP/1.1\r\nHost: files.example\r\n\r\n" + get("/simple/b"))
    out = ex.upstream_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + OK)
    assert [r.status for r in out.records] == [200, 200]
    assert [r.verdict.method for r in out.records] == ["HEAD", "GET"]


def test_websocket_upgrade_switches_to_raw_relay_after_101() -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/ws", extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n"))
    out = ex.upstream_bytes(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\n\r\n")
    assert out.raw and out.records[0].status == 101


def test_bodies_of_known_length_are_counted_across_reads_and_pipelined_responses() -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/a") + get("/b") + get("/c", extra=b"Connection: close\r\n"))
    body = b"x" * 100_000
    stream = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + body
              + b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
              + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    records = []
    relayed = b""
    for i in range(0, len(stream), 7001):  # reads that cut heads and bodies anywhere
        out = ex.upstream_bytes(stream[i:i + 7001])
        relayed += out.to_client
        records += out.records
    assert relayed == stream
    assert [(r.verdict.path, r.status, r.bytes_in) for r in records] == [
        ("/a", 200, 100_000), ("/b", 404, 3), ("/c", 200, 2)]


def test_a_body_passed_by_the_relay_is_counted_and_the_next_request_waits_for_it() -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/a"))
    out = ex.upstream_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n1234")
    assert ex.body_left == 6 and out.records == []
    refused = ex.client_bytes(get("/", "denied.example"))
    assert refused.to_client == b""  # the 403 waits until the body before it is through
    done = ex.body_passed(6)
    assert [r.bytes_in for r in done.records] == [10, 0]
    assert done.to_client.startswith(b"HTTP/1.1 403 ") and done.close


def test_a_body_until_close_is_counted_to_the_end_and_recorded_then() -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/a"))
    head = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
    out = ex.upstream_bytes(head + b"x" * 1000)
    assert out.to_client == head + b"x" * 1000 and out.records == []
    assert ex.passing == UNTIL_CLOSE  # the relay may move the rest without showing it here
    # Bytes that look like a response are body here, as h11 would read them.
    more = ex.upstream_bytes(OK)
    assert more.to_client == OK and more.records == []
    assert ex.body_passed(5000).records == []
    end = ex.upstream_bytes(b"")
    [record] = end.records
    assert (record.verdict.path, record.status, record.bytes_in) == ("/a", 200,
                                                                     1000 + len(OK) + 5000)
    assert end.close


def test_a_refused_request_after_a_body_until_close_is_answered_after_it() -> None:
    ex = exchange(host_level())
    out = ex.client_bytes(get("/a") + get("/", "denied.example"))
    assert out.to_upstream.count(b"GET ") == 1
    first = ex.upstream_bytes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody")
    assert first.to_client.endswith(b"body") and b"403" not in first.to_client
    ex.body_passed(10)
    end = ex.upstream_bytes(b"")
    assert [(r.verdict.verdict, r.bytes_in) for r in end.records] == [("allowed", 14),
                                                                      ("denied", 0)]
    assert end.to_client.startswith(b"HTTP/1.1 403 ")


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_responses_without_a_body_are_not_read_until_close(method: str, status: int) -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/a").replace(b"GET", method.encode(), 1) + get("/b"))
    out = ex.upstream_bytes(f"HTTP/1.1 {status} X\r\n\r\n".encode() + OK)
    assert ex.passing == 0
    assert [(r.verdict.path, r.status, r.bytes_in) for r in out.records] == [
        ("/a", status, 0), ("/b", 200, 2)]


def test_a_chunked_response_is_still_parsed_not_passed() -> None:
    ex = exchange(host_level())
    ex.client_bytes(get("/a") + get("/b"))
    out = ex.upstream_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    assert ex.passing == 0 and out.records == []
    out = ex.upstream_bytes(b"0\r\n\r\n" + OK)
    assert [(r.verdict.path, r.bytes_in) for r in out.records] == [("/a", 2), ("/b", 2)]


def test_a_request_pipelined_behind_a_body_until_close_is_recorded_as_h11_left_it() -> None:
    # Upstream closes to end the first body: the second request never gets its response,
    # recorded as it was when h11 read the body (502, then the unreadable response).
    ex = exchange(host_level())
    ex.client_bytes(get("/a") + get("/b"))
    ex.upstream_bytes(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert ex.passing == UNTIL_CLOSE
    ex.upstream_bytes(b"def" + OK)
    end = ex.upstream_bytes(b"")
    assert [(r.verdict.verdict, r.verdict.path, r.status, r.bytes_in) for r in end.records] == [
        ("allowed", "/a", 200, 6 + len(OK)), ("allowed", "/b", 502, 0), ("denied", "", None, 0)]
    assert end.close
