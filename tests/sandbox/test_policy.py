"""Egress policy: parsing, refusals, matching and serialisation (no Docker, no network)."""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbx.sandbox import policy
from sbx.sandbox.policy import (
    INTERNAL_NETWORKS,
    Policy,
    PolicyError,
    Rule,
    is_internal,
    normalize_name,
    parse_rule,
    with_actions,
)

# --------------------------------------------------------------------------- module shape


def test_policy_module_imports_only_the_standard_library() -> None:
    """The gateway image has Debian's python3 and python3-idna (among a few others); this
    package must import there."""
    roots: set[str] = set()
    modules = sorted(Path(policy.__file__).parent.glob("*.py"))
    assert len(modules) > 1, modules
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in modules]
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots <= set(sys.stdlib_module_names) | {"__future__", "idna"}, roots


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com...", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de.", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("_srv.example.com", "_srv.example.com"),
        ("example\u3002com", "example.com"),
        ("example\uff0ecom\uff0e", "example.com"),
        ("web", "web"),
    ],
)
def test_normalize_name(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", ".a.b", "a b.com", "a/b", "-a.com", "a-.com", "a" * 64 + ".com", "é" * 70],
)
def test_normalize_name_refuses(bad: str) -> None:
    with pytest.raises(PolicyError):
        normalize_name(bad)


