"""Dry runs of an egress policy against a run's records (`sbx plan`), and allowlist learning.

`sbx plan pipeline.yaml --against RUN_DIR` replays the egress decisions an earlier
run recorded through a changed policy and reports which of them would flip: flows the
new policy would deny, and flows it would newly allow. `sbx learn RUN_DIR` proposes, per
step, the smallest allowlist that covers what the run let through (typically an audit
run). Both read only the run's records (docs/records.md) and decide with the same
matcher the gateway uses (`sbx.sandbox.policy`), following the gateway's own order of
checks (`sbx.sandbox.runtime.gate.Gate`):

* DNS: a name is answered when some host/suffix rule allows it on any port
  (`Policy.allows_dns`); otherwise NXDOMAIN.
* TCP to a name (CONNECT host, SNI or Host): `Policy.match_name(name, port)`; a name
  that is an IP literal is judged as that IP, exactly as `Gate.decide_name` does.
* TCP to a bare IP (no SNI, Host or CONNECT name): internal addresses pass only when
  an IP rule names them, sbx's step pool never; then `Policy.match_ip`, or the same
  `nameless` rule that allowed it in the recorded run. A name a DNS answer once gave
  for the address never allows it (the gateway keeps no such map).
* UDP, ICMP, IPv6 and every other kind: always denied. There is no route for them;
  the agent drops and logs them whatever the policy says.

What a dry run cannot know is marked instead of guessed: a recorded denial the gateway
made although the run's own policy allowed the flow (the name resolved only to internal
addresses, the address was one the gateway refuses, the agent could not reach the
gateway) is `Flow.always_denied`, and stays denied under every policy.

Modules: `decide` (a flow and the gateway's decision), `recorded` (flows from a run's
records), `replay` (`sbx plan`) and `learn` (`sbx learn`).
"""

from __future__ import annotations

from sbx.pipelines.policy_tools.decide import Flow, decide
from sbx.pipelines.policy_tools.learn import learn, render_learn, unlearnable
from sbx.pipelines.policy_tools.recorded import recorded_flows
from sbx.pipelines.policy_tools.replay import Change, PlanResult, plan, render_plan

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
