"""The mapping form of an allow entry: a host with action-level rules (methods, paths).

    - host: pypi.org
      port: 443
      methods: [GET, HEAD]
      paths: ["/simple/**", "/pypi/*/json"]

A mapping with methods, paths or ``inspect: true`` makes the rule action-level: every
HTTP request to the host is checked against it, and TLS to it is inspected.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from sbx.sandbox import policy as pol


class AllowMapping(BaseModel):
    """One allow entry in mapping form; `rule` gives the policy rule it stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: StrictStr = Field(description="host name, *.suffix or IP address, as in string entries")
    port: int | None = Field(default=None, strict=True, ge=1, le=65535)
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
        """The entry's host and port as a string entry would write them."""
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def action_level(self) -> bool:
        return self.methods is not None or self.paths is not None or self.inspect is True

    @model_validator(mode="after")
    def _check(self) -> AllowMapping:
        from sbx.pipelines.spec.step import check_allow_entry  # the string form's checks

        check_allow_entry(self.text)
        if self.inspect is False and (self.methods is not None or self.paths is not None):
            raise ValueError("methods and paths are checked by reading the requests, which "
                             "over TLS means inspecting; remove 'inspect: false'")
        self.rule("")
        return self

    def rule(self, source: str) -> pol.Rule:
        """The policy rule of this entry; `source` is its "file:line"."""
        rule = pol.parse_rule(self.text, source)
        if not self.action_level:
            return rule
        try:
            return pol.with_actions(rule, self.methods, self.paths)
        except pol.PolicyError as exc:
            raise ValueError(str(exc)) from None
