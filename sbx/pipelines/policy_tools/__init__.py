"""Working on egress policies from a run's records: replay a changed policy (`sbx plan`)
and learn the smallest allowlist that covers a run (`sbx learn`)."""

from __future__ import annotations

from sbx.pipelines.policy_tools.replay import (
    Change,
    Flow,
    PlanResult,
    decide,
    learn,
    plan,
    recorded_flows,
    render_learn,
    render_plan,
    unlearnable,
)

__all__ = [
    "Change",
    "Flow",
    "PlanResult",
    "decide",
    "learn",
    "plan",
    "recorded_flows",
    "render_learn",
    "render_plan",
    "unlearnable",
]
