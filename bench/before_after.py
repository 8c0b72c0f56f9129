#!/usr/bin/env python3
"""Two sbx checkouts side by side in one run: `python bench/before_after.py --before DIR`.

Each repetition alternates, in this order: `docker run --rm IMAGE true`, the hand-built
Squid sandbox (bench/squid.py), a no-op `sbx run` of the `--before` checkout and one of
this checkout; then 8 and 24 independent no-op steps and a chain of 10 (against ten
`docker run`s) for each checkout. Prints one Markdown table of medians, for
docs/performance.md. Both checkouts run as processes with their own PYTHONPATH, from a
scratch directory, so neither imports the other.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import yaml  # noqa: E402

from bench import squid  # noqa: E402
from bench.measure import IMAGE, Bench, BenchError  # noqa: E402
from sbx.attest.signing.local import keygen  # noqa: E402


def _sbx(checkout: Path, doc: dict[str, Any], work: Path, key: Path) -> float:
    ws = Path(tempfile.mkdtemp(dir=work))
    (ws / "sbx.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sbx", "run", str(ws / "sbx.yaml"), "--out",
                           str(ws / "run"), "--key", str(key), "-q"], cwd=ws,
                          env={**os.environ, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, check=False, timeout=3600)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise BenchError(f"{checkout}: sbx run exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout)[-600:]}")
    return took


def _docker(n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True,
                       capture_output=True, timeout=120)
    return time.perf_counter() - began


def main() -> int:
    """Run the comparison and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--before", type=Path, required=True, help="the other sbx checkout")
    p.add_argument("--reps", type=int, default=5, help="repetitions of the no-op step")
    p.add_argument("--pipeline-reps", type=int, default=2)
    args = p.parse_args()
    client = docker.from_env(timeout=300)
    squid.ensure_image(client, print)
    checkouts = {"before": args.before.resolve(), "after": ROOT}
    for path in checkouts.values():  # bytecode, as an installed sbx has (see compile_sbx)
        compileall.compile_dir(str(path / "sbx"), quiet=1)
    t: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        t.setdefault(key, []).append(value)
        print(f"{key}: {value:.3f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="sbx-ba-") as tmp:
        work = Path(tmp)
        key = keygen(work / "key").private
        for _ in range(args.reps):
            add("docker run", _docker(1))
            add("squid", squid.squid_noop(client, IMAGE))
            add("squid script", squid.squid_script(client, IMAGE, work))
            for name, path in checkouts.items():
                add(f"noop {name}", _sbx(path, Bench.noop("noop"), work, key))
        for _ in range(args.pipeline_reps):
            add("10 docker runs", _docker(10))
            for name, path in checkouts.items():
                for label, doc in (("1 step", Bench.pipeline("one", 1, False)),
                                   ("8 steps", Bench.pipeline("many", 8, False)),
                                   ("24 steps", Bench.pipeline("wide", 24, False)),
                                   ("chain of 10", Bench.pipeline("chain", 10, True))):
                    add(f"{label} {name}", _sbx(path, doc, work, key))
    med = {k: statistics.median(v) for k, v in t.items()}
    rows = [("no-op step (wall)", "noop"), ("1-step pipeline", "1 step"),
            ("8 independent steps", "8 steps"), ("24 independent steps", "24 steps"),
            ("chain of 10", "chain of 10")]
    print("\n| benchmark | before | after | docker run | Squid sandbox |")
    print("|---|---:|---:|---:|---:|")
    for label, stem in rows:
        base = {"noop": med["docker run"], "chain of 10": med["10 docker runs"]}.get(stem)
        hand = med["squid"] if stem == "noop" else None
        print(f"| {label} | {med[stem + ' before']:.2f} s | {med[stem + ' after']:.2f} s | "
              + (f"{base:.2f} s" if base else "—") + " | "
              + (f"{hand:.2f} s" if hand else "—") + " |")
    one = {n: med[f"1 step {n}"] for n in checkouts}
    for n in checkouts:
        print(f"{n}: noop {med['noop ' + n] / med['docker run']:.1f}x docker run, "
              f"{med['noop ' + n] / med['squid']:.2f}x Squid "
              f"({med['noop ' + n] / med['squid script']:.2f}x as a docker CLI script); 8 steps "
              f"{med['8 steps ' + n] / one[n]:.2f}x one; 24 steps "
              f"{med['24 steps ' + n] / one[n]:.2f}x one; chain "
              f"{med['chain of 10 ' + n] / med['10 docker runs']:.2f}x ten docker runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
