#!/usr/bin/env python3
"""Run sbx's benchmarks and print a table: `python bench/run.py [--quick] [--json PATH]`.

Full mode takes medians over repetitions with the sizes of issue 5 (1 GiB download,
200 HTTPS requests, a 100-step verify) and judges each figure against its target.
`--quick` (what `make bench` and CI run) does one tiny repetition of every benchmark,
judges nothing about speed, and exits non-zero only if a benchmark itself breaks.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# Run as a script from anywhere: the repository root holds `bench` and `tests.fakes`.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench import inspection, machine, scale  # noqa: E402
from bench.internet import Internet  # noqa: E402
from bench.measure import Bench, BenchError, Result, Sizes, compile_sbx  # noqa: E402
from sbx.attest.signing.local import keygen  # noqa: E402
from sbx.sandbox import images  # noqa: E402


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} {unit}" if unit in ("s", "ms") else f"{value:.1f} {unit}"


def _figure(r: Result) -> str:
    if r.compare == "ratio":
        return f"{r.figure:.2f}x"
    if r.compare == "added":
        return f"{r.figure:+.2f} {r.unit}"
    return _fmt(r.figure, r.unit)


def _target(r: Result) -> str:
    if r.compare == "ratio":
        op = "≥" if r.unit == "MB/s" else "≤"
        text = f"{op} {r.target:g}x"
        return text + (f" (aim {r.aim:g}x)" if r.aim else "")
    if r.compare == "added":
        return f"≤ +{r.target:g} {r.unit}"
    return f"< {r.target:g} {r.unit}"


def table(results: list[Result], title: str) -> Table:
    """The results as a rich table."""
    t = Table(title=title)
    for col in ("benchmark", "sandboxed", "baseline", "ratio / added", "target", "result"):
        t.add_column(col, justify="left" if col == "benchmark" else "right")
    for r in results:
        verdict = "—" if r.ok is None else "[green]pass[/]" if r.ok else "[red]miss[/]"
        t.add_row(r.name, _fmt(r.sandboxed, r.unit), _fmt(r.baseline, r.unit), _figure(r),
                  _target(r), verdict)
    return t


def markdown(results: list[Result], info: dict[str, Any]) -> str:
    """The results as a Markdown table, for docs/performance.md."""
    lines = ["| benchmark | sandboxed | baseline | ratio / added | target | result |",
             "|---|---:|---:|---:|---|---|"]
    for r in results:
        verdict = "—" if r.ok is None else "pass" if r.ok else "**miss**"
        lines.append(f"| {r.name} | {_fmt(r.sandboxed, r.unit)} | {_fmt(r.baseline, r.unit)} "
                     f"| {_figure(r)} | {_target(r)} | {verdict} |")
    breakdown: dict[str, float] = next(
        (r.details["breakdown"] for r in results if "breakdown" in r.details), {})
    if breakdown:
        lines += ["", "| phase of `sbx run` (no-op step) | median |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} s |" for k, v in breakdown.items()]
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items())]
    return "\n".join(lines) + "\n"


def absolute_overhead(results: list[Result]) -> list[Result]:
    """The no-op `sbx run`'s own wall time, judged against issue 18's 1.2 s."""
    first = next(r for r in results if r.name.startswith("1. "))
    return [Result("1a. no-op `sbx run` wall time", "s", first.sandboxed, None, "absolute",
                   target=1.2, details={"samples": first.details["samples"]})]


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark; 0 unless one broke (or, in full mode with --strict, missed)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one repetition, no speed verdicts (CI)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write a Markdown table")
    p.add_argument("--only", action="append", default=[],
                   choices=["overhead", "squid", "parallel", "scale", "throughput", "latency",
                            "verify", "memory", "inspection"],
                   help="run only these benchmarks (repeatable)")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 130)
    sizes = Sizes.quick() if args.quick else Sizes()
    client = docker.from_env(timeout=300)
    images.ensure_runtime_image(client, log=lambda m: console.print(f"[dim]{m}[/]"))
    step_image = images.ensure_step_image(client, log=lambda m: console.print(f"[dim]{m}[/]"))
    info = machine.describe(client)
    console.print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    # The Squid baseline needs its own image (about 100 s of mmdebstrap the first time):
    # full mode only, or asked for by name.
    wanted = set(args.only) or {"overhead", "parallel", "scale", "throughput", "latency",
                                "verify", "memory", "inspection"} | (set() if args.quick
                                                                      else {"squid"})
    results: list[Result] = []
    broken: list[str] = []
    began = time.monotonic()
    compile_sbx()
    with tempfile.TemporaryDirectory(prefix="sbx-bench-") as tmp:
        work = Path(tmp)
        key = keygen(work / "key").private
        bench = Bench(client, work, key, sizes, lambda m: console.print(f"[dim]· {m}[/]"),
                      squid_download="squid" in wanted)

        def attempt(name: str, fn: Any) -> None:
            if name not in wanted:
                return
            try:
                got = fn()
                results.extend(got if isinstance(got, list) else [got])
            except (BenchError, OSError, docker.errors.DockerException, KeyError,
                    ValueError) as exc:
                broken.append(f"{name}: {exc}")
                console.print(f"[red]{name} broke:[/] {exc}")
                if console.is_terminal or args.quick:
                    traceback.print_exc()

        attempt("overhead", bench.step_overhead)
        attempt("overhead", lambda: absolute_overhead(results))
        attempt("squid", lambda: scale.squid_overhead(bench))
        attempt("parallel", bench.parallelism)
        attempt("scale", lambda: scale.scale(bench))
        attempt("verify", bench.verification)
        attempt("memory", bench.memory_idle)
        if wanted & {"throughput", "latency", "inspection"}:
            with Internet(client, "bench-" + secrets.token_hex(4), step_image) as net:
                bench.internet = net
                attempt("throughput", bench.throughput)
                attempt("latency", bench.latency)
                attempt("inspection", lambda: [inspection.inspected_download(bench),
                                               inspection.inspected_requests(bench)])
    if not args.quick:
        for r in results:
            r.judge()
    mode = "quick (nothing about speed is judged)" if args.quick else "full"
    console.print(table(results, f"sbx benchmarks, {mode}, "
                                 f"{time.monotonic() - began:.0f} s"))
    bd = next((r.details["breakdown"] for r in results if "breakdown" in r.details), None)
    if bd:
        phases = Table(title="where a no-op `sbx run` spends its time (medians)")
        phases.add_column("phase")
        phases.add_column("seconds", justify="right")
        for name, value in bd.items():
            phases.add_row(name, f"{value:.3f}")
        console.print(phases)
    for line in broken:
        console.print(f"[red]broken:[/] {line}")
    if args.json:
        args.json.write_text(json.dumps({"mode": "quick" if args.quick else "full",
                                         "machine": info, "sizes": vars(sizes),
                                         "results": [r.as_dict() for r in results],
                                         "broken": broken}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(results, info))
    if broken:
        return 1
    if args.strict and any(r.ok is False for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
