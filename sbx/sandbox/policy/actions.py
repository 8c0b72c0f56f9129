"""Action-level rules: HTTP methods and segment-aware path patterns, and path normalization.

STANDARD LIBRARY ONLY: copied into the gateway image (see the package docstring).

A request path is judged only in its normalized form: query string dropped,
percent-encoded unreserved characters decoded, dot-segments resolved. A path that
servers could read two ways (an encoded '/' or '\\', a backslash, ';' parameters,
empty segments, '..' above the root, NUL or control characters, over-long) is
ambiguous: `normalize_path` refuses it and the request is denied, never matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import PolicyError

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_PATH: Final = 2048
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
# Characters a request path may hold unencoded (RFC 3986 pchar and '/'), ';' excepted:
# path parameters are read differently by different servers (Tomcat strips them).
_PATH_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,=:@/%")
_PATTERN_SEGMENT: Final = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,=:@*%]+$")


class AmbiguousPath(ValueError):
    """A request path that servers could interpret differently: denied, never matched."""


def normalize_path(target: str) -> str:
    """The normalized path of an origin-form request target; `AmbiguousPath` if ambiguous."""
    path = target.split("?", 1)[0]
    if len(path) > MAX_PATH:
        raise AmbiguousPath(f"path longer than {MAX_PATH} characters")
    if not path.startswith("/"):
        raise AmbiguousPath("path does not start with '/'")
    bad = next((c for c in path if c not in _PATH_CHARS), None)
    if bad is not None:
        raise AmbiguousPath(f"path holds {bad!r}")
    out: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        code = path[i + 1 : i + 3]
        if len(code) != 2 or not set(code) <= _HEX:
            raise AmbiguousPath("path has a '%' that is not followed by two hex digits")
        char = chr(int(code, 16))
        if char in _UNRESERVED:
            out.append(char)
        elif char in "/\\" or ord(char) < 0x20 or char == "\x7f" or char == ";":
            raise AmbiguousPath(f"path holds an encoded {char!r}")
        else:
            out.append("%" + code.upper())
        i += 3
    decoded = "".join(out)
    segments = decoded.split("/")[1:]
    if any(s == "" for s in segments[:-1]):
        raise AmbiguousPath("path has an empty segment ('//')")
    resolved: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if not resolved:
                raise AmbiguousPath("path climbs above the root with '..'")
            resolved.pop()
            continue
        resolved.append(seg)
    trailing = segments[-1] in ("", ".", "..") if segments else False
    result = "/" + "/".join(resolved)
    if trailing and resolved and not result.endswith("/"):
        result += "/"
    return result


def check_method(method: str) -> str:
    """The method in upper case; `PolicyError` for one sbx does not know."""
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise PolicyError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    return method.upper()


@dataclass(frozen=True)
class PathPattern:
    """A segment-aware path pattern: `*` in a segment matches within it, `**` any segments."""

    text: str

    def __post_init__(self) -> None:
        t = self.text
        if not isinstance(t, str) or not t.startswith("/"):
            raise PolicyError(f"path pattern {t!r} is not absolute; write it from '/', "
                              "e.g. /simple/**")
        if len(t) > MAX_PATH:
            raise PolicyError(f"path pattern {t[:40]!r}... is longer than {MAX_PATH} characters")
        segments = t.split("/")[1:]
        for i, seg in enumerate(segments):
            if seg == "":
                if i != len(segments) - 1:
                    raise PolicyError(f"path pattern {t!r} has an empty segment; remove '//'")
                continue
            if "**" in seg and seg != "**":
                raise PolicyError(f"path pattern {t!r} has '**' inside a segment; "
                                  "'**' must be a whole segment, e.g. /simple/**")
            if seg in (".", ".."):
                raise PolicyError(f"path pattern {t!r} has a '{seg}' segment; write the path "
                                  "without it")
            if seg != "**" and not _PATTERN_SEGMENT.fullmatch(seg):
                raise PolicyError(f"path pattern {t!r} holds a character paths are not matched "
                                  "on (query, ';', '\\', space); write the path only")

    def matches(self, path: str) -> bool:
        """True when the normalized `path` matches this pattern."""
        return _match(self.text.split("/")[1:], path.split("/")[1:])


def _segment_matches(pattern: str, segment: str) -> bool:
    if "*" not in pattern:
        return pattern == segment
    regex = ".*".join(re.escape(p) for p in pattern.split("*"))
    return segment != "" and re.fullmatch(regex, segment) is not None


def _match(pattern: list[str], segments: list[str]) -> bool:
    # Iterative two-pointer match with backtracking on the last '**' (like fnmatch's '*').
    p = s = 0
    star_p, star_s = -1, 0
    while s < len(segments):
        if p < len(pattern) and pattern[p] == "**":
            star_p, star_s = p, s
            p += 1
        elif p < len(pattern) and _segment_matches(pattern[p], segments[s]):
            p += 1
            s += 1
        elif star_p >= 0:
            star_s += 1
            s = star_s
            p = star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "**":
        p += 1
    return p == len(pattern)


@dataclass(frozen=True)
class Actions:
    """What a rule allows inside HTTP: methods and paths (None: any), and whether it inspects."""

    methods: tuple[str, ...] | None = None
    paths: tuple[PathPattern, ...] | None = None
    inspect: bool = True

    def allows(self, method: str, path: str) -> bool:
        """True when `method` on the normalized `path` is within this rule."""
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.paths is None or any(p.matches(path) for p in self.paths)

    def describe(self) -> str:
        """A short human form, e.g. ``GET,HEAD /simple/**``."""
        methods = ",".join(self.methods) if self.methods is not None else "any"
        paths = " ".join(p.text for p in self.paths) if self.paths is not None else "/**"
        return f"{methods} {paths}"


def make_actions(methods: object = None, paths: object = None) -> Actions:
    """Validated `Actions` from the raw lists of a mapping entry."""
    ms: tuple[str, ...] | None = None
    ps: tuple[PathPattern, ...] | None = None
    if methods is not None:
        if not isinstance(methods, list | tuple) or not methods:
            raise PolicyError("methods must be a non-empty list, e.g. [GET, HEAD]")
        ms = tuple(dict.fromkeys(check_method(m) for m in methods))
    if paths is not None:
        if not isinstance(paths, list | tuple) or not paths:
            raise PolicyError("paths must be a non-empty list, e.g. [\"/simple/**\"]")
        ps = tuple(PathPattern(p) for p in paths)
    return Actions(methods=ms, paths=ps)
