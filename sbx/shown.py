"""Untrusted text made safe to show on a console or in a CI job log.

Names, reasons, paths and log lines that come out of a sandbox are data. Shown
through rich, a `[/x]` in them raises MarkupError and `[bold]` restyles the line;
written to a terminal or a GitLab job log, an ESC starts an ANSI sequence that can
rewrite what is on screen, and bidi or zero-width characters hide what is there.
`shown` makes every such character visible (`\\x1b`, `\\u202e`) and escapes markup.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from rich.markup import escape
from rich.text import Text

_MAX = 512


def _visible(ch: str) -> str:
    if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else (
            f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return ch


def plain(value: Any, limit: int = _MAX) -> str:
    """`value` as one line of text with every control or invisible character spelled out.

    A trailing backslash is spelled out too (`\\x5c`): rich would read it as escaping
    whatever markup follows the value.
    """
    raw = str(value)
    stripped = raw.rstrip("\\")
    text = "".join(_visible(ch) for ch in stripped) + "\\x5c" * (len(raw) - len(stripped))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any, limit: int = _MAX) -> str:
    """`plain(value)`, escaped for rich markup: safe inside any markup string."""
    return escape(plain(value, limit))


def markup(line: str) -> Text:
    """A markup string as rich Text, with emoji codes off: `:v:` in a name stays text."""
    return Text.from_markup(line, emoji=False)
