"""What a person sees while a run goes: each step's phase, every violation as it
happens, and at the end one row per step."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.table import Table

from sbx.pipelines.records import is_decision

_STATUS_STYLE = {"succeeded": "green", "skipped": "dim", "running": "cyan",
                 "interrupted": "yellow"}


class LiveView:
    """Prints phases and every violation at once; a table at the end."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        # Probe-phase denials are expected: only a step's own traffic is shown.
        self._armed: set[str] = set()
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        """Whether any step is running its own command."""
        return bool(self._armed)

    def arm(self, step: str) -> None:
        """From now on the step's denials are its own."""
        with self._lock:
            self._armed.add(step)

    def phase(self, step: str, text: str) -> None:
        """A step (or the run) enters a phase."""
        if not self.quiet:
            with self._lock:
                self.console.print(f"[bold cyan]{step}[/] {text}", highlight=False)

    def event(self, event: dict[str, Any]) -> None:
        """An event as it is recorded; violations are printed at once."""
        if self.quiet:
            return
        step = event.get("step", "?")
        line: str | None = None
        if event.get("kind") == "probe" and event.get("verdict") == "reached":
            line = (f"[bold red]PROBE GOT THROUGH[/] {step} {event.get('probe')} "
                    f"{event.get('dst')}: {event.get('reason')}")
        elif event.get("phase") == "crashed":
            line = f"[bold red]{step}: {event.get('reason')}[/]"
        elif step in self._armed and is_decision(event):
            verdict = event.get("verdict")
            where = event.get("name") or event.get("dst_ip") or "?"
            port = event.get("dst_port")
            target = f"{where}:{port}" if port else str(where)
            rule = f" [dim](rule {event['rule']})[/]" if event.get("rule") else ""
            if verdict == "denied":
                line = (f"  [red]denied[/]  {step} {event['kind']:5} {target} "
                        f"[dim]{event.get('reason', '')}[/]")
            elif verdict == "audit":
                line = (f"  [yellow]audit[/]   {step} {event['kind']:5} {target} "
                        "[dim]would be denied in enforce mode[/]")
            else:
                line = f"  [green]{verdict}[/] {step} {event['kind']:5} {target}{rule}"
        if line is not None:
            with self._lock:
                self.console.print(line, highlight=False)

    def summary(self, record: dict[str, Any]) -> None:
        """One row per step: status, exit code, probes, flows and outputs."""
        if self.quiet:
            return
        table = Table(title=f"sbx run {record['run_id']} — {record.get('status')}")
        for column in ("step", "status", "exit", "probes", "peers", "flows", "outputs"):
            table.add_column(column)
        for name in record.get("order", []):
            step = record["steps"][name]
            style = _STATUS_STYLE.get(step["status"], "red")
            status = f"[{style}]{step['status']}[/]"
            if step.get("reason"):
                status += f"\n[dim]{step['reason']}[/]"
            probes, peers = step.get("probes", []), step.get("peer_probes", [])
            flows = step.get("flows", {})
            table.add_row(
                name, status, "-" if step.get("exit_code") is None else str(step["exit_code"]),
                f"{sum(p['blocked'] for p in probes)}/{len(probes)} blocked",
                f"{sum(p['blocked'] for p in peers)}/{len(peers)} blocked" if peers else "-",
                " ".join(f"{k} {v}" for k, v in flows.items() if v) or "none",
                "\n".join(f"{o['path']} {o['sha256'][:12]}" for o in step.get("outputs", []))
                or "-")
        table.caption = f"records in {record.get('out_dir', '')}"
        self.console.print(table)
