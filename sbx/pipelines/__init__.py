"""Composition: `spec` (what a user writes), `run` (running it and recording evidence),
`report` (console, alerts, CI reports, HTML), `policy_tools` (plan and learn), and the
`sbx` CLI (`cli`) with `verify` on top."""
