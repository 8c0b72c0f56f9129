"""Allow entries of a step's `egress.allow`: today's strings, or mappings with options.

A string entry (``host[:port]``, ``*.suffix[:port]``, ``ip[/prefix][:port]``) is
exactly what it always was. A mapping names the same destination in fields and
adds options::

    - host: git.example.com
      port: 22
      nameless: true      # ssh names no host in its bytes: allow it by address

    - host: pypi.org
      port: 443
      methods: [GET, HEAD]
      paths: ["/simple/**", "/pypi/*/json"]

`nameless` lets a connection that carries no name (no TLS SNI, no HTTP Host) reach
an address the host resolves to at that moment; without it a name rule needs the
name in the connection's own first bytes, so a shared address (a CDN) never lets
a step reach another tenant. Its flows are recorded with ``nameless: true``.

A mapping with methods, paths or ``inspect: true`` makes the rule action-level: every
HTTP request to the host is checked against it, and TLS to it is inspected. The two
do not mix: a nameless connection carries nothing to check requests by.
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
    StrictBool,
    StrictStr,
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
    """One allow entry written as a mapping (the string form's fields, plus options);
    `rule` gives the policy rule it stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: StrictStr = Field(min_length=1,
                            description="host name, *.suffix or IP address, as in string entries")
    port: int | None = Field(default=None, strict=True, ge=1, le=65535)
    nameless: bool = Field(default=False, strict=True)
    methods: tuple[StrictStr, ...] | None = Field(
        default=None, description=f"HTTP methods allowed (default any): {', '.join(pol.METHODS)}")
    paths: tuple[StrictStr, ...] | None = Field(
        default=None, description="path patterns (default any): '*' within one segment, "
        "'**' any number of segments, e.g. /simple/**")
    inspect: StrictBool | None = Field(
        default=None, description="inspect TLS to this host even without methods or paths "
        "(catches domain fronting)")

    @property
    def text(self) -> str:
        """The same destination as a string entry (the rule's text in records)."""
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def entry(self) -> str:
        """`text`, as a method (kept for callers of the string-entry form)."""
        return self.text

    @property
    def action_level(self) -> bool:
        """True when the entry restricts requests (methods, paths) or asks for inspection."""
        return self.methods is not None or self.paths is not None or self.inspect is True

    @model_validator(mode="after")
    def _valid(self) -> AllowMapping:
        if self.host.startswith("[") or (":" in self.host and "." in self.host
                                         and self.host.count(":") == 1):
            raise ValueError(f"host {self.host!r} carries a port or brackets; write the port "
                             "under 'port' and the bare host under 'host'")
        check_allow_entry(self.text)
        if self.nameless and (self.action_level or self.inspect is not None):
            raise ValueError("nameless cannot go with methods, paths or inspect (a connection "
                             "that names nothing has no requests to check); use two entries")
        if self.inspect is False and (self.methods is not None or self.paths is not None):
            raise ValueError("methods and paths are checked by reading the requests, which "
                             "over TLS means inspecting; remove 'inspect: false'")
        self.rule("")
        return self

    def rule(self, source: str) -> pol.Rule:
        """The policy rule of this entry; `source` is its "file:line"."""
        try:
            rule = pol.parse_rule(self.text, source, nameless=self.nameless)
            if not self.action_level:
                return rule
            return pol.with_actions(rule, self.methods, self.paths)
        except pol.PolicyError as exc:
            raise ValueError(str(exc)) from None


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
        return entry.rule(source)
    return pol.parse_rule(entry, source)
