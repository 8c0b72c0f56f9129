"""Host names in allow entries: canonical spelling and the names a step never reaches.

STANDARD LIBRARY AND idna ONLY: copied into the gateway image (see the package docstring).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

import idna

from .errors import PolicyError

# Underscore is allowed because real DNS names (service records, some internal hosts)
# use it; everything else outside LDH is refused so no resolver parses a name differently.
_LABEL_RE: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# A label that inet_aton() would read as a number: decimal, octal (leading 0) or 0x-hex.
_NUMERIC_LABEL_RE: Final = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_IDNA_DOTS: Final = ("\u3002", "\uff0e", "\uff61")


def normalize_name(name: str) -> str:
    """Return the canonical spelling of a DNS name.

    Case-folds, strips trailing dots and IDNA-encodes non-ASCII labels to punycode.
    Raises `PolicyError` for an empty name, an empty label, a label longer than 63
    characters, a name longer than 253 characters, or a character outside
    letters, digits, '-' and '_'. Idempotent: ``normalize_name(normalize_name(x)) ==
    normalize_name(x)``.
    """
    if not isinstance(name, str):
        raise PolicyError(f"host name must be a string, not {type(name).__name__}; quote it")
    # IDNA treats these full-width and ideographic full stops as label separators.
    for dot in _IDNA_DOTS:
        name = name.replace(dot, ".")
    # ASCII labels are lower-cased; others get UTS 46 mapping below (casefold() would
    # turn 'ß' into 'ss' before it).
    folded = name.rstrip(".")
    if not folded:
        raise PolicyError(f"host name {name!r} is empty; write a name such as example.com")
    labels = folded.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise PolicyError(
                f"host name {name!r} has an empty label (two dots in a row or a leading dot); "
                "remove the extra dot"
            )
        if label.isascii():
            label = label.lower()
        else:
            try:
                # UTS 46 (non-transitional), as browsers, curl and Python's idna do: IDNA 2003
                # (encodings.idna) folds 'straße' to 'strasse', another domain than theirs.
                label = idna.encode(label, uts46=True, transitional=False).decode("ascii")
            except (idna.IDNAError, UnicodeError) as exc:
                raise PolicyError(
                    f"host name {name!r} has a label that cannot be IDNA-encoded ({exc}); "
                    "write the name in punycode (xn--...)"
                ) from None
            label = label.casefold()
            if "." in label:
                raise PolicyError(
                    f"host name {name!r} has a label that maps to several labels; "
                    "write the name in punycode (xn--...)"
                )
        if not _LABEL_RE.fullmatch(label):
            raise PolicyError(
                f"host name {name!r} has an invalid label {label!r}; labels are 1-63 letters, "
                "digits, '-' or '_' and do not start or end with '-'"
            )
        out.append(label)
    result = ".".join(out)
    if len(result) > 253:
        raise PolicyError(f"host name {name[:40]!r}... is longer than 253 characters; shorten it")
    return result


def _looks_numeric(name: str) -> bool:
    """True when a resolver could read `name` as an IP address (e.g. '2852039166', '127.1').

    Checking the last label is enough: no top-level domain is numeric, and every
    inet_aton() spelling ends in a numeric or 0x label.
    """
    return bool(_NUMERIC_LABEL_RE.fullmatch(name.rsplit(".", 1)[-1]))


_FORBIDDEN_NAMES: Final[Mapping[str, str]] = {
    "localhost": "loopback",
    "ip6-localhost": "loopback",
    "ip6-loopback": "loopback",
    "metadata": "the cloud metadata service",
    "metadata.google.internal": "the cloud metadata service",
    "instance-data": "the cloud metadata service",
    "instance-data.ec2.internal": "the cloud metadata service",
    "host.docker.internal": "the Docker host",
    "gateway.docker.internal": "the Docker host",
}
# Whole subtrees that resolve to loopback (RFC 6761).
_FORBIDDEN_SUFFIXES: Final[Mapping[str, str]] = {"localhost": "loopback"}


def _forbidden_name(name: str, wildcard: bool) -> str | None:
    """Why a host (or, with `wildcard`, every name below it) is never reachable, else None."""
    for bad, what in _FORBIDDEN_SUFFIXES.items():
        if name == bad or name.endswith("." + bad):
            return f"is {what} and sbx never lets a step reach it; remove the entry"
    if not wildcard:
        what_name = _FORBIDDEN_NAMES.get(name)
        if what_name is None:
            return None
        return f"is {what_name} and sbx never lets a step reach it; remove the entry"
    for bad, what in _FORBIDDEN_NAMES.items():
        if bad.endswith("." + name):
            return f"covers {bad}, which is {what}; remove the entry or name the hosts you need"
    return None

