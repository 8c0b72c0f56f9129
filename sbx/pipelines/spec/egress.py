"""Allow entries of a step's `egress.allow`: today's strings, or mappings with options.

A string entry (``host[:port]``, ``*.suffix[:port]``, ``ip[/prefix][:port]``) is
exactly what it always was. A mapping names the same destination in fields and
adds options::

    - host: git.example.com
      port: 22
      nameless: true      # ssh names no host in its bytes: allow it by address

`nameless` lets a connection that carries no name (no TLS SNI, no HTTP Host) reach
an address the host resolves to at that moment; without it a name rule needs the
name in the connection's own first bytes, so a shared address (a CDN) never lets
a step reach another tenant. Its flows are recorded with ``nameless: true``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from publicsuffixlist import PublicSuffixList
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from sbx.sandbox import policy as pol


@functools.cache
def _psl() -> PublicSuffixList:
    # The bundled list loads in tens of milliseconds; do it once, and only when needed.
    return PublicSuffixList()


def check_allow_entry(value: str) -> str:
    """Validate one allow entry: `policy.parse_rule` plus the host-side public-suffix check."""
    try:
        rule = pol.parse_rule(value)
    except pol.PolicyError as exc:
        raise ValueError(str(exc)) from None
    if rule.suffix is not None and _psl().is_public(rule.suffix):
        raise ValueError(
            f"allow entry {value!r} covers every site under the public suffix {rule.suffix}; "
            f"name one site, e.g. *.example.{rule.suffix}"
        )
    return value


class AllowMapping(BaseModel):
    """One allow entry written as a mapping (the string form's fields, plus options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(strict=True, min_length=1)
    port: int | None = Field(default=None, strict=True, ge=1, le=65535)
    nameless: bool = Field(default=False, strict=True)

    def entry(self) -> str:
        """The same destination as a string entry (the rule's text in records)."""
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @model_validator(mode="after")
    def _valid(self) -> AllowMapping:
        if self.host.startswith("[") or (":" in self.host and "." in self.host
                                         and self.host.count(":") == 1):
            raise ValueError(f"host {self.host!r} carries a port or brackets; write the port "
                             "under 'port' and the bare host under 'host'")
        check_allow_entry(self.entry())
        try:
            pol.parse_rule(self.entry(), nameless=self.nameless)
        except pol.PolicyError as exc:
            raise ValueError(str(exc)) from None
        return self


def _form(value: Any) -> str:
    return "<mapping>" if isinstance(value, dict | AllowMapping) else "<string>"


AllowString = Annotated[str, Field(strict=True), AfterValidator(check_allow_entry)]
# Tagged, so a bad entry gets the one error of its own form, not one per form
# ('<...>' tags are left out of the field path in errors).
AllowEntry = Annotated[Annotated[AllowString, Tag("<string>")] | Annotated[AllowMapping,
                                                                          Tag("<mapping>")],
                       Discriminator(_form)]


def allow_rule(entry: str | AllowMapping, source: str = "") -> pol.Rule:
    """The policy rule of one validated allow entry."""
    if isinstance(entry, AllowMapping):
        return pol.parse_rule(entry.entry(), source, nameless=entry.nameless)
    return pol.parse_rule(entry, source)
