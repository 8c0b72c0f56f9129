"""What a person sees while a run goes: each step's phase, every violation as it
happens, and at the end one row per step."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from sbx.pipelines.run.records import is_decision
from sbx.shown import markup, shown

# Decision lines printed per step; the table and run.json keep counting past them.
LINES_PER_STEP = 1000
_STATUS_STYLE = {"succeeded": "green", "skipped": "dim", "running": "cyan",
                 "interrupted": "yellow"}


class LiveView:
    """Prints phases and every violation at once; a table at the end.

    On a terminal, a live table of the DAG (each step's needs, state, time and flows)
    stays at the bottom while violations scroll above it.
    """

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        # Probe-phase denials are expected: only a step's own traffic is shown.
        self._armed: set[str] = set()
        self._lock = threading.RLock()
        self._steps: dict[str, dict[str, Any]] = {}
        self._live: Live | None = None
        self._lines: dict[str, int] = {}  # decision lines printed per step

    def start(self, needs: dict[str, tuple[str, ...]]) -> None:
        """Begin showing the DAG; steps in topological order with what they need."""
        self._steps = {name: {"needs": deps, "status": "pending", "since": None,
                              "started": None, "ended": None, "allowed": 0, "denied": 0}
                       for name, deps in needs.items()}
        if not self.quiet and self.console.is_terminal:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()

    def stop(self) -> None:
        """Stop the live table (the summary follows)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def status(self, step: str, status: str) -> None:
        """A step's state changed."""
        with self._lock:
            info = self._steps.get(step)
            if info is None:
                return
            now = time.monotonic()
            info["status"] = status
            if status == "running":
                info["started"] = now
            if info["started"] is not None and status not in ("running",):
                info["ended"] = info["ended"] or now
            self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self) -> Table:
        table = Table(title="sbx run", expand=False)
        for column in ("step", "needs", "state", "time", "allowed", "denied"):
            table.add_column(column)
        now = time.monotonic()
        for name, info in self._steps.items():
            began, ended = info["started"], info["ended"]
            elapsed = f"{(ended or now) - began:.1f} s" if began is not None else "-"
            style = _STATUS_STYLE.get(info["status"], "red" if info["status"] in (
                "failed", "blocked", "timeout", "error") else "white")
            table.add_row(*map(markup, (
                shown(name), shown(", ".join(info["needs"]) or "-"),
                f"[{style}]{shown(info['status'])}[/]", elapsed, str(info["allowed"]),
                f"[red]{info['denied']}[/]" if info["denied"] else "0")))
        return table

    def _print(self, line: str) -> None:
        with self._lock:
            target = self._live.console if self._live is not None else self.console
            target.print(markup(line), highlight=False)

    def arm(self, step: str) -> None:
        """From now on the step's denials are its own."""
        with self._lock:
            self._armed.add(step)

    def phase(self, step: str, text: str) -> None:
        """A step (or the run) enters a phase."""
        if not self.quiet and self._live is None:
            self._print(f"[bold cyan]{shown(step)}[/] {shown(text)}")

    def event(self, event: dict[str, Any]) -> None:
        """An event as it is recorded; violations are printed at once.

        Every value in an event may come from the sandbox: each one goes through
        `shown` (markup escaped, control characters spelled out) before it is printed.
        """
        if self.quiet:
            return
        step = event.get("step", "?")
        line: str | None = None
        if event.get("kind") == "probe" and event.get("verdict") == "reached":
            line = (f"[bold red]PROBE GOT THROUGH[/] {shown(step)} {shown(event.get('probe'))} "
                    f"{shown(event.get('dst'))}: {shown(event.get('reason'))}")
        elif event.get("phase") in ("crashed", "recorder-failed"):
            line = f"[bold red]{shown(step)}: {shown(event.get('reason'))}[/]"
        elif step in self._armed and is_decision(event):
            verdict = event.get("verdict")
            with self._lock:
                info = self._steps.get(step)
                if info is not None and verdict in ("allowed", "denied"):
                    info[str(verdict)] += 1
                    self._refresh()
                shown_lines = self._lines[step] = self._lines.get(step, 0) + 1
            if shown_lines > LINES_PER_STEP:
                if shown_lines == LINES_PER_STEP + 1:  # a flood must not flood the job log
                    self._print(f"  [dim]{shown(step)}: more decisions than the "
                                f"{LINES_PER_STEP} shown here; run.json counts them all[/]")
                return
            where = event.get("name") or event.get("dst_ip") or "?"
            port = event.get("dst_port")
            target = shown(f"{where}:{port}" if port else where)
            rule = f" [dim](rule {shown(event['rule'])})[/]" if event.get("rule") else ""
            kind = shown(f"{event['kind']:5}")
            if verdict == "denied":
                line = (f"  [red]denied[/]  {shown(step)} {kind} {target} "
                        f"[dim]{shown(event.get('reason', ''))}[/]")
            elif verdict == "audit":
                line = (f"  [yellow]audit[/]   {shown(step)} {kind} {target} "
                        "[dim]would be denied in enforce mode[/]")
            else:
                line = f"  [green]{shown(verdict)}[/] {shown(step)} {kind} {target}{rule}"
        if line is not None:
            self._print(line)

    def summary(self, record: dict[str, Any]) -> None:
        """One row per step: status, exit code, probes, flows and outputs."""
        self.stop()
        if self.quiet:
            return
        table = Table(title=markup(f"sbx run {shown(record['run_id'])} — "
                                   f"{shown(record.get('status'))}"))
        for column in ("step", "status", "exit", "probes", "peers", "flows", "recorded",
                       "outputs"):
            table.add_column(column)
        for name in record.get("order", []):
            step = record["steps"][name]
            style = _STATUS_STYLE.get(step["status"], "red")
            status = f"[{style}]{shown(step['status'])}[/]"
            if step.get("reason"):
                status += f"\n[dim]{shown(step['reason'])}[/]"
            probes, peers = step.get("probes", []), step.get("peer_probes", [])
            flows = step.get("flows", {})
            table.add_row(*map(markup, (
                shown(name), status,
                "-" if step.get("exit_code") is None else str(step["exit_code"]),
                f"{sum(p['blocked'] for p in probes)}/{len(probes)} blocked",
                f"{sum(p['blocked'] for p in peers)}/{len(peers)} blocked" if peers else "-",
                " ".join(f"{k} {v}" for k, v in flows.items() if v) or "none",
                _attempts(step.get("recording")),
                "\n".join(shown(f"{o['path']} {o['sha256'][:12]}")
                          for o in step.get("outputs", [])) or "-")))
        table.caption = markup(f"records in {shown(record.get('out_dir', ''))}")
        self.console.print(table)


def _attempts(recording: Any) -> str:
    """"N attempts, M itemized": what a flood tried, against what events.jsonl holds."""
    if not isinstance(recording, dict):
        return "-"
    text = f"{recording.get('attempts', 0)} attempts, {recording.get('itemized', 0)} itemized"
    return text if recording.get("attempts") == recording.get("itemized") else f"[yellow]{text}[/]"
