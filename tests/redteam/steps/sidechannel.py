"""The attacker's side-channel checks: does anything of a concurrently running step
show up here? Each check reports "reached" (the channel exists) and a detail.

Usage: python3 sidechannel.py OUT_JSON
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "sbx-sidechannel"
results: dict[str, dict[str, Any]] = {}


def record(name: str, reached: bool, detail: str, t0: float) -> None:
    results[name] = {"reached": reached, "detail": detail[:300], "t0": t0, "t1": time.time()}


def check_file(name: str, path: str) -> None:
    t0 = time.time()
    record(name, Path(path).exists(), f"{path} exists: {Path(path).exists()}", t0)


def sysv(name: str, table: str) -> None:
    t0 = time.time()
    rows = Path(f"/proc/sysvipc/{table}").read_text().splitlines()[1:]
    record(name, bool(rows), f"{len(rows)} {table} objects visible", t0)


def connect_unix(name: str, address: str) -> None:
    t0 = time.time()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
    except OSError as exc:
        record(name, False, f"{type(exc).__name__}: {exc}", t0)
        return
    record(name, True, f"connected to {address!r}", t0)


def main() -> None:
    out = Path(sys.argv[1])
    # Files anywhere on this step's filesystem (its own /tmp, /dev/shm, workspace, volumes).
    t0 = time.time()
    found = subprocess.run(
        ["find", "/", "-name", MARKER + "*", "-not", "-path", "/proc/*", "-not", "-path",
         "/sys/*"], capture_output=True, text=True, timeout=30).stdout.split()
    record("side-channel/shared-files-anywhere", bool(found), f"found {found}", t0)
    check_file("side-channel/shared-tmp", "/tmp/" + MARKER)
    check_file("side-channel/shared-dev-shm", "/dev/shm/" + MARKER)
    check_file("side-channel/shared-workspace", os.getcwd() + "/" + MARKER)
    sysv("side-channel/sysv-shared-memory", "shm")
    sysv("side-channel/sysv-message-queue", "msg")
    sysv("side-channel/sysv-semaphore", "sem")
    connect_unix("side-channel/abstract-unix-socket", "\0" + MARKER)
    connect_unix("side-channel/unix-socket-path", "/tmp/" + MARKER + ".sock")
    t0 = time.time()
    listed = MARKER in Path("/proc/net/unix").read_text()
    record("side-channel/proc-net-unix-listing", listed, f"@{MARKER} listed: {listed}", t0)
    t0 = time.time()
    seen = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        seen.append(cmd)
    victim = [c for c in seen if "31.337" in c or "victim.py" in c]
    record("side-channel/pid-namespace", bool(victim), f"{len(seen)} processes; victim's: "
           f"{victim}", t0)
    t0 = time.time()
    listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(":1F40")]
    record("side-channel/network-namespace-listeners", bool(listening),
           f"port 8000 listeners visible: {listening}", t0)
    t0 = time.time()
    done = subprocess.run(["hostname", "sbx-hijacked"], capture_output=True, text=True)
    record("side-channel/uts-hostname", done.returncode == 0,
           f"hostname {socket.gethostname()}; set: exit {done.returncode} {done.stderr.strip()}",
           t0)
    results["side-channel/uts-hostname"]["hostname"] = socket.gethostname()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=1))


if __name__ == "__main__":
    main()
