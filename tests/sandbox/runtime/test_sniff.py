"""Destination names from a connection's first bytes (no Docker, no network).

ClientHellos are real ones, produced by the standard library's TLS client over
memory BIOs; the differential fuzz feeds the same bytes to Python's ssl server
(OpenSSL) and requires that any name this parser gives is the one OpenSSL reads.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbx.sandbox.runtime.sniff import MAX_FIRST, MAX_HELLO, Reading, read
from tests.sandbox.runtime.hellos import (
    NO_CALLBACK,
    Hello,
    client_hello,
    records,
    server_reads,
    sni_value,
)

LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
NAMES = ["example.com", "registry.npmjs.org", "a.b", "x-1_y.example.net", LONG_NAME]
VERSIONS = [None, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def name_of(data: bytes) -> str | None:
    reading = read(data)
    assert reading is not None, "asked for more bytes"
    return reading.name


def _with(hello: bytes, *extensions: tuple[int, bytes], drop_sni: bool = True) -> Hello:
    parsed = Hello.parse(hello)
    kept = tuple(e for e in parsed.extensions if not (drop_sni and e[0] == 0))
    return Hello(parsed.before, (*extensions, *kept))


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("maximum", VERSIONS, ids=["default", "tls1.2", "tls1.3"])
@pytest.mark.parametrize("name", NAMES, ids=lambda n: n[:20])
def test_sni_of_a_real_client_hello_is_the_server_name(
    name: str, maximum: ssl.TLSVersion | None
) -> None:
    hello = client_hello(name, maximum)
    assert read(hello) == Reading("tls", name=name)
    assert server_reads(hello) == name


def test_international_name_is_seen_as_its_punycode() -> None:
    assert name_of(client_hello("bücher.example")) == "xn--bcher-kva.example"


@pytest.mark.parametrize("maximum", VERSIONS, ids=["default", "tls1.2", "tls1.3"])
def test_hello_without_sni_names_nothing_and_says_so(maximum: ssl.TLSVersion | None) -> None:
    reading = read(client_hello(None, maximum))
    assert reading is not None and reading.protocol == "tls" and reading.name is None
    assert reading.problem and "SNI" in reading.problem


@pytest.mark.parametrize("name", ["example.com", LONG_NAME], ids=["short", "long"])
def test_truncated_hello_asks_for_more_and_never_gives_a_name(name: str) -> None:
    hello = client_hello(name)
    for n in range(len(hello)):
        assert read(hello[:n]) is None, f"decided on {n} of {len(hello)} bytes"
    assert name_of(hello) == name


@pytest.mark.parametrize("cuts", [[1], [3], [40], [100, 101, 102], list(range(1, 300, 7))])
def test_a_hello_split_over_records_is_reassembled(cuts: list[int]) -> None:
    """The issue's split hello: one reading over every record, the one OpenSSL has."""
    data = records(Hello.parse(client_hello("example.com")).message(), cuts)
    assert name_of(data) == "example.com" == server_reads(data)
    for n in range(len(data)):
        assert read(data[:n]) is None


def test_a_split_hello_crafted_to_show_another_name_across_the_boundary_is_read_whole() -> None:
    """The old parser read the first record's bytes past its end (the next record's
    header as hello bytes); the name must be OpenSSL's, whatever the cut."""
    message = _with(client_hello("evil.example"),
                    (0, sni_value(b"evil.example"))).message()
    at = message.index(b"evil.example")
    for cut in range(at - 6, at + 12):
        data = records(message, [cut])
        assert name_of(data) == "evil.example" == server_reads(data), cut


@pytest.mark.parametrize(("case", "build"), [
    ("two-names", lambda h: _with(h, (0, sni_value(b"allowed.example", b"evil.example")))),
    ("two-extensions", lambda h: _with(h, (0, sni_value(b"allowed.example")),
                                       (0, sni_value(b"evil.example")))),
    ("bytes-after-the-list", lambda h: _with(h, (0, sni_value(b"allowed.example") + b"\0"))),
    ("unknown-name-type", lambda h: _with(h, (0, sni_value(extra=b"\x01\x00\x01x")))),
    ("empty-list", lambda h: _with(h, (0, b"\x00\x00"))),
    ("not-a-host-name", lambda h: _with(h, (0, sni_value(b"allowed.example\x00evil")))),
])
def test_ambiguous_hellos_are_refused(case: str, build: object) -> None:
    hello = build(client_hello("x.example"))  # type: ignore[operator]
    reading = read(records(hello.message()))
    assert reading is not None and reading.name is None and reading.problem, case


def test_bytes_after_the_hello_in_its_record_are_refused() -> None:
    message = Hello.parse(client_hello("example.com")).message()
    reading = read(records(message, after=b"\x16\x03\x01\x00\x05hello"))
    assert reading is not None and reading.name is None
    assert reading.problem == "bytes after the ClientHello in its record"


def test_bytes_after_the_extensions_are_refused() -> None:
    message = Hello.parse(client_hello("example.com")).message(trailing=b"\0\0")
    reading = read(records(message))
    assert reading is not None and reading.name is None


def test_a_hello_over_the_bound_is_refused_whatever_it_names() -> None:
    parsed = Hello.parse(client_hello("example.com"))
    big = Hello(parsed.before, (*parsed.extensions, (0x4444, b"\0" * (MAX_HELLO + 100))))
    data = records(big.message())
    assert len(data) > 16 * 1024
    reading = read(data)
    assert reading is not None and reading.name is None and "bound" in str(reading.problem)
    # Refused as soon as the handshake header says so, not after reading it all.
    assert read(data[:12]) is not None


