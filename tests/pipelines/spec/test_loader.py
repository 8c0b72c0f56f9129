"""Safe YAML loading: limits, refusals and line numbers (no Docker, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbx.errors import EXIT_INPUT, SpecError
from sbx.pipelines.spec.loader import MAX_BYTES, LoadedDoc, load_yaml


def _write(tmp_path: Path, text: str, name: str = "doc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _refusal(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_yaml(path)
    err = info.value
    message = err.diagnostics()
    assert "\n" not in message
    assert str(path) in message
    assert "Traceback" not in message
    assert err.exit_code == EXIT_INPUT
    return err


def test_loads_mapping_with_raw_bytes(tmp_path: Path) -> None:
    text = "a: 1\nb:\n  - x\n  - {c: 2}\n"
    path = _write(tmp_path, text)
    doc = load_yaml(path)
    assert isinstance(doc, LoadedDoc)
    assert doc.data == {"a": 1, "b": ["x", {"c": 2}]}
    assert doc.raw == text.encode()
    assert doc.path == path


def test_line_of(tmp_path: Path) -> None:
    doc = load_yaml(
        _write(
            tmp_path,
            "# comment\nname: x\negress:\n  mode: audit\n  allow:\n    - a.com\n    - b.com\n"
            "flow: {k: [1, 2]}\n",
        )
    )
    assert doc.line_of(("name",)) == 2
    assert doc.line_of(("egress",)) == 3
    assert doc.line_of(("egress", "mode")) == 4
    assert doc.line_of(("egress", "allow", 0)) == 6
    assert doc.line_of(("egress", "allow", 1)) == 7
    assert doc.line_of(("flow", "k", 1)) == 8
    # A missing field points at the deepest part that exists.
    assert doc.line_of(("egress", "missing")) == 3
    assert doc.line_of(("nothing",)) == 2  # the root mapping starts at line 2
    assert doc.line_of(()) == 2


def test_line_of_merge_keys(tmp_path: Path) -> None:
    doc = load_yaml(_write(tmp_path, "base: &b\n  x: 1\nuse:\n  <<: *b\n  y: 2\n"))
    assert doc.data["use"] == {"x": 1, "y": 2}
    assert doc.line_of(("use", "y")) == 5
    assert doc.line_of(("use", "x")) == 2


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(path).data == {"a": 1}


def test_missing_file(tmp_path: Path) -> None:
    err = _refusal(tmp_path / "nope.yaml")
    assert "not found" in err.diagnostics()


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _refusal(tmp_path).diagnostics()


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: '" + b"x" * MAX_BYTES + b"'\n")
    assert "larger than 1024 KiB" in _refusal(path).diagnostics()


def test_exactly_one_mebibyte_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    body = b"a: '"
    path.write_bytes(body + b"x" * (MAX_BYTES - len(body) - 2) + b"'\n")
    assert path.stat().st_size == MAX_BYTES
    assert len(load_yaml(path).data["a"]) > 1000


def test_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    err = _refusal(path)
    assert "byte offset 11" in err.diagnostics()
    assert err.line == 2


def test_control_character(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"a: 1\nb: x\x00\n")
    err = _refusal(path)
    assert "control character" in err.diagnostics()
    assert err.line == 2


def test_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    err = _refusal(_write(tmp_path, "a: 1\nb: c: d\n"))
    assert "YAML syntax error at line 2, column 5" in err.diagnostics()
    assert err.line == 2


def test_empty_file(tmp_path: Path) -> None:
    assert "empty" in _refusal(_write(tmp_path, "# only a comment\n")).diagnostics()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "null\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert "not a mapping" in _refusal(_write(tmp_path, text)).diagnostics()


def test_multiple_documents(tmp_path: Path) -> None:
    err = _refusal(_write(tmp_path, "a: 1\n---\nb: 2\n"))
    assert "more than one YAML document" in err.diagnostics()
    assert err.line == 2


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: 2\na: 3\n", 3),
        ("x:\n  k: 1\n  k: 2\n", 3),
        ("a: 1\n'a': 2\n", 2),
        ("list:\n  - {p: 1, p: 2}\n", 2),
    ],
)
def test_duplicate_keys(tmp_path: Path, text: str, line: int) -> None:
    err = _refusal(_write(tmp_path, text))
    assert "duplicate key" in err.diagnostics()
    assert err.line == line


def test_same_key_in_sibling_mappings_is_fine(tmp_path: Path) -> None:
    assert load_yaml(_write(tmp_path, "a: {k: 1}\nb: {k: 2}\n")).data == {
        "a": {"k": 1},
        "b": {"k": 2},
    }


def test_explicit_key_over_merge_is_not_a_duplicate(tmp_path: Path) -> None:
    doc = load_yaml(_write(tmp_path, "base: &b {x: 1}\nuse:\n  <<: *b\n  x: 2\n"))
    assert doc.data["use"] == {"x": 2}


def test_complex_key_is_refused(tmp_path: Path) -> None:
    assert "plain string keys" in _refusal(_write(tmp_path, "? [a, b]\n: 1\n")).diagnostics()


def test_alias_count_limit(tmp_path: Path) -> None:
    ok = "a: &a v\nb: [" + ", ".join(["*a"] * 64) + "]\n"
    assert len(load_yaml(_write(tmp_path, ok, "ok.yaml")).data["b"]) == 64
    bad = "a: &a v\nb: [" + ", ".join(["*a"] * 65) + "]\n"
    assert "more than 64 alias" in _refusal(_write(tmp_path, bad, "bad.yaml")).diagnostics()


def test_billion_laughs_under_the_alias_count(tmp_path: Path) -> None:
    # 2 aliases per level x 30 levels = 60 alias uses but 2**30 values once expanded.
    lines = ["a0: &a0 [lol, lol]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 31)]
    err = _refusal(_write(tmp_path, "\n".join(lines) + "\n"))
    assert "billion-laughs" in err.diagnostics()


def test_recursive_alias(tmp_path: Path) -> None:
    assert "cycle" in _refusal(_write(tmp_path, "a: &a [*a]\n")).diagnostics()


@pytest.mark.parametrize(
    "text",
    [
        "x: " + "[" * 100 + "]" * 100 + "\n",
        "x: " + "{a: " * 100 + "1" + "}" * 100 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "leaf: 1\n",
    ],
    ids=["flow-seq", "flow-map", "block"],
)
def test_nesting_depth_100(tmp_path: Path, text: str) -> None:
    assert "deeper than 32" in _refusal(_write(tmp_path, text)).diagnostics()


def test_nesting_depth_32_is_accepted(tmp_path: Path) -> None:
    # The root mapping is level 1, so 31 more levels.
    text = "x: " + "[" * 31 + "1" + "]" * 31 + "\n"
    load_yaml(_write(tmp_path, text))
    deeper = "x: " + "[" * 32 + "1" + "]" * 32 + "\n"
    _refusal(_write(tmp_path, deeper, "deeper.yaml"))


def test_depth_through_aliases(tmp_path: Path) -> None:
    inner = "[" * 20 + "1" + "]" * 20
    text = f"a: &a {inner}\nb: " + "[" * 15 + "*a" + "]" * 15 + "\n"
    assert "once aliases are expanded" in _refusal(_write(tmp_path, text)).diagnostics()


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/name:os.system ''\n",
        "a: !custom 1\n",
    ],
)
def test_unsafe_tags_are_refused(tmp_path: Path, text: str) -> None:
    assert "unsupported YAML value" in _refusal(_write(tmp_path, text)).diagnostics()


@pytest.mark.parametrize(
    "text", ["yes: 1\ntrue: 2\n", "1: a\n0x1: b\n", "? !!str k\n: 1\nk: 2\n"], ids=str
)
def test_duplicate_keys_compare_by_value(tmp_path: Path, text: str) -> None:
    assert "duplicate key" in _refusal(_write(tmp_path, text)).diagnostics()


def test_keys_of_different_types_are_distinct(tmp_path: Path) -> None:
    assert load_yaml(_write(tmp_path, "1: a\n'1': b\n")).data == {1: "a", "1": "b"}
