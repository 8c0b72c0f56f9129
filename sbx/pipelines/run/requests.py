"""Per step, the HTTP requests the gateway checked: counts per rule, the denied ones, the run CA.

Fed with every `http` event of the step's own traffic (`EventLog`); its summary goes to
run.json (`requests`) and the isolation Statement (`actions`). Bounded: counts for every
request, but at most `DENIED_LIMIT` denied requests itemized.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

DENIED_LIMIT: Final = 100
NO_RULE: Final = "(no rule)"


@dataclass
class RequestTally:
    """One step's checked requests."""

    by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, verdict)
    denied: list[dict[str, Any]] = field(default_factory=list)
    denied_count: int = 0
    inspected_hosts: set[str] = field(default_factory=set)
    ca_fingerprint: str | None = None

    def add(self, event: dict[str, Any]) -> None:
        """Count one `http` event."""
        verdict = str(event.get("verdict"))
        rule = str(event.get("rule") or NO_RULE)
        self.by_rule[(rule, verdict)] += 1
        host = event.get("host")
        if event.get("inspected") is True and isinstance(host, str) and len(
                self.inspected_hosts) < 1000:
            self.inspected_hosts.add(host)
        if verdict == "denied":
            self.denied_count += 1
            if len(self.denied) < DENIED_LIMIT:
                self.denied.append({k: event[k] for k in (
                    "method", "host", "path", "reason", "inspected", "status")
                    if event.get(k) is not None})

    def summary(self) -> dict[str, Any] | None:
        """The run.json / Statement form; None when the step made no checked request and
        its gateway inspected nothing (then the Statement stays as it always was)."""
        if not self.by_rule and self.ca_fingerprint is None:
            return None
        rules: dict[str, dict[str, int]] = {}
        for (rule, verdict), n in sorted(self.by_rule.items()):
            rules.setdefault(rule, {})[verdict] = n
        out: dict[str, Any] = {"requests": rules, "denied": list(self.denied),
                               "deniedCount": self.denied_count,
                               "inspectedHosts": sorted(self.inspected_hosts)}
        if self.ca_fingerprint is not None:
            out["caFingerprint"] = self.ca_fingerprint
        return out
