#!/usr/bin/env python3
"""Where the machine's CPU goes while one command runs: per process name, from /proc.

`python bench/cpu_account.py sbx run pipeline.yaml -q`: reads every process's own CPU
time and the CPU of the children it reaped (so short-lived ones such as iptables or runc
are counted under the process that started them) before and after the command, plus the
machine's busy time and the docker cgroup's CPU (everything inside the containers).
Linux only; cgroup v1's cpuacct for the container figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")
DOCKER_CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")


def _processes() -> dict[int, tuple[str, list[int]]]:
    """pid -> (name, [utime, stime, cutime, cstime]) in clock ticks."""
    found: dict[int, tuple[str, list[int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (name, [int(x) for x in fields[11:15]])
    return found


def _busy() -> int:
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values[:3]) + values[5] + values[6]  # user nice system irq softirq


def _containers() -> float:
    try:
        return int(DOCKER_CPUACCT.read_text()) / 1e9
    except OSError:
        return float("nan")


def main(argv: list[str]) -> int:
    """Run `argv` and print the CPU each process name used meanwhile."""
    if not argv:
        print(__doc__)
        return 2
    before, busy, inside = _processes(), _busy(), _containers()
    began = time.monotonic()
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False).returncode
    wall = time.monotonic() - began
    after = _processes()
    totals: dict[str, list[int]] = {}
    for pid, (name, now) in after.items():
        old = before.get(pid)
        base = old[1] if old is not None and old[0] == name else [0, 0, 0, 0]
        own, reaped = now[0] + now[1] - base[0] - base[1], now[2] + now[3] - base[2] - base[3]
        if own or reaped:
            row = totals.setdefault(name, [0, 0])
            row[0] += own
            row[1] += reaped
    print(f"exit {code}; wall {wall:.2f} s; machine busy {(_busy() - busy) / HZ:.2f} CPU-s; "
          f"inside containers {_containers() - inside:.2f} CPU-s")
    for name, (own, reaped) in sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:15]:
        print(f"  {name:24s} own {own / HZ:6.2f} s   reaped children {reaped / HZ:6.2f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
