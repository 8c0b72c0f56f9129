"""Safe YAML loading for spec files, with line numbers for every field.

Everything a hostile or careless file can do to a YAML loader is refused with a
one-line `SpecError` (exit 2) before any Python object is built: oversize files,
non-UTF-8 bytes, alias bombs, deep nesting, several documents, duplicate keys
(which pyyaml would silently resolve to the last one) and non-safe tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sbx.errors import SpecError

MAX_BYTES: Final = 1024 * 1024
MAX_ALIASES: Final = 64
MAX_DEPTH: Final = 32
# Node count after alias expansion; a real spec file has a few hundred.
MAX_EXPANDED_NODES: Final = 100_000
# Values written out in the file, counted while parsing: refusing at this count stops
# the (pure-Python) parser early, so a file under MAX_BYTES costs well under a second.
MAX_NODES: Final = 20_000

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

FieldPath = tuple[str | int, ...]


class _Refused(Exception):
    """Internal: a limit was hit while composing; carries the reason and the line."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and bounds nesting while it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0
        self.depth = 0
        self.node_count = 0

    def next_line(self) -> int:
        """1-based line of the next parser event."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        return int(event.start_mark.line) + 1

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self.node_count += 1
        if self.node_count > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES} values; a spec file has a few hundred: "
                "split it or generate less", self.next_line())
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES} alias uses (*name); expand them or simplify the file",
                    self.next_line(),
                )
        # Only collections add a level: a scalar at the bottom is not nesting.
        nested = bool(self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if nested:
            self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(
                    f"nesting is deeper than {MAX_DEPTH} levels; flatten the structure",
                    self.next_line(),
                )
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            if nested:
                self.depth -= 1


@dataclass(frozen=True)
class LoadedDoc:
    """A parsed YAML mapping, its raw bytes and the node tree for line numbers."""

    path: Path
    data: Any
    raw: bytes
    node: Node | None = field(default=None, repr=False, compare=False)

    def line_of(self, field_path: FieldPath) -> int | None:
        """1-based line of `field_path` (e.g. ``("egress", "allow", 0)``).

        For a mapping member the line of its key; for a sequence item the line of the
        item. When the path does not exist (a missing field), the line of the deepest
        part that does; None without a node tree.
        """
        if self.node is None:
            return None
        node = self.node
        line = _line(node)
        for part in field_path:
            found = _child(node, part)
            if found is None:
                break
            line, node = found
        return line


def _mapping_pairs(node: MappingNode) -> Iterator[tuple[Node, Node]]:
    """Explicit pairs first, then pairs merged in with '<<' (explicit keys win in YAML)."""
    merged: list[MappingNode] = []
    for key, value in node.value:
        if key.tag == _MERGE_TAG:
            if isinstance(value, MappingNode):
                merged.append(value)
            elif isinstance(value, SequenceNode):
                merged.extend(v for v in value.value if isinstance(v, MappingNode))
        else:
            yield key, value
    for sub in merged:
        yield from _mapping_pairs(sub)


def _child(node: Node, part: str | int) -> tuple[int, Node] | None:
    if isinstance(node, MappingNode):
        for key, value in _mapping_pairs(node):
            if isinstance(key, ScalarNode) and key.value == str(part):
                return _line(key), value
        return None
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: Node = node.value[part]
        return _line(item), item
    return None


def _check_tree(root: Node, loader: _GuardedLoader) -> None:
    """Refuse cycles, alias expansion beyond limits and duplicate keys.

    Aliases are shared nodes in the composed tree, so a bomb costs nothing until it
    is constructed; sizes and depths are computed here with memoisation instead.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
    active: set[int] = set()

    def visit(node: Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused(
                "an alias refers to its own anchor (a cycle); remove the alias", _line(node)
            )
        active.add(key)
        children: list[Node] = []
        if isinstance(node, MappingNode):
            _check_duplicates(node, loader)
            for k, v in node.value:
                children.extend((k, v))
        elif isinstance(node, SequenceNode):
            children.extend(node.value)
        total, depth = 1, 0
        for child in children:
            n, d = visit(child)
            total += n
            depth = max(depth, d)
            if total > MAX_EXPANDED_NODES:
                raise _Refused(
                    f"aliases expand to more than {MAX_EXPANDED_NODES} values "
                    "(a billion-laughs pattern); write the values out or remove the aliases",
                    _line(node),
                )
        if isinstance(node, MappingNode | SequenceNode):
            depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(
                f"nesting is deeper than {MAX_DEPTH} levels once aliases are expanded; "
                "flatten the structure",
                _line(node),
            )
        active.discard(key)
        sizes[key] = (total, depth)
        return total, depth

    visit(root)


def _check_duplicates(node: MappingNode, loader: _GuardedLoader) -> None:
    # Compare keys by the value they construct to, so 'yes' and 'true' (both True)
    # or '1' and '0x1' collide just as they would in the resulting dict.
    seen: dict[Any, int] = {}
    for key, _value in node.value:
        if not isinstance(key, ScalarNode):
            raise _Refused("a mapping key is a list or mapping; use plain string keys", _line(key))
        if key.tag == _MERGE_TAG:
            continue
        ident = (type(loader.construct_object(key)).__name__, loader.construct_object(key))
        if ident in seen:
            raise _Refused(
                f"duplicate key {key.value!r} (first at line {seen[ident]}); "
                "keep one of them (YAML would silently use the last)",
                _line(key),
            )
        seen[ident] = _line(key)


def _read(path: Path) -> bytes:
    name = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(name, "", "file not found; check the path") from None
    except IsADirectoryError:
        raise SpecError(name, "", "is a directory; pass a YAML file") from None
    except PermissionError:
        raise SpecError(name, "", "permission denied; make the file readable") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SpecError(name, "", f"cannot read the file ({reason}); check the path") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(
            name, "", f"file is larger than {MAX_BYTES // 1024} KiB; a spec file must be smaller"
        )
    return raw


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            str(path),
            "",
            f"not valid UTF-8 at byte offset {exc.start}; save the file as UTF-8",
            line,
        ) from None
    # A UTF-8 byte-order mark is harmless; drop it so pyyaml sees plain text.
    return text.removeprefix("\ufeff")


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> SpecError:
    """One line from a pyyaml error: where, what, and the fix; never a traceback."""
    name = str(path)
    if isinstance(exc, yaml.reader.ReaderError):
        return SpecError(
            name,
            "",
            f"control character #x{exc.character:04x} is not allowed in YAML; remove it",
            text.count("\n", 0, exc.position) + 1,
        )
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    line: int | None = int(mark.line) + 1 if mark is not None else None
    if isinstance(exc, yaml.constructor.ConstructorError):
        # Only the safe YAML types are built; a tag such as !!python/object lands here.
        return SpecError(name, "", f"unsupported YAML value: {problem}; remove the tag", line)
    if mark is not None:
        column = int(mark.column) + 1
        return SpecError(
            name,
            "",
            f"YAML syntax error at line {line}, column {column}: {problem}; fix the YAML",
            line,
        )
    return SpecError(name, "", f"YAML error: {problem}; fix the YAML")


