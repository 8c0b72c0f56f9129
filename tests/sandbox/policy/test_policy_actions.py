"""Action-level rules: path normalization refuses what servers read two ways; patterns."""

from __future__ import annotations

import pytest

from sbx.sandbox.policy import (
    AmbiguousPath,
    PathPattern,
    Policy,
    PolicyError,
    normalize_path,
    parse_rule,
    with_actions,
)


@pytest.mark.parametrize(("target", "path"), [
    ("/simple/requests/", "/simple/requests/"),
    ("/simple/../upload", "/upload"),
    ("/simple/%2e%2e/upload", "/upload"),
    ("/simple/%2E%2e/upload?x=/simple/", "/upload"),
    ("/simple/./a", "/simple/a"),
    ("/%73imple/a", "/simple/a"),
    ("/a/%41b", "/a/Ab"),
    ("/a/%c3%a9", "/a/%C3%A9"),
    ("/", "/"),
    ("/simple/..", "/"),
])
def test_normalize_path(target: str, path: str) -> None:
    assert normalize_path(target) == path


@pytest.mark.parametrize("target", [
    "/simple%2f..%2fupload", "/simple%2F../upload", "/a%5cb", "/a\\b", "/simple;x/../upload",
    "/a;jsessionid=1", "//upload", "/simple//x", "/..", "/a/../../b", "/a%00", "/a%0a",
    "/a%2", "/a%zz", "/" + "a" * 3000, "/a b", "simple/x", "*",
])
def test_ambiguous_paths_are_refused(target: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalize_path(target)


@pytest.mark.parametrize(("pattern", "path", "match"), [
    ("/simple/**", "/simple", True),
    ("/simple/**", "/simple/", True),
    ("/simple/**", "/simple/requests/", True),
    ("/simple/**", "/simpler/x", False),
    ("/simple/**", "/upload", False),
    ("/pypi/*/json", "/pypi/requests/json", True),
    ("/pypi/*/json", "/pypi/a/b/json", False),
    ("/pypi/*/json", "/pypi/json", False),
    ("/a/**/c", "/a/c", True),
    ("/a/**/c", "/a/b/b/c", True),
    ("/a/**/c", "/a/b/b/d", False),
    ("/packages/*.whl", "/packages/x-1.whl", True),
    ("/packages/*.whl", "/packages/x/y.whl", False),
    ("/x", "/x", True),
    ("/x", "/x/y", False),
])
def test_patterns_are_segment_aware(pattern: str, path: str, match: bool) -> None:
    assert PathPattern(pattern).matches(path) is match


@pytest.mark.parametrize(("pattern", "words"), [
    ("simple/**", "not absolute"), ("/a/x**", "inside a segment"), ("/a/**b/c", "inside"),
    ("/a//b", "empty segment"), ("/a/../b", "'..'"), ("/a?x=1", "query"),
])
def test_bad_patterns_are_refused(pattern: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        PathPattern(pattern)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(PolicyError, match="method 'FETCH' is unknown"):
        with_actions(parse_rule("a.example:443"), ["FETCH"], None)


def test_action_rule_round_trips_and_an_old_gateway_fails_closed() -> None:
    rule = with_actions(parse_rule("a.example:443", "f:3"), ["get"], ["/simple/**"])
    policy = Policy(rules=(rule,))
    again = Policy.from_dict(policy.to_dict())
    assert again == policy and again.rules[0].actions is not None
    assert again.rules[0].actions.methods == ("GET",)
    assert policy.inspects("a.example", 443) and not policy.inspects("b.example", 443)
    # A host-level policy keeps the digest it always had (no new keys).
    plain = Policy(rules=(parse_rule("a.example:443", "f:3"),))
    assert "inspect" not in plain.to_dict()["rules"][0]
    # Stored fields that disagree with the text are refused, not trusted.
    tampered = policy.to_dict()
    tampered["rules"][0]["paths"] = ["/**", 1]
    with pytest.raises(PolicyError):
        Policy.from_dict(tampered)