def test_an_oversize_hello_within_the_bound_is_read_whole() -> None:
    """Over one record (16 KiB) but within the bound: its own name, as OpenSSL reads it."""
    parsed = Hello.parse(client_hello("example.com"))
    for first in (True, False):
        pad = (0x4444, b"\0" * 15000)
        exts = (pad, *parsed.extensions) if first else (*parsed.extensions, pad)
        data = records(Hello(parsed.before, exts).message())
        assert name_of(data) == "example.com" == server_reads(data)


def test_a_record_that_is_not_a_handshake_inside_the_hello_is_refused() -> None:
    data = records(Hello.parse(client_hello("example.com")).message(), [50])
    second = data.index(b"\x16\x03\x01", 5)
    broken = data[:second] + b"\x17" + data[second + 1:]
    reading = read(broken)
    assert reading is not None and reading.name is None


def test_handshake_that_is_not_a_client_hello_names_nothing() -> None:
    hello = bytearray(client_hello("example.com"))
    hello[5] = 0x02  # ServerHello
    reading = read(bytes(hello))
    assert reading is not None and reading.name is None


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("request_head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nhost: lower.example\r\nAccept: */*\r\n\r\n", "lower.example"),
        (b"POST /x HTTP/1.1\r\nUser-Agent: t\r\nHOST:   spaced.example  \r\n\r\nbody",
         "spaced.example"),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", "2001:db8::1"),
        (b"PUT / HTTP/1.0\r\nHost: put.example\r\n\r\n", "put.example"),
        (b"FOO / HTTP/1.1\r\nHost: unknown-method.example\r\n\r\n", "unknown-method.example"),
    ],
)
def test_http_host_is_the_host_header_without_port(request_head: bytes, expected: str) -> None:
    reading = read(request_head)
    assert reading is not None and reading.protocol == "http" and reading.name == expected


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n\r\n",
        b"GET / HTTP/1.1\nHost: allowed.example\nHost: evil.example\n\n",
        b"GET / HTTP/1.1\r\nHost: allowed.example\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.example\rX: y\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: allowed.example\r\n\r\n",
    ],
    ids=["duplicate-host", "bare-lf", "one-bare-lf", "control-char", "bare-cr", "no-host",
         "empty-host", "unclosed-bracket", "userinfo", "obs-fold", "http-2"],
)
def test_http_without_one_clear_host_names_nothing(head: bytes) -> None:
    reading = read(head)
    assert reading is not None and reading.name is None and reading.problem


def test_http2_prior_knowledge_is_named_as_such() -> None:
    reading = read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert reading is not None and reading.name is None
    assert reading.problem is not None and "HTTP/2 prior knowledge" in reading.problem


def test_incomplete_http_head_asks_for_more_until_the_blank_line() -> None:
    full = b"GET /path HTTP/1.1\r\nHost: example.com\r\n\r\n"
    for n in range(1, len(full)):
        assert read(full[:n]) is None, n
    assert name_of(full) == "example.com"


def test_an_endless_head_is_refused_at_the_bound() -> None:
    reading = read(b"GET /" + b"a" * (16 * 1024))
    assert reading is not None and reading.name is None


# --------------------------------------------------------------------------- other protocols


@pytest.mark.parametrize(
    "data",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00\x01\x02\x03\xff\xfe", b"HELO mail.example\r\n",
     b"get / HTTP/1.1\r\n", bytes(range(256))],
)
def test_other_protocols_name_nothing_at_once(data: bytes) -> None:
    reading = read(data)
    assert reading is not None and reading.protocol == "other" and reading.name is None


def test_no_bytes_is_not_a_reading() -> None:
    assert read(b"") is None


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_read_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    reading = read(data)
    if reading is not None:
        assert (reading.name is None) == (reading.problem is not None)


def _mutant(draw: st.DrawFn) -> bytes:
    """A ClientHello built from a real one, rearranged the ways a parser can be fooled."""
    parsed = Hello.parse(client_hello(draw(st.sampled_from(["allowed.example", LONG_NAME]))))
    names = draw(st.lists(st.sampled_from([b"allowed.example", b"evil.example", b"",
                                           b"allowed.example.", b"a\x00b"]),
                          min_size=0, max_size=3))
    exts = [e for e in parsed.extensions if e[0] != 0]
    sni = (0, sni_value(*names, extra=draw(st.sampled_from([b"", b"\0", b"\x01\x00\x01e"]))))
    for _ in range(draw(st.integers(0, 2))):
        exts.insert(draw(st.integers(0, len(exts))), sni)
    if draw(st.booleans()):
        exts.insert(draw(st.integers(0, len(exts))), (0x4444, b"\0" * draw(st.integers(0, 17000))))
    message = bytearray(Hello(parsed.before, tuple(exts)).message(
        trailing=draw(st.sampled_from([b"", b"\0", b"\0\0\0\0"]))))
    for at, value in draw(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                   max_size=3)):
        if at < len(message):
            message[at] = value
    cuts = draw(st.lists(st.integers(1, 600), max_size=4))
    return records(bytes(message), cuts, after=draw(st.sampled_from([b"", b"\x16"])))


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_fuzz_against_openssl_any_name_given_is_the_name_openssl_reads(
        data: st.DataObject) -> None:
    """The property the gateway rests on: when this parser names a host, a real TLS
    server reading the same bytes sees that host (or refuses the hello before naming
    any). A refusal here is always safe: it is a denial."""
    hello = data.draw(st.builds(lambda: None).flatmap(lambda _: st.composite(
        lambda draw: _mutant(draw))()))
    reading = read(hello[:MAX_FIRST])
    ours = reading.name if reading is not None else None
    if ours is not None:
        theirs = server_reads(hello)
        assert theirs in (ours, NO_CALLBACK), (ours, theirs)