def load_yaml(path: Path) -> LoadedDoc:
    """Load one YAML mapping from `path` safely; raise `SpecError` (one line, with the fix)."""
    path = Path(path)
    raw = _read(path)
    text = _decode(path, raw)
    name = str(path)
    loader: _GuardedLoader | None = None
    try:
        loader = _GuardedLoader(text)
        loader.get_event()  # type: ignore[no-untyped-call]  # StreamStartEvent
        if loader.check_event(yaml.StreamEndEvent):
            raise SpecError(name, "", "file is empty; write a YAML mapping (key: value)")
        root = loader.compose_document()
        if not loader.check_event(yaml.StreamEndEvent):
            raise SpecError(
                name,
                "",
                "contains more than one YAML document; keep one (remove the '---' separators)",
                loader.next_line(),
            )
        if not isinstance(root, MappingNode):
            raise SpecError(
                name,
                "",
                "the document is not a mapping; write fields as 'key: value' at the top level",
                _line(root) if root is not None else None,
            )
        _check_tree(root, loader)
        data = loader.construct_document(root)
    except _Refused as exc:
        raise SpecError(name, "", exc.reason, exc.line) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    except RecursionError:
        # Defence in depth; the depth guard should make this unreachable.
        raise SpecError(
            name, "", f"nesting is deeper than {MAX_DEPTH} levels; flatten the structure"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return LoadedDoc(path=path, data=data, raw=raw, node=root)
