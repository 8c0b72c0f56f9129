"""Destination names from a connection's first bytes (no Docker, no network).

ClientHellos are real ones, produced by the standard library's TLS client over
memory BIOs, so the parser is checked against what tools actually send.
"""

from __future__ import annotations

import functools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbx.sandbox.runtime.sniff import MAX_HEAD, destination_name, http_host, needs_more, tls_sni

LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters


@functools.cache
def client_hello(name: str | None, maximum: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a TLS client connecting to `name` (None: no SNI)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    data = outgoing.read()
    assert data[:1] == b"\x16", "not a TLS handshake record"
    return data


NAMES = ["example.com", "registry.npmjs.org", "a.b", "x-1_y.example.net", LONG_NAME]
VERSIONS = [None, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("maximum", VERSIONS, ids=["default", "tls1.2", "tls1.3"])
@pytest.mark.parametrize("name", NAMES, ids=lambda n: n[:20])
def test_sni_of_a_real_client_hello_is_the_server_name(
    name: str, maximum: ssl.TLSVersion | None
) -> None:
    hello = client_hello(name, maximum)
    assert tls_sni(hello) == name
    assert destination_name(hello) == (name, "sni")
    assert not needs_more(hello)


def test_long_name_makes_a_longer_hello_and_is_still_found() -> None:
    assert len(LONG_NAME) == 253
    assert len(client_hello(LONG_NAME)) > len(client_hello("a.b"))
    assert tls_sni(client_hello(LONG_NAME)) == LONG_NAME


def test_international_name_is_seen_as_its_punycode() -> None:
    """Python sends IDNA names as punycode; the policy compares punycode too."""
    assert tls_sni(client_hello("bücher.example")) == "xn--bcher-kva.example"


@pytest.mark.parametrize("maximum", VERSIONS, ids=["default", "tls1.2", "tls1.3"])
def test_hello_without_sni_has_no_name(maximum: ssl.TLSVersion | None) -> None:
    hello = client_hello(None, maximum)
    assert tls_sni(hello) is None
    assert destination_name(hello) == (None, "none")
    assert not needs_more(hello)


def test_ip_literal_sends_no_sni_so_the_connection_is_judged_by_address() -> None:
    assert tls_sni(client_hello("192.0.2.1")) is None


@pytest.mark.parametrize("name", ["example.com", LONG_NAME], ids=["short", "long"])
def test_truncated_hello_never_raises_never_gives_a_partial_name_and_asks_for_more(
    name: str,
) -> None:
    hello = client_hello(name)
    for n in range(len(hello)):
        part = hello[:n]
        found = tls_sni(part)
        assert found in (None, name), f"partial name {found!r} at length {n}"
        assert destination_name(part)[0] in (None, name)
        assert needs_more(part), f"a hello cut at {n} bytes must ask for more"
    assert not needs_more(hello)


def test_name_is_found_once_its_extension_is_complete() -> None:
    """The relay may stop reading early: the name is exact from the first byte it fits."""
    hello = client_hello("example.com")
    first = next(n for n in range(len(hello) + 1) if tls_sni(hello[:n]) is not None)
    assert hello[:first].endswith(b"example.com")


def test_handshake_that_is_not_a_client_hello_has_no_name() -> None:
    hello = bytearray(client_hello("example.com"))
    hello[5] = 0x02  # ServerHello
    assert tls_sni(bytes(hello)) is None


def test_sni_with_an_overlong_length_field_is_refused() -> None:
    hello = client_hello("example.com")
    at = hello.index(b"example.com")
    lying = hello[: at - 2] + (0xFFF0).to_bytes(2, "big") + hello[at:]
    assert tls_sni(lying) is None


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("request_head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nhost: lower.example\r\nAccept: */*\r\n\r\n", "lower.example"),
        (
            b"POST /x HTTP/1.1\r\nUser-Agent: t\r\nHOST:   spaced.example  \r\n\r\nbody",
            "spaced.example",
        ),
        (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "::1"),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", "2001:db8::1"),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.7:81\r\n\r\n", "192.0.2.7"),
        (b"PUT / HTTP/1.0\r\nHost: put.example\r\n\r\n", "put.example"),
    ],
)
def test_http_host_is_the_host_header_without_port(request_head: bytes, expected: str) -> None:
    assert http_host(request_head) == expected
    assert destination_name(request_head) == (expected, "host")
    assert not needs_more(request_head)


def test_first_host_header_wins() -> None:
    head = b"GET / HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n\r\n"
    assert http_host(head) == "first.example"


