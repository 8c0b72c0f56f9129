"""What a person sees while a step runs: phases, violations as they happen, a summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sbx.pipelines.records import is_decision


class LiveView:
    """Prints phases and every violation at once; a table at the end."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.armed = False  # probe-phase denials are expected; only show the step's own

    def phase(self, step: str, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold cyan]{step}[/] {text}")

    def event(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        if event.get("kind") == "probe" and event.get("verdict") == "reached":
            self.console.print(f"[bold red]PROBE GOT THROUGH[/] {event.get('probe')} "
                               f"{event.get('dst')}: {event.get('reason')}")
        elif event.get("phase") == "crashed":
            self.console.print(f"[bold red]{event.get('reason')}[/]")
        elif self.armed and is_decision(event):
            verdict = event.get("verdict")
            where = event.get("name") or event.get("dst_ip") or "?"
            port = event.get("dst_port")
            target = f"{where}:{port}" if port else str(where)
            rule = f" [dim](rule {event['rule']})[/]" if event.get("rule") else ""
            if verdict == "denied":
                self.console.print(f"  [red]denied[/]  {event['kind']:5} {target} "
                                   f"[dim]{event.get('reason', '')}[/]")
            elif verdict == "audit":
                self.console.print(f"  [yellow]audit[/]   {event['kind']:5} {target} "
                                   "[dim]would be denied in enforce mode[/]")
            else:
                self.console.print(f"  [green]{verdict}[/] {event['kind']:5} {target}{rule}")

    def summary(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        table = Table(title=f"sbx run {record['run_id']}", show_header=False)
        step = record["step"]
        table.add_row("step", step["name"])
        style = "green" if step["status"] == "succeeded" else "red"
        table.add_row("status", f"[{style}]{step['status']}[/]"
                      + (f" — {step['reason']}" if step.get("reason") else ""))
        table.add_row("exit code", str(step.get("exit_code")))
        probes = record.get("probes", [])
        table.add_row("probes", f"{sum(p['blocked'] for p in probes)}/{len(probes)} blocked")
        flows = record.get("flows", {})
        table.add_row("flows", ", ".join(f"{k} {v}" for k, v in flows.items()))
        for out in record.get("outputs", []):
            table.add_row("output", f"{out['path']}  sha256:{out['sha256'][:16]}…")
        table.add_row("records", record.get("out_dir", ""))
        self.console.print(table)
