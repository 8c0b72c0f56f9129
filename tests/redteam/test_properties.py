"""Property-based tests (hypothesis) for the allowlist matcher and the YAML loader, adding
to tests/sandbox/test_policy.py: prefix semantics against `ipaddress`, rule round trips,
and a loader that never fails with anything but its one-line, exit-2 error."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbx.errors import EXIT_INPUT, SpecError
from sbx.pipelines.spec.loader import load_yaml
from sbx.pipelines.spec.step import validate_step
from sbx.sandbox.policy import INTERNAL_NETWORKS, Policy, PolicyError, Rule, parse_rule
from sbx.sandbox.runtime.gate import Gate

_label = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
_name = st.lists(_label, min_size=2, max_size=4).map(".".join)
_port = st.none() | st.integers(min_value=1, max_value=65535)
_public_v4 = st.ip_addresses(v=4).filter(lambda a: a.is_global)


def _entry(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


# -- the allowlist -----------------------------------------------------------------------
@given(_public_v4, st.integers(min_value=16, max_value=32), _public_v4, _port)
def test_ip_prefix_rule_matches_exactly_its_network(
        base: ipaddress.IPv4Address, prefix: int, probe: ipaddress.IPv4Address,
        port: int | None) -> None:
    net = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    try:
        rule = parse_rule(_entry(str(net), port))
    except PolicyError:
        return  # a refused range (a forbidden overlap) matches nothing by construction
    assert rule.matches_ip(str(probe), port) == (probe in net)
    assert rule.matches_ip(str(net.network_address), port)


@given(_name, _port)
def test_rule_round_trips(name: str, port: int | None) -> None:
    for text in (_entry(name, port), _entry("*." + name, port)):
        try:
            rule = parse_rule(text)
        except PolicyError:
            continue  # a public suffix, refused
        again = Rule.from_dict(rule.to_dict())
        assert again == rule
        assert parse_rule(rule.text) == rule


@given(_name, _label, _port)
def test_wildcard_needs_a_label_boundary(suffix: str, extra: str, port: int | None) -> None:
    try:
        rule = parse_rule(_entry("*." + suffix, port))
    except PolicyError:
        return
    assert rule.matches_name(f"{extra}.{suffix}", port)
    assert not rule.matches_name(f"{extra}{suffix}", port)  # glued on: not below it
    assert not rule.matches_name(suffix, port)  # the suffix itself is not below it
    assert rule.matches_name(f"{extra}.{suffix}".upper() + ".", port)


@st.composite
def _internal(draw: st.DrawFn) -> str:
    net = draw(st.sampled_from(INTERNAL_NETWORKS))
    return str(net.network_address + draw(st.integers(0, net.num_addresses - 1)))


@given(_internal(), _name, st.sampled_from(["enforce", "audit"]))
def test_the_gateway_never_allows_an_internal_address_on_a_name_rule(
        ip: str, name: str, mode: str) -> None:
    """Whatever the name rules say, an internal address is refused as such, raw or
    through a name."""
    gate = Gate(step="s", policy=Policy(mode=mode, rules=(parse_rule(f"{name}:443"),
                                                          parse_rule("*.example.org"))),
                refused=())
    by_address = gate.decide_ip(ip, 443)
    assert by_address.verdict == "denied" and by_address.internal, by_address
    gate.resolve = lambda *_a, **_k: [ip]  # type: ignore[method-assign]
    by_name = gate.decide_name(name, 443)
    assert by_name.verdict == "denied" and by_name.internal and not by_name.addresses


@given(st.integers(0x0B000000, 0x0BFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n))),
       _name, st.sampled_from([22, 80, 443, 8443]))
def test_a_name_rule_never_allows_an_address_alone(ip: str, name: str, port: int) -> None:
    """Issue 12: the address a name resolves to may serve other tenants, so without a name
    in the connection (CONNECT <ip>, silence, no SNI) a name rule allows nothing, even
    when the name resolves to exactly that address; only `nameless` says otherwise."""
    for nameless in (False, True):
        rule = parse_rule(f"{name}:{port}", nameless=nameless)
        gate = Gate(step="s", policy=Policy(rules=(rule,)), refused=())
        gate.resolve = lambda *_a, **_k: [ip]  # type: ignore[method-assign]
        decided = gate.decide_ip(ip, port)
        assert decided.passes == nameless, decided
        assert not gate.decide_ip(ip, port + 1).passes


# -- the YAML loader ---------------------------------------------------------------------
def _load(tmp: Path, data: bytes) -> Any:
    path = tmp / "doc.yaml"
    path.write_bytes(data)
    try:
        return load_yaml(path)
    except SpecError as exc:
        message = exc.diagnostics()
        assert "\n" not in message and len(message) < 1000
        assert exc.exit_code == EXIT_INPUT
        return None


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_random_bytes_load_or_give_one_line(tmp_path: Path, data: bytes) -> None:
    _load(tmp_path, data)  # anything but SpecError fails the test


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{},&*!|>'\"#\n\t ?<%@`")), max_size=400))
def test_random_yaml_text_loads_or_gives_one_line(tmp_path: Path, text: str) -> None:
    _load(tmp_path, text.encode())


_spec = st.fixed_dictionaries({
    "name": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    "image": st.sampled_from(["sbx-step:bookworm", "python:3.12-slim"]),
    "run": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                   min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
}, optional={
    "env": st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)
                           .filter(lambda k: not k.startswith("SBX_")),
                           # NUL is refused (no environment can hold it): see below.
                           st.text(st.characters(blacklist_characters="\x00"), max_size=20),
                           max_size=4),
    "outputs": st.lists(st.from_regex(r"[a-z]{1,8}/", fullmatch=True), max_size=3,
                        unique=True),
    "egress": st.fixed_dictionaries({"mode": st.sampled_from(["enforce", "audit"])}),
})


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_spec)
def test_valid_specs_round_trip(tmp_path: Path, spec: dict[str, Any]) -> None:
    doc = _load(tmp_path, yaml.safe_dump(spec).encode())
    assert doc is not None and doc.data == spec
    step = validate_step(doc)
    assert step.name == spec["name"] and step.image == spec["image"]
    assert step.env == spec.get("env", {})


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_spec, st.text(max_size=10))
def test_a_nul_byte_in_env_is_refused_in_one_line(tmp_path: Path, spec: dict[str, Any],
                                                   around: str) -> None:
    spec = {**spec, "env": {"A": around + "\x00" + around}}
    doc = _load(tmp_path, yaml.safe_dump(spec).encode())
    assert doc is not None
    with pytest.raises(SpecError, match=r"env\.A: contains a NUL byte") as info:
        validate_step(doc)
    assert "\n" not in str(info.value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_spec, st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_mutated_spec_loads_or_gives_one_line(tmp_path: Path, spec: dict[str, Any],
                                              where: int, junk: bytes) -> None:
    raw = yaml.safe_dump(spec).encode()
    at = where % len(raw)
    doc = _load(tmp_path, raw[:at] + junk + raw[at + len(junk):])
    if doc is None:
        return  # refused by the loader in one line: fine
    try:
        validate_step(doc)
    except SpecError as exc:
        assert "\n" not in exc.diagnostics() and exc.exit_code == EXIT_INPUT


def property_test_count() -> int:
    """Property-based tests in this module (the README quotes it)."""
    return sum(1 for k in globals() if k.startswith("test_"))