def test_normalize_name_refuses_overlong_name() -> None:
    with pytest.raises(PolicyError, match="longer than 253"):
        normalize_name(".".join(["a" * 60] * 5))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "host", "suffix", "network", "port"),
    [
        ("example.com", "example.com", None, None, None),
        ("Example.com.:443", "example.com", None, None, 443),
        ("web:8080", "web", None, None, 8080),
        ("*.example.com", None, "example.com", None, None),
        ("*.pypi.org:443", None, "pypi.org", None, 443),
        ("1.2.3.4", None, None, "1.2.3.4/32", None),
        ("1.2.3.4:443", None, None, "1.2.3.4/32", 443),
        ("10.0.0.0/8", None, None, "10.0.0.0/8", None),
        ("10.0.0.0/8:443", None, None, "10.0.0.0/8", 443),
        ("198.18.0.0/24", None, None, "198.18.0.0/24", None),
        ("[2001:db8::1]:443", None, None, "2001:db8::1/128", 443),
        ("2001:db8::1", None, None, "2001:db8::1/128", None),
        ("2001:db8::/32", None, None, "2001:db8::/32", None),
        ("[2001:db8::/32]:443", None, None, "2001:db8::/32", 443),
        ("::ffff:1.2.3.4", None, None, "1.2.3.4/32", None),
    ],
)
def test_parse_rule_forms(
    text: str, host: str | None, suffix: str | None, network: str | None, port: int | None
) -> None:
    rule = parse_rule(text, "steps/a.yaml:3")
    assert rule.text == text
    assert rule.source == "steps/a.yaml:3"
    assert rule.host == host
    assert rule.suffix == suffix
    assert (str(rule.network) if rule.network else None) == network
    assert rule.port == port


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("*", "allows every host"),
        ("*:443", "allows every host"),
        ("*.com", "whole top-level domain"),
        ("*.com:443", "whole top-level domain"),
        ("a.*.com", "whole first label"),
        ("*foo.example.com", "whole first label"),
        ("foo*.example.com", "whole first label"),
        ("*.*.example.com", "whole first label"),
        ("0.0.0.0/0", "whole internet"),
        ("::/0", "whole internet"),
        ("1.0.0.0/7", "host bits set"),
        ("0.0.0.0/1", "wider than /8"),
        ("2000::/12", "wider than /16"),
        ("10.0.0.1/8", "host bits set; write the network address (10.0.0.0/8)"),
        ("2001:db8::1/32", "host bits set"),
        ("127.0.0.1", "loopback"),
        ("127.0.0.0/8", "loopback"),
        ("::1", "loopback"),
        ("[::1]:22", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("LOCALHOST.", "loopback"),
        ("localhost:8080", "loopback"),
        ("*.localhost", "loopback"),
        ("foo.localhost", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::/64", "link-local"),
        ("fe80::/10", "wider than /16"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.169.254:80", "cloud metadata"),
        ("169.254.169.254.", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("[::ffff:a9fe:a9fe]:80", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("100.64.0.0/10", "includes 100.100.100.200/32"),
        ("metadata.google.internal", "cloud metadata"),
        ("Metadata.Google.Internal.", "cloud metadata"),
        ("*.google.internal", "covers metadata.google.internal"),
        ("metadata", "cloud metadata"),
        ("instance-data", "cloud metadata"),
        ("host.docker.internal", "Docker host"),
        ("gateway.docker.internal:80", "Docker host"),
        ("*.docker.internal", "covers"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.0.0.0/8", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("example.com:0", "1..65535"),
        ("example.com:65536", "1..65535"),
        ("example.com:-1", "decimal port"),
        ("example.com:0x1bb", "decimal port"),
        ("example.com:", "decimal port"),
        ("[2001:db8::1]:99999", "1..65535"),
        ("2852039166", "dotted decimal"),
        ("0xa9fea9fe", "dotted decimal"),
        ("0xA9FEA9FE", "dotted decimal"),
        ("0251.0376.0251.0376", "dotted decimal"),
        ("0xa9.0xfe.0xa9.0xfe", "dotted decimal"),
        ("127.1", "dotted decimal"),
        ("10.1", "dotted decimal"),
        ("1.2.3.4.5", "dotted decimal"),
        ("017700000001", "dotted decimal"),
        ("*.127.1", "dotted decimal"),
        ("fe80::1%eth0", "zone index"),
        ("http://example.com", "URL"),
        ("example.com/path", "path"),
        ("", "empty"),
        ("exa mple.com", "whitespace"),
        ("[2001:db8::1", "without ']'"),
        ("[2001:db8::1]443", "after ']'"),
        ("a..b", "empty label"),
        ("[example.com]:443", "only for IPv6"),
    ],
)
def test_parse_rule_refuses(text: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_rule(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
    assert ";" in message, "every refusal says how to fix it"


def test_documentation_and_benchmark_ranges_are_allowed() -> None:
    # The test suite's simulated internet lives on 198.18.0.0/24.
    for text in ("198.18.0.0/15", "198.18.0.7", "192.0.2.0/24", "2001:db8::/32"):
        parse_rule(text)


# --------------------------------------------------------------------------- matching


def test_host_rule_matches_exact_name_any_case_and_trailing_dot() -> None:
    rule = parse_rule("Example.com")
    assert rule.matches_name("example.com", 443)
    assert rule.matches_name("EXAMPLE.COM.", 80)
    assert not rule.matches_name("www.example.com", 443)
    assert not rule.matches_name("example.com.evil.net", 443)
    assert not rule.matches_ip("93.184.216.34", 443)


def test_suffix_rule_matches_on_label_boundaries_only() -> None:
    rule = parse_rule("*.example.com")
    assert rule.matches_name("a.example.com", 443)
    assert rule.matches_name("b.a.example.com", 443)
    assert rule.matches_name("A.Example.Com.", 443)
    assert not rule.matches_name("example.com", 443)
    assert not rule.matches_name("evilexample.com", 443)
    assert not rule.matches_name("a.example.com.evil.net", 443)
    assert not rule.matches_name("a.example.co", 443)


def test_port_rules() -> None:
    rule = parse_rule("*.pypi.org:443")
    assert rule.matches_name("files.pypi.org", 443)
    assert not rule.matches_name("files.pypi.org", 80)
    # Port None is "any port": DNS resolution of an allowed name.
    assert rule.matches_name("files.pypi.org", None)
    any_port = parse_rule("web")
    assert any_port.matches_name("web", 1)
    assert any_port.matches_name("web", 65535)


def test_unicode_rule_matches_punycode_name() -> None:
    rule = parse_rule("bücher.de")
    assert rule.matches_name("xn--bcher-kva.de", 443)
    assert rule.matches_name("BÜCHER.DE", 443)


def test_invalid_name_never_matches() -> None:
    rule = parse_rule("*.example.com")
    assert not rule.matches_name("a..example.com", 443)
    assert not rule.matches_name("", 443)


def test_ip_rules() -> None:
    rule = parse_rule("10.0.0.0/8:443")
    assert rule.matches_ip("10.1.2.3", 443)
    assert not rule.matches_ip("10.1.2.3", 80)
    assert rule.matches_ip("10.1.2.3", None)
    assert not rule.matches_ip("11.0.0.1", 443)
    assert rule.matches_ip("::ffff:10.1.2.3", 443), "IPv4-mapped IPv6 is unwrapped"
    assert rule.matches_ip("[::ffff:10.1.2.3]", 443)
    assert not rule.matches_ip("not-an-ip", 443)
    assert not rule.matches_name("10.1.2.3", 443), "an IP rule never matches a name"


def test_ip_rule_version_never_crosses() -> None:
    # ipaddress' `in` does not compare versions; the matcher must.
    v6 = parse_rule("2001:db8::/96")
    assert not v6.matches_ip("0.0.0.1", None)
    assert v6.matches_ip("2001:db8::1", None)
    v4 = parse_rule("1.2.3.0/24")
    assert not v4.matches_ip("::102:304", None)


def test_mapped_rule_is_canonical_ipv4() -> None:
    rule = parse_rule("::ffff:198.18.0.0/120")
    assert rule.network == ipaddress.ip_network("198.18.0.0/24")
    assert rule.matches_ip("198.18.0.5", None)


def test_rule_requires_exactly_one_target() -> None:
    with pytest.raises(PolicyError):
        Rule(text="x")
    with pytest.raises(PolicyError):
        Rule(text="x", host="a", suffix="b")
    with pytest.raises(PolicyError):
        Rule(text="x", host="a", port=0)


# --------------------------------------------------------------------------- internal ranges


@pytest.mark.parametrize(
    "ip",
    [
        "0.0.0.0",
        "10.0.0.1",
        "100.64.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",  # the mapped range itself is listed as internal
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",  # 6to4 wrapping the metadata address
        "[::1]",
    ],
)
def test_is_internal(ip: str) -> None:
    assert is_internal(ip)


@pytest.mark.parametrize(
    "ip", ["198.18.0.1", "198.19.255.255", "192.0.2.1", "8.8.8.8", "2001:db8::1", "2002:808:808::1"]
)
def test_is_not_internal(ip: str) -> None:
    assert not is_internal(ip)


def test_is_internal_extra_networks() -> None:
    extra = [ipaddress.ip_network("198.18.0.0/24")]
    assert is_internal("198.18.0.9", extra)
    assert not is_internal("198.18.1.9", extra)


def test_is_internal_refuses_garbage() -> None:
    with pytest.raises(PolicyError):
        is_internal("localhost")


def test_internal_networks_cover_every_listed_range() -> None:
    texts = {str(n) for n in INTERNAL_NETWORKS}
    assert "64:ff9b::/96" in texts and "::ffff:0:0/96" in texts
    assert "198.18.0.0/15" not in texts


# --------------------------------------------------------------------------- policy


def _policy() -> Policy:
    return Policy(
        mode="enforce",
        rules=(
            parse_rule("web:8080", "s.yaml:5"),
            parse_rule("*.pypi.org:443", "s.yaml:6"),
            parse_rule("198.18.0.0/24:22", "s.yaml:7"),
        ),
    )


def test_policy_matching() -> None:
    p = _policy()
    matched = p.match_name("files.pypi.org", 443)
    assert matched is not None and matched.source == "s.yaml:6"
    assert p.match_name("files.pypi.org", 80) is None
    assert p.match_name("198.18.0.1", 22) is None
    ip_rule = p.match_ip("198.18.0.1", 22)
    assert ip_rule is not None and ip_rule.source == "s.yaml:7"
    assert p.match_ip("198.18.0.1", 23) is None
    assert p.allows_dns("WEB.") is not None
    assert p.allows_dns("pypi.org") is None
    assert p.allows_dns("evil.com") is None


def test_policy_mode_is_checked() -> None:
    with pytest.raises(PolicyError, match="enforce"):
        Policy(mode="allow-all")
    assert Policy(mode="audit").mode == "audit"


def test_policy_round_trip_and_digest() -> None:
    p = _policy()
    blob = json.dumps(p.to_dict())
    again = Policy.from_dict(json.loads(blob))
    assert again == p
    assert again.digest() == p.digest()
    assert p.digest().startswith("sha256:") and len(p.digest()) == 7 + 64
    assert Policy(mode="audit", rules=p.rules).digest() != p.digest()


def test_digest_is_pinned() -> None:
    """The digest is evidence; its canonical form must not drift silently."""
    p = Policy(mode="enforce", rules=(parse_rule("example.com:443", "a.yaml:2"),))
    assert p.to_dict() == {
        "mode": "enforce",
        "rules": [
            {"text": "example.com:443", "source": "a.yaml:2", "host": "example.com", "port": 443}
        ],
    }
    expected = json.dumps(p.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert p.digest() == "sha256:" + hashlib.sha256(expected).hexdigest()


def test_from_dict_revalidates_and_fails_closed() -> None:
    good = parse_rule("example.com").to_dict()
    # Unknown (future) fields are refused, never ignored.
    with pytest.raises(PolicyError, match="unknown field"):
        Rule.from_dict({**good, "rate_limit": 5})
    # Action fields that disagree with the rule's own form are refused, never half-applied.
    with pytest.raises(PolicyError, match="does not match"):
        Rule.from_dict({**good, "methods": ["GET"]})
    # Stored fields that disagree with the text are refused.
    with pytest.raises(PolicyError, match="does not match"):
        Rule.from_dict({**good, "host": "evil.com"})
    # A forbidden rule smuggled in a dict is refused by re-parsing.
    with pytest.raises(PolicyError, match="metadata"):
        Rule.from_dict({"text": "169.254.169.254", "source": "", "network": "169.254.169.254/32"})
    with pytest.raises(PolicyError):
        Policy.from_dict({"mode": "enforce", "rules": [good], "extra": 1})
    with pytest.raises(PolicyError):
        Policy.from_dict({"mode": "enforce", "rules": "example.com"})


# --------------------------------------------------------------------------- properties

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
_name = (
    st.lists(_label, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not n.rsplit(".", 1)[-1].isdigit())
)
_any_text = st.text(max_size=40)


@given(_any_text)
def test_normalize_name_is_idempotent(raw: str) -> None:
    try:
        once = normalize_name(raw)
    except PolicyError:
        return
    assert normalize_name(once) == once


@given(_name, _name)
def test_suffix_rule_never_matches_outside_its_suffix(suffix_tail: str, name: str) -> None:
    suffix = "example." + suffix_tail  # at least two labels
    try:
        rule = parse_rule("*." + suffix)
    except PolicyError:
        return
    assert rule.suffix is not None
    verdict = rule.matches_name(name, 443)
    assert verdict == normalize_name(name).endswith("." + rule.suffix)
    if verdict:
        assert normalize_name(name) != rule.suffix


@given(_name, _name, st.sampled_from([None, 80, 443]))
def test_case_and_trailing_dot_never_change_a_verdict(
    rule_name: str, name: str, port: int | None
) -> None:
    rules = []
    for text in (rule_name, "*." + rule_name, f"{rule_name}:443"):
        try:
            rules.append(parse_rule(text))
        except PolicyError:
            continue
    variants = [name, name.upper(), name + ".", name.swapcase() + "..", name.title()]
    for rule in rules:
        verdicts = {rule.matches_name(v, port) for v in variants}
        assert len(verdicts) == 1
    # The rule text's spelling does not matter either.
    for a, b in ((rule_name, rule_name.upper() + "."),):
        try:
            ra, rb = parse_rule(a), parse_rule(b)
        except PolicyError:
            continue
        assert ra.matches_name(name, port) == rb.matches_name(name, port)


@given(_name)
def test_name_matches_itself(name: str) -> None:
    try:
        rule = parse_rule(name)
    except PolicyError:
        return
    assert rule.matches_name(name, 1)
    assert not parse_rule("*.example.org").matches_name("example.org", 1)


@given(st.ip_addresses(v=4))
def test_mapped_addresses_match_like_ipv4(addr: ipaddress.IPv4Address) -> None:
    rule = parse_rule("198.18.0.0/15")
    assert rule.matches_ip(str(addr), None) == rule.matches_ip(f"::ffff:{addr}", None)
    # The mapped range is internal as a whole, so an internal IPv4 address stays internal.
    if is_internal(str(addr)):
        assert is_internal(f"::ffff:{addr}")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_integer_spellings_are_always_refused(value: int) -> None:
    for text in (str(value), hex(value)):
        with pytest.raises(PolicyError):
            parse_rule(text)


_FORBIDDEN_V4 = [ipaddress.IPv4Network(n) for n in (
    "169.254.169.254/32", "100.100.100.200/32", "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
    "224.0.0.0/4", "255.255.255.255/32", "240.0.0.0/4")]
_FORBIDDEN_V6 = [ipaddress.IPv6Network(n) for n in (
    "fd00:ec2::254/128", "::/128", "::1/128", "fe80::/10", "ff00::/8")]


@st.composite
def _forbidden_v4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(_FORBIDDEN_V4))
    offset = draw(st.integers(min_value=0, max_value=net.num_addresses - 1))
    return net.network_address + offset


def _spellings(v4: ipaddress.IPv4Address, low: int) -> list[str]:
    """Every IPv6 spelling of `v4` that routes to it: IPv4-mapped, NAT64, 6to4, Teredo
    (`low` fills the bits the wrapper leaves free)."""
    n = int(v4)
    return [str(v4), f"::ffff:{v4}", str(ipaddress.IPv6Address((0x64FF9B << 96) | n)),
            str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (low & (2**80 - 1)))),
            str(ipaddress.IPv6Address((0x20010000 << 96) | (low & 0xFFFFFFFF) << 64
                                      | (n ^ 0xFFFFFFFF)))]


# Rules a user may write that cover a wrapper range (or are an address in one).
_WRAPPER_RULES = st.sampled_from([
    "64::/16", "64:ff9b::/32", "2002::/16", "2002::/24", "2001::/16", "2001::/32", "::/96",
    "::ffff:0:0/96", "::ffff:a9fe:0/112", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::/48",
    "2001:0:1:2:3:4:5:6"])


@given(st.one_of(st.ip_addresses().map(str), _WRAPPER_RULES), _forbidden_v4(),
       st.integers(min_value=0, max_value=2**80 - 1))
def test_no_rule_ever_matches_a_forbidden_address_in_any_spelling(
    rule_text: str, bad: ipaddress.IPv4Address, low: int,
) -> None:
    """Not only the literal 127.0.0.1: any address in a forbidden range, spelled as IPv4 or
    wrapped in IPv6 (mapped, NAT64, 6to4, Teredo), is matched by no accepted rule."""
    text = f"[{rule_text}]:443" if ":" in rule_text and "/" not in rule_text else rule_text
    try:
        rule = parse_rule(text)
    except PolicyError:
        return
    for spelling in _spellings(bad, low):
        assert not rule.matches_ip(spelling, 443), (rule.text, spelling)


@given(st.ip_addresses(v=6), st.sampled_from(_FORBIDDEN_V6))
def test_no_rule_ever_matches_a_forbidden_ipv6_address(
    addr: ipaddress.IPv6Address, net: ipaddress.IPv6Network,
) -> None:
    inside = net.network_address + (int(addr) % net.num_addresses)
    for prefix in (16, 32, 64, 96, 112, 128):
        try:
            rule = parse_rule(f"{ipaddress.ip_network((inside, prefix), strict=False)}")
        except PolicyError:
            continue
        assert not rule.matches_ip(str(inside), 443), rule.text


# --------------------------------------------------------------------------- issue 12


@pytest.mark.parametrize("entry", [
    "2002:a9fe:a9fe::/48", "2002:7f00:1::/48", "2002::/16", "[2002:a9fe:a9fe::1]:80",
    "64:ff9b::/64", "64:ff9b::a9fe:a9fe", "64:ff9b:1::/48", "64:ff9b:1:2::/64",
    "::a9fe:a9fe", "::127.0.0.1", "::/96",
    "[2001:0:4136:e378:8000:63bf:5601:5601]:443", "2001::/32",
])
def test_forbidden_ranges_are_refused_in_every_ipv6_spelling(entry: str) -> None:
    """6to4, NAT64 (well-known and local-use), IPv4-compatible and Teredo carry IPv4
    addresses: a rule reaching the metadata address or loopback through them is refused."""
    with pytest.raises(PolicyError):
        parse_rule(entry)


@pytest.mark.parametrize("entry", ["2002:c633:6401::/48", "2001:db8::/32", "2606:4700::/32",
                                   "64:ff9b::808:808"])
def test_wrapped_public_addresses_are_still_allowed(entry: str) -> None:
    assert parse_rule(entry).network is not None


@pytest.mark.parametrize("ip", ["2002:a9fe:a9fe::1", "::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe",
                                "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:5601:5601"])
def test_a_hand_built_wide_rule_never_matches_a_wrapped_forbidden_address(ip: str) -> None:
    """Checked again at connect time: a rule that escaped the parser (built by hand, or
    by an older sbx) still never reaches the metadata address or loopback."""
    rule = Rule(text="wide", network=ipaddress.ip_network("::/16" if ip.startswith("::")
                                                          else ip.split(":")[0] + "::/16"))
    assert not rule.matches_ip(ip, 80)


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "fe80::1%25\x1b[31m", "::1%lo"])
def test_an_ipv6_zone_index_is_refused_not_carried(ip: str) -> None:
    with pytest.raises(PolicyError, match="zone index"):
        policy.in_networks(ip, ())


@pytest.mark.parametrize(("name", "punycode"), [
    ("straße.de", "xn--strae-oqa.de"), ("faß.example", "xn--fa-hia.example"),
    ("Bücher.example", "xn--bcher-kva.example"),
    ("\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\uff0ecom", "example.com"),  # full width
])
def test_idna_follows_uts46_as_clients_do(name: str, punycode: str) -> None:
    """IDNA 2003 folded 'straße' to 'strasse': another domain than curl, browsers and the
    idna package reach (UTS 46, non-transitional)."""
    assert normalize_name(name) == punycode
    assert normalize_name(punycode) == punycode


def test_a_rule_is_never_both_nameless_and_action_level() -> None:
    """A nameless connection names nothing, so there are no requests to check it by."""
    nameless = parse_rule("git.example.com:22", "s.yaml:3", nameless=True)
    with pytest.raises(PolicyError, match="nameless and has methods"):
        with_actions(nameless, ["GET"], None)
    with pytest.raises(PolicyError, match="nameless and has methods"):
        Rule.from_dict({**nameless.to_dict(), "inspect": True, "methods": ["GET"]})
    both = with_actions(parse_rule("pypi.org:443", "s.yaml:4"), ["GET"], ["/simple/**"])
    assert Rule.from_dict(both.to_dict()) == both


def test_a_nameless_rule_round_trips_and_changes_the_digest() -> None:
    plain = parse_rule("git.example.com:22", "s.yaml:3")
    nameless = parse_rule("git.example.com:22", "s.yaml:3", nameless=True)
    assert nameless.nameless and not plain.nameless
    assert Rule.from_dict(nameless.to_dict()) == nameless
    assert "nameless" not in plain.to_dict()  # old policies keep their digest
    assert Policy(rules=(plain,)).digest() != Policy(rules=(nameless,)).digest()


@pytest.mark.parametrize("entry", ["*.example.com:22", "git.example.com", "10.0.0.0/8:22"])
def test_nameless_needs_one_host_name_and_a_port(entry: str) -> None:
    with pytest.raises(PolicyError, match="nameless"):
        parse_rule(entry, nameless=True)