def test_host_in_the_request_line_or_body_is_not_a_header() -> None:
    head = b"GET http://host: HTTP/1.1\r\nAccept: x\r\n\r\nHost: body.example\r\n"
    assert http_host(head) is None


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n",  # head not finished
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",  # empty Host
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",  # unclosed bracket
    ],
)
def test_http_without_a_usable_host_has_no_name(head: bytes) -> None:
    assert destination_name(head) == (None, "none")


def test_incomplete_http_head_asks_for_more_until_the_blank_line() -> None:
    full = b"GET /path HTTP/1.1\r\nHost: example.com\r\n\r\n"
    for n in range(len(full)):
        assert needs_more(full[:n]), n
    assert not needs_more(full)


def test_head_at_the_size_cap_stops_reading() -> None:
    assert not needs_more(b"GET /" + b"a" * MAX_HEAD)
    assert not needs_more(b"\x16\x03\x01\xff\xff" + b"\0" * MAX_HEAD)


# --------------------------------------------------------------------------- other protocols


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x00\x01\x02\x03\xff\xfe",
        b"\x16",
        b"\x16\x03\x01\x00\x05\x01\x00\x00",
        b"HELO mail.example\r\n\r\n",
        bytes(range(256)),
    ],
)
def test_garbage_has_no_name(data: bytes) -> None:
    assert destination_name(data) == (None, "none")


def test_server_speaks_first_protocols_do_not_wait() -> None:
    assert not needs_more(b"SSH-2.0-x\r\n")
    assert not needs_more(b"\x00\x01binary")


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_destination_name_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    name, how = destination_name(data)
    assert how in ("sni", "host", "none")
    assert (name is None) == (how == "none")
    needs_more(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["example.com", LONG_NAME]),
    st.lists(st.tuples(st.integers(min_value=0, max_value=600), st.integers(0, 255)), max_size=8),
    st.integers(min_value=0, max_value=600),
)
def test_mutated_client_hellos_never_raise(
    name: str, flips: list[tuple[int, int]], cut: int
) -> None:
    hello = bytearray(client_hello(name))
    for at, value in flips:
        if at < len(hello):
            hello[at] = value
    data = bytes(hello[: max(cut, 1)] if cut < len(hello) else hello)
    name_found, _ = destination_name(data)
    # Whatever the damage, a name is only ever bytes the hello itself carries.
    assert name_found is None or name_found.encode("ascii") in data
    if not flips and cut >= len(hello):
        assert name_found == name
    needs_more(data)


def _records(hello: bytes, cuts: list[int]) -> bytes:
    """The handshake of `hello` re-framed as several TLS records, cut at `cuts`."""
    body = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    edges = sorted({c for c in cuts if 0 < c < len(body)})
    out = b""
    for start, end in zip([0, *edges], [*edges, len(body)], strict=True):
        out += hello[:3] + (end - start).to_bytes(2, "big") + body[start:end]
    return out


def _padded(hello: bytes, size: int, first: bool) -> bytes:
    """`hello` with a padding extension of `size` bytes before or after its others, as one
    handshake message (re-framed into records of at most 16 KiB)."""
    hs = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    pos = 4 + 2 + 32
    pos += 1 + hs[pos]
    pos += 2 + int.from_bytes(hs[pos:pos + 2], "big")
    pos += 1 + hs[pos]
    ext_len = int.from_bytes(hs[pos:pos + 2], "big")
    exts = hs[pos + 2:pos + 2 + ext_len]
    pad = (21).to_bytes(2, "big") + size.to_bytes(2, "big") + b"\0" * size
    exts = pad + exts if first else exts + pad
    body = hs[4:pos] + len(exts).to_bytes(2, "big") + exts
    message = hs[:1] + len(body).to_bytes(3, "big") + body
    framed = hello[:3] + len(message).to_bytes(2, "big") + message
    return _records(framed, list(range(16384, len(message), 16384)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["example.com", "registry.npmjs.org", LONG_NAME]),
       st.lists(st.integers(min_value=1, max_value=600), max_size=4))
def test_a_hello_split_over_records_gives_its_own_name_or_none(
        name: str, cuts: list[int]) -> None:
    """Never a wrong or partial name: a record header inside the hello must not be read as
    part of it (None denies on a name rule, which fails closed)."""
    data = _records(client_hello(name), cuts)
    found, _ = destination_name(data[:MAX_HEAD])
    assert found in (name, None), found


@pytest.mark.parametrize("first", [True, False], ids=["padding-first", "padding-last"])
def test_an_oversize_hello_gives_its_own_name_or_none(first: bool) -> None:
    data = _padded(client_hello("example.com"), 20000, first)
    assert len(data) > MAX_HEAD
    head = data[:MAX_HEAD]
    assert not needs_more(head)  # the agent stops reading at the cap
    found, _ = destination_name(head)
    assert found == (None if first else "example.com")
