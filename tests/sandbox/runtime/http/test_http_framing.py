"""Request heads that parsers read two ways are refused before h11 reads them."""

from __future__ import annotations

import pytest

from sbx.sandbox.runtime.http.framing import Refused, head_length


def test_a_plain_head_is_measured() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert head_length(head + b"GET /next") == len(head)
    assert head_length(b"GET / HTTP/1.1\r\nHost: a\r\n") is None


@pytest.mark.parametrize(("data", "words"), [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Content-Length and Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\nabc",
     "duplicate Content-Length"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", "obs-fold"),
    (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare LF or CR"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40000, "longer than"),
])
def test_ambiguous_heads_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(Refused, match=words):
        head_length(data)
