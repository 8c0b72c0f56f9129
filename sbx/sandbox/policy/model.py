"""A step's egress policy: the mode and its rules, first match wins, and its digest.

STANDARD LIBRARY ONLY: copied into the gateway image (see the package docstring).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .errors import PolicyError
from .rules import Rule

MODES: Final = ("enforce", "audit")


@dataclass(frozen=True)
class Policy:
    """A step's egress policy: the mode and its allow rules, first match wins."""

    mode: str = "enforce"
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"policy mode {self.mode!r} is unknown; use 'enforce' or 'audit'")
        rules: Any = self.rules
        if not isinstance(rules, tuple):
            # Keep the dataclass hashable and immutable whatever the caller passed.
            object.__setattr__(self, "rules", tuple(rules))

    def match_name(self, name: str, port: int | None) -> Rule | None:
        """The first host/suffix rule allowing `name` on `port`, or None."""
        return next((r for r in self.rules if r.matches_name(name, port)), None)

    def match_ip(self, ip: str, port: int | None) -> Rule | None:
        """The first IP/CIDR rule allowing `ip` on `port`, or None."""
        return next((r for r in self.rules if r.matches_ip(ip, port)), None)

    def rules_for(self, host: str, port: int | None) -> tuple[Rule, ...]:
        """Every rule allowing `host` (a name or an address) on `port`, in order."""
        return tuple(r for r in self.rules if r.matches_name(host, port)
                     or r.matches_ip(host, port))

    def inspects(self, host: str, port: int | None) -> bool:
        """True when an action-level rule covers `host` on `port`: its TLS is inspected."""
        return any(r.actions is not None for r in self.rules_for(host, port))

    def request_rule(self, host: str, port: int | None, method: str,
                     path: str | None) -> Rule | None:
        """The first rule allowing `method` on the normalized `path` of `host`:`port`.

        A host-level rule (or one without paths) allows any path; `path` None (an
        ambiguous path) is allowed only by such a rule, never matched by a pattern.
        """
        for rule in self.rules_for(host, port):
            actions = rule.actions
            if actions is None or (actions.paths is None and actions.allows(method, "/")):
                return rule
            if path is not None and actions.allows(method, path):
                return rule
        return None

    def allows_dns(self, name: str) -> Rule | None:
        """The first host/suffix rule allowing `name` on any port, or None (then NXDOMAIN)."""
        return self.match_name(name, None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, the input of `digest`."""
        return {"mode": self.mode, "rules": [r.to_dict() for r in self.rules]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Rebuild and re-validate a policy from `to_dict` output."""
        unknown = sorted(set(data) - {"mode", "rules"})
        if unknown:
            raise PolicyError(
                f"policy has unknown field(s) {', '.join(unknown)}; upgrade sbx on this side"
            )
        rules = data.get("rules", [])
        if not isinstance(rules, list | tuple) or not all(isinstance(r, Mapping) for r in rules):
            raise PolicyError("policy 'rules' must be a list of objects; regenerate the policy")
        mode = data.get("mode", "enforce")
        if not isinstance(mode, str):
            raise PolicyError("policy 'mode' must be a string; use 'enforce' or 'audit'")
        return cls(mode=mode, rules=tuple(Rule.from_dict(r) for r in rules))

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of `to_dict`."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
